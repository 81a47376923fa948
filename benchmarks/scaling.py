"""The hosts phase: the same batch of tasks through 1, 2 and 3 hosts.

Hosts are network namespaces on a private switch, with a throwaway PostgreSQL on
the switch's address (tests/hosts.py); one `taskworker serve` per host, run as a
user runs it (`ip netns exec H python -m taskworker serve`). Each point drains
one batch of tasks, timed like the other phases (tasks/s from the rows'
updated_at, start-up excluded), with either

- I/O-bound tasks (benchmarks/iobound.py: a cooperative 50 ms sleep), directly
  and through a PgBouncer in transaction mode (tests/pgbouncer.py, started on the
  switch, stock settings) with LISTEN_DATABASE_URL pointing direct, as the PgBouncer guide
  says to run it: capacity is hosts x WORKER_COUNT / 0.05 s, and the ratio to
  that ideal says what the queue costs; or
- no-op tasks, directly: there is no capacity to add, so the rate is whatever the
  database and the machine's cores allow, and the CPU taken by PostgreSQL's
  processes, the serve processes and the whole machine is sampled from /proc over
  each drain to show where it goes.

The harness reads the table over the cluster's unix socket (root namespace).
Everything made here (namespaces, cluster, bouncer, serve processes) is removed
at the end of the phase, also on Ctrl+C or failure.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType

from . import iobound
from . import taskworker_runs as tw
from .databases import connect
from .processes import Proc

TESTS = tw.REPO / "tests"
IO_HANDLER = "benchmarks.iobound:sleep"
BOUNCER_PORT = 6432  # inside the switch's namespace, where only PostgreSQL (5432) listens
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WORKERS, FETCH_LIMIT = 100, 100


def test_modules() -> tuple[ModuleType, ModuleType, ModuleType]:
    """tests/hosts.py, tests/pgbouncer.py and tests/pgserver.py (they import each
    other as top-level modules, so tests/ goes on sys.path)."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import hosts  # noqa: PLC0415 - only this phase needs them
    import pgbouncer  # noqa: PLC0415
    import pgserver  # noqa: PLC0415
    return hosts, pgbouncer, pgserver


@dataclass(frozen=True)
class Point:
    work: str  # "io" or "noop"
    route: str  # "direct" or "pgbouncer"
    hosts: int

    @property
    def label(self) -> str:
        work = "I/O-bound (50 ms sleep)" if self.work == "io" else "no-op"
        return f"{work}, {self.hosts} host{'s' if self.hosts > 1 else ''}, {self.route}"


@dataclass
class Cpu:
    """CPU seconds over one drain (insert commit to none left) and its wall time."""
    wall: float
    postgres: float  # postmaster and all its children (backends, background processes)
    serve: float  # the serve processes
    bouncer: float | None  # PgBouncer (None: not running)
    machine: float  # every CPU's busy time (user+nice+system+irq+softirq), anyone's

    def cores(self, seconds: float | None) -> float | None:
        return None if seconds is None or not self.wall else seconds / self.wall


@dataclass
class Run:
    drain: tw.Drain
    cpu: Cpu | None = None

    @property
    def rate(self) -> float | None:
        return self.drain.rate

    @property
    def span(self) -> float | None:
        return self.drain.span


@dataclass
class Scaling:
    """What the phase measured (Bench.scaling)."""
    workers: int = WORKERS
    fetch_limit: int = FETCH_LIMIT
    io_n: int = 0
    noop_n: int = 0
    sleep: float = iobound.SECONDS
    listen: str = ""  # how the processes behind PgBouncer listen
    server: str = ""  # the throwaway cluster's settings
    runs: dict[Point, list[Run]] = field(default_factory=dict)

    def ideal(self, p: Point) -> float | None:
        return p.hosts * self.workers / self.sleep if p.work == "io" else None


# --- CPU time from /proc


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from the state on (index 0 = field 3)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def process_cpu(pid: int, children: bool = False) -> float:
    """utime + stime of `pid` (with `children`: plus those of its reaped children)."""
    s = _stat(pid)
    if s is None:
        return 0.0
    ticks = int(s[11]) + int(s[12]) + (int(s[13]) + int(s[14]) if children else 0)
    return ticks / CLOCK_TICKS


