"""CPU per task, where the floor is (issue 28, part 20, item 2): the CPU time
of taskworker's serve processes and of the PostgreSQL server per task, against
the minimal queue's pgbench runs (the server's CPU and pgbench's), on this
machine. A rate times the CPU a task costs is at most the machine's cores.

    python -m benchmarks.cpucost [--database-url URL] [--tasks N] [--rounds N]
                                 [--against REF] [--only LABELS]

The server must run on this machine and serve nothing else meanwhile: its CPU
is the postmaster's, its live children's and its reaped children's (/proc),
read before and after each drain (taskworker: from the insert's commit to "none
left"; the minimal queue: pgbench's run, without the insert). pgbench's own CPU
is this process's reaped children's (getrusage). The rates are the minimal and
roundtrip phases' measures. Runs are interleaved round by round, medians.
With --against REF, git REF's serve (exported, on a database its own migrate
made, as the roundtrip phase's --against) runs the same taskworker settings in
the same rounds: where an older commit spent less, and on which side.
--only: the runs whose labels start with one of these, separated by ';'.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import baseline, minimal, rawsql
from . import taskworker_runs as tw
from .databases import Server, connect, execute
from .processes import Proc, remove_workdir

TICK = os.sysconf("SC_CLK_TCK")
TASKS = 50_000
ROUNDS = 3
# (label, processes, WORKER_COUNT, FETCH_LIMIT) for taskworker; (label, 0, batch, clients)
# for the minimal queue.
RUNS = [(minimal.tw_label(1), 1, 100, None), (minimal.tw_label(2), 2, 100, None),
        (minimal.tw_label(1, 20, 20), 1, 20, 20),
        (minimal.minimal_label(100, 2), 0, 100, 2), (minimal.minimal_label(100, 8), 0, 100, 8),
        (minimal.minimal_label(20, 2), 0, 20, 2)]


def _stat(pid: int | str) -> list[str]:
    """/proc/PID/stat's fields after the command name (field 3 on)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def process_cpu(pid: int) -> float:
    """Seconds of CPU of one process (user + system)."""
    try:
        f = _stat(pid)
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / TICK


def postmaster(url: str) -> int:
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW data_directory")
            directory = cur.fetchone()[0]
    finally:
        conn.close()
    return int(Path(directory, "postmaster.pid").read_text().split()[0])


def server_cpu(pid: int) -> float:
    """Seconds of CPU of the server: the postmaster, its reaped children, and
    its live children."""
    f = _stat(pid)
    total = sum(int(x) for x in f[11:15])
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                child = _stat(entry.name)
            except OSError:
                continue
            if int(child[1]) == pid:
                total += int(child[11]) + int(child[12])
    return total / TICK


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@dataclass
class Sample:
    rate: float
    client_us: float  # serve processes or pgbench, CPU µs per task
    server_us: float  # the server, CPU µs per task


@dataclass
class CpuCost:
    n: int
    rounds: int
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)  # the runs, in the report's order
    load: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _tw(url: str, pm: int, n: int, processes: int, workers: int,
        fetch_limit: int | None, pythonpath: str | None = None) -> Sample | None:
    marks: dict[str, float] = {}

    def mark(key: str) -> Callable[[list[Proc]], None]:
        def take(procs: list[Proc]) -> None:
            marks[f"{key} client"] = sum(process_cpu(p.pid) for p in procs)
            marks[f"{key} server"] = server_cpu(pm)
        return take

    def start() -> list[Proc]:
        return [tw.start_serve(url, workers, fetch_limit, pythonpath=pythonpath)
                for _ in range(processes)]

    d = tw.throughput(url, n, workers, fetch_limit,  # type: ignore[arg-type]
                      processes=processes, on_start=mark("start"), on_drained=mark("end"),
                      start=start)
    if not d.rate or "end client" not in marks:
        return None
    return Sample(d.rate, (marks["end client"] - marks["start client"]) * 1e6 / d.done,
                  (marks["end server"] - marks["start server"]) * 1e6 / d.done)


def _minimal(pgbench: str, url: str, pm: int, n: int, batch: int, clients: int,
             notes: list[str]) -> Sample | None:
    marks: dict[str, float] = {}

    def mark(key: str) -> Callable[[], None]:
        def take() -> None:
            marks[f"{key} client"] = children_cpu()
            marks[f"{key} server"] = server_cpu(pm)
        return take

    rate, done = minimal.minimal_run(pgbench, url, n, batch, clients, notes,
                                     before=mark("start"), after=mark("end"))
    if not rate or not done:
        return None
    return Sample(rate, (marks["end client"] - marks["start client"]) * 1e6 / done,
                  (marks["end server"] - marks["start server"]) * 1e6 / done)


