"""A throwaway Prometheus server scraping given targets every second, to run a
dashboard's PromQL on what it stored, as a user's dashboard would.

`prometheus(targets, folder)` starts one on a free port (its data and log in
`folder`) and yields a function that runs an instant query and returns its
result: {labels as a sorted tuple: value}. Stopped afterwards. Debian's
`prometheus` package provides it (and promtool). No pytest dependency.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pgserver import free_port
from waiting import wait_until

BINARY = shutil.which("prometheus")
SCRAPE_EVERY = 1.0  # seconds

Result = dict[tuple[tuple[str, str], ...], float]


def available() -> bool:
    return BINARY is not None


@contextlib.contextmanager
def prometheus(targets: Sequence[str], folder: Path) -> Iterator[Callable[[str], Result]]:
    """Run Prometheus scraping `targets` (host:port) every SCRAPE_EVERY seconds."""
    assert BINARY is not None
    port = free_port()
    config = folder / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {SCRAPE_EVERY:g}s\n  scrape_timeout: {SCRAPE_EVERY:g}s\n"
        "scrape_configs:\n  - job_name: taskworker\n    static_configs:\n"
        f"      - targets: {json.dumps(list(targets))}\n")
    base = f"http://127.0.0.1:{port}"
    with open(folder / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [BINARY, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    def ready() -> bool:
        exited = proc.poll() is not None  # (checked before the request)
        try:
            with urllib.request.urlopen(f"{base}/-/ready", timeout=2):
                return True
        except (urllib.error.URLError, ConnectionError):
            if exited:
                raise AssertionError("Prometheus exited:\n"
                                     + (folder / "prometheus.log").read_text()) from None
            return False

    try:
        wait_until(ready, 30, lambda: "Prometheus to be ready\n"
                   + (folder / "prometheus.log").read_text(), interval=0.1)

        def instant(promql: str) -> Result:
            url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
            with urllib.request.urlopen(url, timeout=10) as resp:
                answer = json.load(resp)
            assert answer["status"] == "success", answer
            return {tuple(sorted(r["metric"].items())): float(r["value"][1])
                    for r in answer["data"]["result"]}

        yield instant
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