def cluster_cpu(postmaster: int) -> float:
    """CPU of a PostgreSQL server so far: the postmaster with the backends it has
    reaped, plus its live children (a backend's time moves to the postmaster's
    cutime when it exits, so nothing is counted twice or lost)."""
    total = process_cpu(postmaster, children=True)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            s = _stat(int(entry))
            if s is not None and int(s[1]) == postmaster:
                total += (int(s[11]) + int(s[12])) / CLOCK_TICKS
    return total


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine so far (all CPUs, /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / CLOCK_TICKS  # user nice system irq softirq


class CpuMeter:
    """Samples the CPU of the server, the serve processes and the bouncer."""

    def __init__(self, postmaster: int, bouncer_pid: int | None) -> None:
        self.postmaster = postmaster
        self.bouncer_pid = bouncer_pid
        self._start: tuple[float, float, float, float, float] | None = None
        self.result: Cpu | None = None

    def _sample(self, procs: list[Proc]) -> tuple[float, float, float, float, float]:
        return (time.monotonic(), cluster_cpu(self.postmaster),
                sum(process_cpu(p.pid) for p in procs),
                process_cpu(self.bouncer_pid) if self.bouncer_pid else 0.0, machine_busy())

    def start(self, procs: list[Proc]) -> None:
        self._start = self._sample(procs)

    def stop(self, procs: list[Proc]) -> None:
        if self._start is None:
            return
        end = self._sample(procs)
        d = [b - a for a, b in zip(self._start, end, strict=True)]
        self.result = Cpu(d[0], d[1], d[2], d[3] if self.bouncer_pid else None, d[4])


def postmaster_pid(cluster_root: str) -> int:
    with open(os.path.join(cluster_root, "data", "postmaster.pid")) as f:
        return int(f.readline())


def bouncer_pid(hosts_module: ModuleType, netns: str) -> int | None:
    """The pgbouncer process in the switch's namespace (under runuser)."""
    done = hosts_module._run([hosts_module.IP, "netns", "pids", netns], check=False)
    for pid in done.stdout.split():
        with contextlib.suppress(OSError), open(f"/proc/{pid}/comm") as f:
            if f.read().strip() == "pgbouncer":
                return int(pid)
    return None


# --- the phase


@contextlib.contextmanager
def _bouncer(pgbouncer: ModuleType, net: object, prefix: list[str],
             address: str) -> Iterator[Callable[[str], str] | None]:
    if not pgbouncer.available():
        yield None
        return
    with pgbouncer.bouncer(net.url(), listen_addr=address, port=BOUNCER_PORT,
                           prefix=prefix) as via:
        yield via


def measure(result: Scaling, say: Callable[[str], None], notes: list[str], rounds: int,
            host_counts: list[int]) -> bool:
    """Build the hosts, run every point `rounds` times (order rotated each round)
    into `result`, tear everything down. False (and a note) when hosts cannot be
    made here."""
    hosts, pgbouncer, pgserver = test_modules()
    net = hosts.Network(hosts=max(host_counts))
    try:
        net.start()
    except hosts.HostsUnavailable as exc:
        notes.append(f"hosts phase skipped: cannot make test hosts ({exc})")
        return False
    try:
        say(f"hosts: {len(net.hosts)} network namespaces and a PostgreSQL at "
            f"{hosts.SERVER_ADDRESS} built")
        name = "twbench_hosts"
        conn = connect(net.admin_url)
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        admin = pgserver.database_url(net.admin_url, name)  # the harness: unix socket
        direct = net.url(name)  # the hosts: TCP to the switch's address
        tw.migrate(admin)
        result.server = "fsync=off, synchronous_commit=off, full_page_writes=off " \
                        "(tests/pgserver.py's throwaway cluster), max_connections=" \
                        f"{net.max_connections}"
        postmaster = postmaster_pid(net.cluster.root)
        with _bouncer(pgbouncer, net, [hosts.IP, "netns", "exec", net.netns],
                      hosts.SERVER_ADDRESS) as via:
            routes = ["direct"]
            if via is None:
                notes.append("hosts phase: pgbouncer not installed, direct rows only")
            else:
                routes.append("pgbouncer")
                result.listen = "LISTEN_DATABASE_URL direct (to PostgreSQL on the switch)"
            pooled = via(direct) if via else ""
            bouncer = bouncer_pid(hosts, net.netns) if via else None
            points = [Point("io", route, h) for route in routes for h in host_counts]
            points += [Point("noop", "direct", h) for h in host_counts]
            for r in range(rounds):
                order = points[r % len(points):] + points[:r % len(points)]
                for p in order:
                    say(f"hosts: {p.label} (round {r + 1}/{rounds})")
                    run = _run_point(p, net, admin, direct, pooled, postmaster, bouncer,
                                     result)
                    result.runs.setdefault(p, []).append(run)
                    for n in run.drain.notes:
                        notes.append(f"hosts, {p.label}: {n}")
    finally:
        net.close()
    return True


def _run_point(p: Point, net: object, admin: str, direct: str, pooled: str,
               postmaster: int, bouncer: int | None, result: Scaling) -> Run:
    url = pooled if p.route == "pgbouncer" else direct
    extra = {"listen_database_url": direct} if p.route == "pgbouncer" else {}
    handler = IO_HANDLER if p.work == "io" else tw.NOOP
    n = result.io_n if p.work == "io" else result.noop_n

    def start() -> list[Proc]:
        return [tw.start_serve(url, result.workers, result.fetch_limit, prefix=h.prefix,
                               handler=handler, **extra)
                for h in net.hosts[:p.hosts]]

    meter = CpuMeter(postmaster, bouncer if p.route == "pgbouncer" else None)
    d = tw.throughput(admin, n, result.workers, result.fetch_limit, processes=p.hosts,
                      start=start, on_start=meter.start, on_drained=meter.stop)
    return Run(d, meter.result)
