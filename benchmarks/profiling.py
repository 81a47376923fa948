"""py-spy on one taskworker serve process while it drains a batch: which
functions the samples land in (self time, and total time including callees).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field

from .processes import Proc, workdir


def available() -> str | None:
    path = shutil.which("py-spy")
    if not path:
        return None
    out = subprocess.run([path, "--version"], check=False, capture_output=True,
                         text=True).stdout
    return out.strip() or "py-spy"


class Recorder:
    """Starts `py-spy record` on a process; finish() waits for it and parses."""

    def __init__(self, seconds: float, rate: int = 200) -> None:
        self.seconds = seconds
        self.rate = rate
        self.proc: Proc | None = None
        self.out = os.path.join(workdir(), "py-spy.txt")

    def start(self, procs: list[Proc]) -> None:
        self.proc = Proc("py-spy", ["py-spy", "record", "--pid", str(procs[0].pid),
                                    "--duration", str(int(self.seconds)), "--rate",
                                    str(self.rate), "--format", "raw", "--function",
                                    "--idle", "--nonblocking", "--output", self.out])

    def finish(self) -> Profile:
        profile = Profile()
        if self.proc is None:
            return profile
        code = self.proc.wait(self.seconds + 30)
        if code is None:
            self.proc.stop()
        try:
            with open(self.out) as f:
                lines = f.read().splitlines()
        except OSError:
            profile.error = f"py-spy wrote nothing: {self.proc.output().strip()[-300:]}"
            return profile
        for line in lines:
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = stack.split(";")
            n = int(count)
            profile.samples += n
            profile.self_time[frames[-1]] += n
            for frame in set(frames):
                profile.total_time[frame] += n
        return profile


@dataclass
class Profile:
    samples: int = 0
    self_time: Counter = field(default_factory=Counter)
    total_time: Counter = field(default_factory=Counter)
    error: str | None = None

    def top(self, which: str = "self", k: int = 15) -> list[tuple[str, float]]:
        counter = self.self_time if which == "self" else self.total_time
        return [(frame, 100.0 * n / self.samples) for frame, n in counter.most_common(k)]