@dataclass(frozen=True)
class Older:
    """An older commit's serve (--against): its label, database and import path."""
    ref: str
    url: str
    pythonpath: str


# (label, processes, WORKER_COUNT or batch, FETCH_LIMIT or clients, older code)
Run = tuple[str, int, int, int | None, Older | None]


def runs(older: Older | None, only: tuple[str, ...] = ()) -> list[Run]:
    """The runs to make: RUNS, and with `older` its serve at RUNS' taskworker settings."""
    found: list[Run] = [(label, p, a, b, None) for label, p, a, b in RUNS]
    if older is not None:
        found += [(f"git {older.ref}{label.removeprefix('taskworker')}", p, a, b, older)
                  for label, p, a, b in RUNS if p]
    return [r for r in found if not only or r[0].startswith(only)]


def measure(tw_url: str, minimal_url: str, pgbench: str, n: int, rounds: int,
            say: Callable[[str], None], older: Older | None = None,
            only: tuple[str, ...] = ()) -> CpuCost:
    result = CpuCost(n, rounds)
    pm = postmaster(tw_url)
    execute(minimal_url, minimal.SCHEMA)
    todo = runs(older, only)
    result.labels = [r[0] for r in todo]
    for r in range(rounds):
        result.load.append(os.getloadavg()[0])
        for label, processes, a, b, code in todo[r % len(todo):] + todo[:r % len(todo)]:
            say(f"cpu cost: {label}, {n:,} tasks (round {r + 1}/{rounds})")
            if processes:
                s = _tw(code.url if code else tw_url, pm, n, processes, a, b,
                        code.pythonpath if code else None)
            else:
                assert b is not None
                s = _minimal(pgbench, minimal_url, pm, n, a, b, result.notes)
            if s is not None:
                result.samples.setdefault(label, []).append(s)
    return result


def report(c: CpuCost) -> list[str]:
    loads = ", ".join(f"{v:.2f}" for v in c.load)
    lines = [f"CPU per task (benchmarks/cpucost.py): {c.n:,} no-op tasks per run, {c.rounds} "
             f"interleaved rounds, medians (1-min load at each round's start: {loads}); client: "
             "the serve processes, or pgbench; cores busy: the rate x the CPU per task", "",
             "| run | tasks/s (min–max) | client CPU µs/task | server CPU µs/task | "
             "total µs/task | cores busy |", "| --- | ---: | ---: | ---: | ---: | ---: |"]

    def fig(values: list[float], spec: str) -> str:
        return (f"{statistics.median(values):{spec}} ({min(values):{spec}}–"
                f"{max(values):{spec}})")

    for label in c.labels:
        samples = c.samples.get(label, [])
        if not samples:
            continue
        rate = statistics.median(s.rate for s in samples)
        total = statistics.median(s.client_us + s.server_us for s in samples)
        lines.append(f"| {label} | {fig([s.rate for s in samples], ',.0f')} | "
                     f"{fig([s.client_us for s in samples], '.1f')} | "
                     f"{fig([s.server_us for s in samples], '.1f')} | "
                     f"{fig([s.client_us + s.server_us for s in samples], '.1f')} | "
                     f"{rate * total / 1e6:.2f} |")
    lines += [f"- {note}" for note in c.notes]
    return lines


def main(argv: list[str] | None = None) -> int:
    from .run import DEFAULT_URL
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cpucost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL))
    ap.add_argument("--tasks", type=int, default=TASKS)
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--pgbench")
    ap.add_argument("--against", metavar="REF", help="also run git REF's serve")
    ap.add_argument("--only", default="", metavar="LABELS",
                    help="the runs whose labels start with one of these, separated by ';' "
                         "(labels have commas)")
    args = ap.parse_args(argv)
    pgbench = rawsql.find_pgbench(args.pgbench) or "pgbench"
    server = Server(args.database_url)
    try:
        tw_url = server.create("cpucost")
        tw.migrate(tw_url)
        older = None
        if args.against:
            path = baseline.pythonpath(baseline.export(args.against))
            older = Older(args.against, server.create("cpucost_against"), path)
            tw.migrate(older.url, path)
        result = measure(tw_url, server.create("cpucost_minimal"), pgbench, args.tasks,
                         args.rounds, lambda m: print(m, file=sys.stderr, flush=True),
                         older, tuple(o for o in args.only.split(";") if o))
    finally:
        server.drop_all()
        remove_workdir()
    print("\n".join(report(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
