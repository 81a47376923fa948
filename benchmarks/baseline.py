"""The no-op throughput of this code against an older commit's, on the same
database and the same tasks, interleaved round by round: one `serve` at
WORKER_COUNT=100 FETCH_LIMIT=100 draining N tasks.

The older code is exported with `git archive REF` into the run's scratch space
and imported from there (PYTHONPATH first), so the repository's work trees are
left alone. Both run against the schema of this code (the older code ignores the
newer columns). Two workloads:
  named   rows naming 3 tasks (benchmarks.named_tasks), in 2 queues, at
          priorities 0-4; this code runs them by name (TASK_MODULES, no
          TASK_HANDLER), the older one with its default handler (the no-op)
  plain   rows without a name in the default queue, TASK_HANDLER no-op for both
"""
from __future__ import annotations

import os
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from . import taskworker_runs as tw
from .processes import BenchError, Proc, workdir

WORKERS, FETCH_LIMIT = 100, 100
INSERT_NAMED = """
WITH ins AS (
    INSERT INTO tasks (payload, task, queue, priority)
    SELECT 'task ' || n, 'bench_' || (ARRAY['a', 'b', 'c'])[1 + n %% 3],
           CASE WHEN n %% 3 = 2 THEN 'other' ELSE 'default' END, n %% 5
    FROM generate_series(1, %s) AS n
    RETURNING id
)
SELECT min(id), max(id), count(*) FROM ins
"""
WORKLOADS = {"named": INSERT_NAMED, "plain": tw.INSERT_PENDING}


_exported: dict[str, str] = {}  # ref -> its tree in this run's scratch space


def export(ref: str) -> str:
    """The tree of commit `ref`, unpacked in the scratch space (once per run); its path."""
    path = workdir(f"baseline-{ref}")
    if _exported.get(ref) == path:
        return path
    archive = subprocess.run(["git", "-C", str(tw.REPO), "archive", ref], capture_output=True,
                             check=False)
    if archive.returncode != 0:
        raise BenchError(f"git archive {ref}: {archive.stderr.decode().strip()[-300:]}")
    subprocess.run(["tar", "-x", "-C", path], input=archive.stdout, check=True)
    _exported[ref] = path
    return path


def pythonpath(tree: str) -> str:
    """PYTHONPATH that imports taskworker (and benchmarks.noop) from `tree` first."""
    return os.pathsep.join((tree, os.environ.get("PYTHONPATH", ""))).rstrip(os.pathsep)


def _git(*args: str) -> str:
    out = subprocess.run(["git", "-C", str(tw.REPO), *args], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise BenchError(f"git {' '.join(args)}: {out.stderr.strip()[-300:]}")
    return out.stdout.rstrip("\n")


def commit_of(ref: str) -> str:
    """`ref` as a short commit hash (a BenchError if it names no commit)."""
    return _git("rev-parse", "--short=7", "--verify", f"{ref}^{{commit}}")


def describe(ref: str) -> str:
    """The commit `ref` names: its date and subject (cut short)."""
    line = _git("log", "-1", "--format=%cs %s", f"{ref}^{{commit}}")
    return line if len(line) <= 100 else line[:97] + "..."


def work_tree() -> str:
    """The code measured as "this code": HEAD's commit, and whether the work tree
    differs from it (git status --porcelain: changed, staged or untracked files)."""
    head = f"{commit_of('HEAD')} ({describe('HEAD')})"
    changed = _git("status", "--porcelain").splitlines()
    if not changed:
        return f"git {head}; work tree clean"
    paths = ", ".join(line[3:] for line in changed[:5])
    more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
    return (f"git {head}; work tree DIRTY ({len(changed)} paths differ from HEAD: "
            f"{paths}{more}): the figures are not those of a commit")


@dataclass
class Baseline:
    ref: str
    n: int
    runs: dict[tuple[str, str], list[tw.Drain]] = field(default_factory=dict)  # workload, code


def starter(url: str, workload: str, code: str, old_tree: str) -> Callable[[], list[Proc]]:
    if code == "this":
        if workload == "named":
            return lambda: [tw.start_serve(url, WORKERS, FETCH_LIMIT, handler=None,
                                           task_modules="benchmarks.named_tasks")]
        return lambda: [tw.start_serve(url, WORKERS, FETCH_LIMIT)]
    path = pythonpath(old_tree)
    return lambda: [tw.start_serve(url, WORKERS, FETCH_LIMIT, pythonpath=path)]


def measure(url: str, ref: str, n: int, rounds: int, say: Callable[[str], None],
            notes: list[str]) -> Baseline:
    old_tree = export(ref)
    result = Baseline(ref, n)
    jobs = [(w, c) for w in WORKLOADS for c in ("this", ref)]
    for r in range(rounds):
        for workload, code in jobs[r % len(jobs):] + jobs[:r % len(jobs)]:
            say(f"baseline: {n:,} {workload} tasks, {'this code' if code == 'this' else code} "
                f"(round {r + 1}/{rounds})")
            d = tw.throughput(url, n, WORKERS, FETCH_LIMIT, insert=WORKLOADS[workload],
                              start=starter(url, workload, code, old_tree), checkpoint=True)
            result.runs.setdefault((workload, code), []).append(d)
            notes.extend(f"baseline {workload} {code}: {note}" for note in d.notes)
    return result


def report(b: Baseline) -> list[str]:
    lines = [f"No-op throughput of this code vs git {b.ref} (benchmarks/baseline.py): one serve, "
             f"WORKER_COUNT={WORKERS} FETCH_LIMIT={FETCH_LIMIT}, {b.n:,} tasks per run, "
             "interleaved rounds, ratio of medians", "",
             f"| workload | this code | git {b.ref} | ratio | this code, each run | "
             f"git {b.ref}, each run |", "| --- | ---: | ---: | ---: | --- | --- |"]
    for workload in WORKLOADS:
        this, old = b.runs.get((workload, "this"), []), b.runs.get((workload, b.ref), [])
        a, c = (statistics.median(rates) if (rates := [d.rate for d in runs if d.rate]) else None
                for runs in (this, old))
        ratio = f"{a / c:.2f}" if a and c else "n/a"
        each = [", ".join(f"{d.rate:,.0f}" if d.rate else "n/a" for d in runs)
                for runs in (this, old)]
        lines.append(f"| {workload} | {a or 0:,.0f} | {c or 0:,.0f} | {ratio} | {each[0]} | "
                     f"{each[1]} |")
    return lines
