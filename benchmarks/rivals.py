"""Against what users would pick instead: the same I/O-bound workload through
taskworker, Celery 5 (gevent pool; RabbitMQ and Redis brokers, without a result
backend and with Redis as it), pgqueuer and procrastinate (rival_systems.py).

Workload: N tasks, each a cooperative sleep of S seconds, enqueued before the
worker starts; one worker process with concurrency C. Ideal: C / S tasks/s.

Timing is the same for every system (task_clock.py): each task records its own
start and end. Throughput = N / (last end - first start). A system that has not
finished N tasks T seconds after its first task started is stopped there, and its
throughput is the tasks that ended within those T seconds / T (the output says
which runs were capped). CPU: utime + stime of the worker process and its
children (/proc, sampled every 50 ms) over the same window, as a share of one
core. Peak RSS: VmHWM of the worker process (summed over its children), read
before it is stopped.

Rounds are interleaved (each system once per round, the order rotated each
round), medians reported with min-max, ratios to taskworker's median of the
same run, so that other load on a shared machine falls on all alike.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from . import task_clock
from .processes import BenchError, Proc, process_tree, read_vm_hwm_kb, workdir
from .rival_systems import AMQP_URL, REDIS_URL, System
from .scaling import process_cpu

POLL = 0.05
START_TIMEOUT = 60.0  # seconds from the worker's start to its first finished task


@dataclass(frozen=True)
class Workload:
    sleep: float
    concurrency: int
    n: int
    cap: float  # seconds after the first task start at which a run is cut
    rounds: int

    @property
    def ideal(self) -> float:
        return self.concurrency / self.sleep


def workload(quick: bool) -> Workload:
    if quick:
        return Workload(sleep=0.05, concurrency=500, n=10_000, cap=4.0, rounds=2)
    return Workload(sleep=0.05, concurrency=500, n=30_000, cap=12.0, rounds=3)


@dataclass
class Run:
    n: int
    done: int = 0  # tasks that ended within the window
    rate: float | None = None
    span: float | None = None  # the window: first start to last end, or the cap
    capped: bool = False
    cpu: float | None = None  # CPU seconds / wall seconds over the window
    rss_kb: int | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Rivals:
    work: Workload
    systems: list[str] = field(default_factory=list)
    runs: dict[str, list[Run]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # system -> why
    servers: dict[str, str] = field(default_factory=dict)  # broker -> version


def tree_cpu(pid: int) -> float:
    return sum(process_cpu(p) for p in process_tree(pid))


def tree_rss_kb(pid: int) -> int | None:
    values = [kb for kb in (read_vm_hwm_kb(p) for p in process_tree(pid)) if kb]
    return sum(values) if values else None


def measure(systems: Sequence[System], work: Workload, say: Callable[[str], None],
            notes: list[str]) -> Rivals:
    result = Rivals(work)
    ready: list[System] = []
    for s in systems:
        why = s.unavailable()
        if why is None:
            try:
                s.prepare()
            except Exception as exc:  # noqa: BLE001 - skipped with the reason
                why = _what(exc)
        if why is None:
            ready.append(s)
            result.systems.append(s.name)
        else:
            result.skipped[s.name] = why
            notes.append(f"rivals: {s.name} skipped: {why}")
    try:
        for r in range(work.rounds):
            order = ready[r % len(ready):] + ready[:r % len(ready)] if ready else []
            for s in order:
                say(f"rivals: {s.name}, {work.n:,} tasks of {work.sleep * 1000:.0f} ms, "
                    f"concurrency {work.concurrency} (round {r + 1}/{work.rounds})")
                try:
                    one = run_once(s, work, f"{r}-{len(result.runs.get(s.name, []))}")
                except Exception as exc:  # noqa: BLE001 - the other systems go on
                    one = Run(work.n, notes=[_what(exc)])
                result.runs.setdefault(s.name, []).append(one)
                notes.extend(f"rivals {s.name} round {r + 1}: {n}" for n in one.notes)
    finally:
        for s in ready:
            try:
                s.clean()
            except Exception as exc:  # noqa: BLE001 - the rest are still cleaned
                notes.append(f"rivals: cleaning up {s.name}: {_what(exc)}")
    return result


def _what(exc: Exception) -> str:
    return str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"


def run_once(system: System, work: Workload, tag: str) -> Run:
    clock = workdir(f"clock/{system.name.replace(' ', '_').replace(',', '')}-{tag}")
    system.enqueue(work.n)
    result = Run(work.n)
    samples: list[tuple[float, float]] = []
    proc = system.start({"BENCH_SLEEP": str(work.sleep), "BENCH_CLOCK_DIR": clock})
    try:
        _watch(proc, work, clock, samples, result)
        result.rss_kb = tree_rss_kb(proc.pid)
    finally:
        code = system.stop(proc)
        if code != 0 or proc.killed:
            result.notes.append(f"worker exit code {code}"
                                + (" (killed after 30 s)" if proc.killed else "")
                                + f": {_tail(proc)}")
    _window(task_clock.read(clock), work, samples, result)
    return result


def _watch(proc: Proc, work: Workload, clock: str, samples: list[tuple[float, float]],
           result: Run) -> None:
    """Sample the worker's CPU until N tasks are done or the cap has passed."""
    launched = time.time()
    first_seen = None
    while True:
        now = time.time()
        samples.append((now, tree_cpu(proc.pid)))
        done = task_clock.count(clock)
        if done and first_seen is None:
            first_seen = now  # (after the first start: a task records at its end)
        if done >= work.n:
            return
        if first_seen is not None and now - first_seen >= work.cap:
            return
        if first_seen is None and now - launched > START_TIMEOUT:
            result.notes.append(f"no task finished within {START_TIMEOUT:.0f} s of the start")
            return
        if not proc.alive():
            result.notes.append(f"worker exited early: {_tail(proc)}")
            return
        time.sleep(POLL)


def _window(records: list[tuple[float, float]], work: Workload,
            samples: list[tuple[float, float]], result: Run) -> None:
    """Throughput and CPU share over first start .. last end (or the cap)."""
    if not records:
        return
    first = min(s for s, _ in records)
    cutoff = first + work.cap
    ends = [e for _, e in records if e <= cutoff]
    result.done = len(ends)
    if len(ends) >= work.n:
        result.span = max(ends) - first
    else:
        result.capped = True
        result.span = work.cap
    if result.span > 0:
        result.rate = result.done / result.span
    result.cpu = _cpu_share(samples, first, first + result.span)


def _cpu_share(samples: list[tuple[float, float]], t0: float, t1: float) -> float | None:
    before = [s for s in samples if s[0] <= t0] or samples[:1]
    after = [s for s in samples if s[0] >= t1] or samples[-1:]
    if not before or not after or after[0][0] <= before[-1][0]:
        return None
    (ta, ca), (tb, cb) = before[-1], after[0]
    return (cb - ca) / (tb - ta)


def _tail(proc: Proc) -> str:
    lines = [ln for ln in proc.output().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"


# --- the report


def _spread(values: list[float], fmt: str) -> str:
    mid = statistics.median(values)
    if len(values) == 1:
        return format(mid, fmt)
    return f"{format(mid, fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def report(r: Rivals) -> list[str]:
    w = r.work
    lines = [f"Against what users would pick instead (benchmarks/rivals.py): {w.n:,} tasks "
             f"enqueued first, each a cooperative sleep of {w.sleep * 1000:.0f} ms, one worker "
             f"process at concurrency {w.concurrency} (ideal {w.ideal:,.0f} tasks/s), "
             f"{w.rounds} interleaved rounds, medians (min–max); runs cut {w.cap:.0f} s after "
             "their first task started are marked *", "",
             "| system | tasks/s | of the ideal | vs taskworker | worker CPU, % of a core | "
             "peak RSS MB | tasks done per run |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    base = _median_rate(r.runs.get("taskworker", []))
    for name in r.systems:
        runs = r.runs.get(name, [])
        rates = [x.rate for x in runs if x.rate]
        if not rates:
            lines.append(f"| {name} | n/a | | | | | failed: see the notes |")
            continue
        mid = statistics.median(rates)
        vs = "" if not base else f"{mid / base:.2f}"
        cpus = [x.cpu * 100 for x in runs if x.cpu is not None]
        rss = [x.rss_kb / 1024 for x in runs if x.rss_kb]
        done = ", ".join(f"{x.done:,}{'*' if x.capped else ''}" for x in runs)
        ideal = _spread([x / w.ideal * 100 for x in rates], ".1f")
        lines.append(
            f"| {name} | {_spread(rates, ',.0f')} | {ideal}% | {vs} | "
            f"{_spread(cpus, '.0f') if cpus else ''} | "
            f"{_spread(rss, '.0f') if rss else ''} | {done} |")
    lines += ["", MEASURED.format(cap=w.cap)]
    if r.servers:
        lines += ["", "Servers: " + ", ".join(f"{k} {v}" for k, v in r.servers.items())]
    for name, why in r.skipped.items():
        lines.append(f"- {name}: skipped ({why})")
    return lines


def _median_rate(runs: list[Run]) -> float | None:
    rates = [x.rate for x in runs if x.rate]
    return statistics.median(rates) if rates else None


MEASURED = (
    "How it is measured (rivals): each task records its own start and end (time.time(), "
    "one 16-byte append to a file of its process: the same few microseconds in every "
    "system, no round trip); tasks/s = N / (last end - first start), or, for a run cut "
    "{cap:.0f} s after its first start (*), the tasks that ended by then / {cap:.0f} s. "
    "Start-up, connecting and the enqueueing are outside the window. CPU = utime + stime "
    "of the worker process and its children over the same window (sampled every 50 ms); "
    "the broker's or PostgreSQL's own CPU is not in it. Peak RSS = VmHWM, read before the "
    "worker is stopped. Every system at its defaults but the concurrency: taskworker "
    "WORKER_COUNT=C with FETCH_LIMIT unset; Celery -P gevent -c C (prefetch multiplier 4, "
    "early ack); pgqueuer max_concurrent_tasks=C (batch size 10); procrastinate "
    "concurrency=C (its psycopg pool's default size).")


def server_versions() -> dict[str, str]:
    """RabbitMQ's and Redis's versions as their servers report them (when the client
    libraries are installed and the servers answer)."""
    out: dict[str, str] = {}
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_timeout=3)
        out["Redis"] = str(client.info("server").get("redis_version"))
        client.close()
    except Exception:  # noqa: BLE001 - only shown when it can be had
        pass
    try:
        import amqp

        parts = urlsplit(AMQP_URL)
        conn = amqp.Connection(f"{parts.hostname}:{parts.port or 5672}",
                               userid=parts.username or "guest",
                               password=parts.password or "guest", connect_timeout=3)
        conn.connect()
        out["RabbitMQ"] = str(conn.server_properties.get("version", "?"))
        conn.close()
    except Exception:  # noqa: BLE001
        pass
    return out
