"""The report of a run: the table (markdown, which also reads well in a
terminal), the issue's targets checked against it, versions and notes.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata

from . import (
    backlog,
    baseline,
    bound,
    calls,
    claims,
    dashboard,
    defaults,
    history,
    minimal,
    producers,
    profiling,
    rawsql,
    rivals,
    roundtrip,
    scaling,
    soak,
    underload,
)
from . import taskworker_runs as tw
from .databases import Server
from .phases import MAIN_SETTING, Bench, mb, median_rate


@dataclass
class Row:
    figure: str
    value: float | None
    unit: str  # "tasks/s", "ms", "MB", "x"
    vs_pgqueuer: float | None = None
    vs_raw: float | None = None
    detail: str = ""
    lower_is_better: bool = False


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit in ("tasks/s", "jobs/s"):
        return f"{value:,.0f} {unit}"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "MB":
        return f"{value:.1f} MB"
    return f"{value:.3f}{unit}"


def fmt_ratio(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.2f}"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def table(sections: list[tuple[str, list[Row]]]) -> str:
    lines = ["| figure | value | vs pgqueuer | vs raw SQL b100 | detail |",
             "| --- | ---: | ---: | ---: | --- |"]
    for title, rows in sections:
        if not rows:
            continue
        lines.append(f"| **{title}** | | | | |")
        for r in rows:
            lines.append(f"| {r.figure} | {fmt_value(r.value, r.unit)} | "
                         f"{fmt_ratio(r.vs_pgqueuer)} | {fmt_ratio(r.vs_raw)} | {r.detail} |")
    return "\n".join(lines)


MEASURED = (
    "How it is measured: tasks are inserted in one statement once the serve processes "
    "listen (pgqueuer: enqueued in bulk, then one consumer in drain mode). Rate = tasks "
    "completed after the first completion batch / (last - first completion timestamp), "
    "from the rows' updated_at (pgqueuer: its log table's `created`), so start-up is "
    "excluded. Latency = clock_timestamp() in a row trigger on the claiming UPDATE "
    "(benchmark databases only) minus the time the inserter's commit returned (same "
    "clock). Handler: benchmarks.noop:noop, LOG_LEVEL=WARNING; raw SQL: pgbench -M "
    "prepared -c 2 -j 2 -t N (plan_cache_mode=force_custom_plan) running taskworker's "
    "own claim and complete statements (every task done), tasks/s = script runs/s x "
    "batch. Ratios compare with pgqueuer at its best batch and with raw SQL in batches "
    "of 100 on the same number of tasks. Every bulk insert is followed by ANALYZE (in "
    "the same transaction for taskworker), since autovacuum may be off on a benchmark "
    "server.")


def rate_detail(runs: list) -> str:
    rates = [r.rate for r in runs if r.rate is not None]
    spans = sorted(r.span for r in runs if getattr(r, "span", None) is not None)
    span = f"{spans[len(spans) // 2]:.2f} s first-last completion" if spans else ""
    if len(rates) > 1:
        return "; ".join(x for x in (f"median of {len(rates)}: {min(rates):,.0f}-"
                                     f"{max(rates):,.0f}", span) if x)
    return span


def sections(b: Bench) -> list[tuple[str, list[Row]]]:
    out: list[tuple[str, list[Row]]] = []

    rows = []
    for (n, w, f), runs in sorted(b.tw.items()):
        rate = median_rate(runs)
        rss = max((k for r in runs for k in r.rss_kb if k), default=None)
        detail = "; ".join(x for x in (rate_detail(runs), f"peak RSS {mb(rss) or 0:.0f} MB") if x)
        rows.append(Row(f"taskworker, 1 process, {n:,} tasks, W={w} F={f}", rate, "tasks/s",
                        ratio(rate, b.pgq_best(n)[1]), ratio(rate, b.raw100(n)), detail))
    out.append(("no-op throughput, one taskworker serve process", rows))

    rows = []
    for (n, batch), runs in sorted(b.pgq.items()):
        rate = median_rate(runs)
        rss = max((r.rss_kb or 0 for r in runs), default=0)
        detail = "; ".join(x for x in (rate_detail(runs), f"peak RSS {rss / 1024:.0f} MB") if x)
        rows.append(Row(f"pgqueuer, 1 process, {n:,} jobs, batch {batch}", rate, "jobs/s",
                        ratio(rate, b.pgq_best(n)[1]), ratio(rate, b.raw100(n)), detail))
    for (n, batch), runs in sorted(b.raw.items()):
        rate = median_rate(runs)
        rows.append(Row(f"raw SQL (pgbench), 2 clients, {n:,} tasks, batch {batch}",
                        rate, "tasks/s", ratio(rate, b.pgq_best(n)[1]),
                        ratio(rate, b.raw100(n)), rate_detail(runs)))
    out.append(("the same work by the others", rows))

    rows = []
    for count, d in sorted(b.multi.items()):
        rows.append(Row(f"taskworker, {count} processes, {d.n:,} tasks, W={d.workers} "
                        f"F={d.fetch_limit} each", d.rate, "tasks/s",
                        ratio(d.rate, b.pgq_best(d.n)[1]), ratio(d.rate, b.raw100(d.n)),
                        rate_detail([d])))
    out.append(("several processes together", rows))

    rows = []
    if b.finished:
        empty = median_rate(b.finished.get("empty", []))
        big = median_rate(b.finished.get("big", []))
        n = b.plan.finished_n
        w, f = MAIN_SETTING
        rows.append(Row(f"taskworker, {n:,} tasks, empty table (W={w} F={f})", empty, "tasks/s",
                        ratio(empty, b.pgq_best(n)[1]), ratio(empty, b.raw100(n)),
                        rate_detail(b.finished.get("empty", []))))
        rows.append(Row(f"taskworker, {n:,} tasks, {b.plan.finished_rows:,} done rows in the "
                        "table", big, "tasks/s", ratio(big, b.pgq_best(n)[1]),
                        ratio(big, b.raw100(n)), rate_detail(b.finished.get("big", []))))
        rows.append(Row("ratio: with done rows / empty", ratio(big, empty), "x",
                        detail="target >= 0.90"))
    out.append(("flat with table size", rows))

    rows = []
    tw_lat, pgq_lat = b.latency.get("taskworker"), b.latency.get("pgqueuer")
    for name, lat in (("taskworker", tw_lat), ("pgqueuer", pgq_lat)):
        if not lat:
            continue
        steady, single = lat
        other = pgq_lat if name == "taskworker" else None
        for label, value, theirs in (
                ("p50", steady.pct(50), other[0].pct(50) if other else None),
                ("p99", steady.pct(99), other[0].pct(99) if other else None)):
            rows.append(Row(f"{name} pickup {label} at {steady.rate:.0f}/s", value, "ms",
                            ratio(value, theirs), detail=(
                                f"{len(steady.values)} tasks at {steady.achieved:.0f}/s; "
                                f"max {max(steady.values, default=0):.2f} ms"
                                + (f"; {steady.missing} never claimed" if steady.missing
                                   else ""))))
        value = single.pct(50)
        theirs = other[1].pct(50) if other else None
        rows.append(Row(f"{name} single task into an idle worker, median", value, "ms",
                        ratio(value, theirs),
                        detail=f"{len(single.values)} tasks; max "
                               f"{max(single.values, default=0):.2f} ms"))
    title = ("pickup latency, insert commit to claim (lower is better; ratio = "
             "taskworker / pgqueuer)")
    out.append((title, rows))

    rows = []
    pgq_rss = max((r.rss_kb or 0 for runs in b.pgq.values() for r in runs), default=0) or None
    for workers, d in sorted(b.rss.items()):
        kb = max((k for k in d.rss_kb if k), default=None)
        rows.append(Row(f"taskworker peak RSS, WORKER_COUNT={workers}, {d.n:,} tasks",
                        mb(kb), "MB", ratio(mb(kb), mb(pgq_rss))))
    for (n, w, f), runs in sorted(b.tw.items()):
        if n > 20_000:
            kb = max((k for r in runs for k in r.rss_kb if k), default=None)
            rows.append(Row(f"taskworker peak RSS, WORKER_COUNT={w} F={f}, {n:,} tasks",
                            mb(kb), "MB", ratio(mb(kb), mb(pgq_rss))))
    if pgq_rss:
        rows.append(Row("pgqueuer consumer peak RSS (largest run)", mb(pgq_rss), "MB", 1.0))
    out.append(("peak RSS (VmHWM of the process; ratio = taskworker / pgqueuer)", rows))
    return out


def _cores(cpu: scaling.Cpu | None, seconds: float | None, done: int) -> str:
    """CPU as cores busy over the drain, and per task."""
    if cpu is None or seconds is None:
        return ""
    per_task = f"; {seconds / done * 1e6:.0f} µs/task" if done else ""
    return f"{cpu.cores(seconds):.2f}{per_task}"


def scaling_table(s: scaling.Scaling) -> list[str]:
    """The hosts phase: one row per point, medians over rounds."""
    cpus = os.cpu_count() or 0
    lines = [f"Scaling with hosts: one `taskworker serve` per host (network namespace), "
             f"WORKER_COUNT={s.workers} FETCH_LIMIT={s.fetch_limit}; I/O-bound: "
             f"{s.io_n:,} tasks of {s.sleep * 1000:.0f} ms each, no-op: {s.noop_n:,} tasks "
             "per point", "",
             "| work | hosts | route | tasks/s | ideal | of ideal | vs 1 host | PostgreSQL "
             "CPU, cores | serve CPU, cores | PgBouncer CPU, cores | machine busy, cores | "
             "detail |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for p, runs in sorted(s.runs.items(), key=lambda kv: (kv[0].work != "io", kv[0].route,
                                                          kv[0].hosts)):
        rate = median_rate(runs)
        ideal = s.ideal(p)
        one = median_rate(s.runs.get(scaling.Point(p.work, p.route, 1), []))
        ranked = sorted(runs, key=lambda r: r.rate or 0.0)
        mid = ranked[len(ranked) // 2]
        cpu, done = mid.cpu, mid.drain.done
        work = f"I/O {s.sleep * 1000:.0f} ms" if p.work == "io" else "no-op"
        lines.append(
            f"| {work} | {p.hosts} | {p.route} | {fmt_value(rate, 'tasks/s')} | "
            f"{'' if ideal is None else f'{ideal:,.0f}'} | {fmt_ratio(ratio(rate, ideal))} | "
            f"{fmt_ratio(ratio(rate, one))} | {_cores(cpu, cpu and cpu.postgres, done)} | "
            f"{_cores(cpu, cpu and cpu.serve, done)} | "
            f"{_cores(cpu, cpu and cpu.bouncer, done) if p.route == 'pgbouncer' else ''} | "
            f"{f'{cpu.cores(cpu.machine):.2f} of {cpus}' if cpu else ''} | "
            f"{rate_detail(runs)} |")
    lines += ["", SCALING_MEASURED.format(listen=s.listen or "n/a", server=s.server)]
    verdict = noop_verdict(s, cpus)
    if verdict:
        lines += ["", verdict]
    return lines


SCALING_MEASURED = (
    "How it is measured (hosts): network namespaces on a private bridge (tests/hosts.py) "
    "with a throwaway PostgreSQL on the bridge ({server}), one `serve` per host started "
    "with `ip netns exec`, LOG_LEVEL=WARNING; every point drains the same batch, inserted "
    "in one statement once the processes listen; tasks/s = tasks done after the first "
    "completion batch / (last - first completion), from the rows' updated_at (start-up "
    "excluded), median over rounds, points rotated each round. I/O-bound "
    "handler: benchmarks.iobound:sleep, gevent.sleep(0.05); ideal = hosts x WORKER_COUNT "
    "/ 0.05 s. PgBouncer: tests/pgbouncer.py on the bridge, pool_mode=transaction, stock "
    "settings otherwise (default_pool_size 20); DATABASE_URL through it, LISTEN: {listen}. "
    "CPU (of the median run) from /proc over its drain, insert commit to none left, as "
    "cores busy (CPU s / wall s) and per task: PostgreSQL = postmaster and its backends "
    "(an exited backend's time counted via the postmaster's cutime); serve = the serve "
    "processes; machine = every CPU's busy time (/proc/stat), whoever used it.")


def noop_verdict(s: scaling.Scaling, cpus: int) -> str:
    """One line on how no-op work scales with hosts, from the figures measured."""
    points = sorted(p.hosts for p in s.runs if p.work == "noop" and p.route == "direct")
    if len(points) < 2:
        return ""

    def mid(h: int) -> scaling.Run:
        runs = sorted(s.runs[scaling.Point("noop", "direct", h)], key=lambda r: r.rate or 0.0)
        return runs[len(runs) // 2]

    runs = [mid(h) for h in points]
    lo, hi = runs[0], runs[-1]
    if None in (lo.rate, hi.rate) or any(run.cpu is None for run in runs):
        return ""
    steps = ", ".join(f"{h} hosts {ratio(run.rate, lo.rate):.2f}x"
                      for h, run in zip(points[1:], runs[1:], strict=True))
    if len(runs) > 2 and runs[-2].rate:
        steps += f" ({points[-1]} vs {points[-2]}: {ratio(hi.rate, runs[-2].rate):.2f}x)"
    busy = ", ".join(f"{run.cpu.cores(run.cpu.machine):.2f}" for run in runs)
    pg = hi.cpu.cores(hi.cpu.postgres) or 0.0
    serve = hi.cpu.cores(hi.cpu.serve) or 0.0
    head = (f"No-op work: tasks/s vs {points[0]} host: {steps}; the machine's busy cores at "
            f"{', '.join(map(str, points))} hosts: {busy} of {cpus}; at {points[-1]} hosts "
            f"PostgreSQL takes {pg:.2f} cores and the serve processes {serve:.2f}")
    if (hi.cpu.cores(hi.cpu.machine) or 0.0) < 0.9 * cpus:
        return head + ": below saturation in this run."
    us = [run.cpu.postgres / run.drain.done * 1e6 for run in (lo, hi) if run.drain.done]
    per_task = (f"; PostgreSQL spends {us[0]:.0f} µs of CPU per task at {points[0]} host "
                f"and {us[-1]:.0f} µs at {points[-1]}, so one core of PostgreSQL's does at most "
                f"about {round(1e6 / us[-1], -2):,.0f} tasks/s" if len(us) == 2 else "")
    share = ("PostgreSQL (the claim and complete statements of every process) takes the "
             "larger share of it, and on separate machines its own cores would be the ceiling"
             if pg > serve else "the serve processes take the larger share of it")
    return (head + per_task + ". Once the cores are full they are the bound: added hosts "
            f"add claimers, not CPU; {share}.")


def targets(b: Bench) -> list[str]:
    """The issue's targets, each with the figure measured in this run."""
    lines = []

    def check(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "NOT met")

    for n in b.plan.sizes:
        (w, f), rate = b.tw_best(n)
        pgq_batch, pgq = b.pgq_best(n)
        if rate is None and pgq is None:
            continue  # (phases that measure it not run)
        r1, r2 = ratio(rate, pgq), ratio(rate, b.raw100(n))
        lines.append(f"- one process vs pgqueuer >= 2.0, {n:,} tasks: {r1 or 0:.2f} "
                     f"(best taskworker W={w} F={f} vs best pgqueuer batch {pgq_batch}) -> "
                     f"{check(None if r1 is None else r1 >= 2.0)}")
        lines.append(f"- one process vs raw SQL batch 100 >= 0.3, {n:,} tasks: {r2 or 0:.2f} "
                     f"-> {check(None if r2 is None else r2 >= 0.3)}")
    lat = b.latency.get("taskworker")
    if lat:
        p50, p99, single = lat[0].pct(50), lat[0].pct(99), lat[1].pct(50)
        lines.append(f"- pickup p50 <= 2 ms: {p50 or 0:.2f} ms -> "
                     f"{check(None if p50 is None else p50 <= 2)}")
        lines.append(f"- pickup p99 <= 5 ms: {p99 or 0:.2f} ms -> "
                     f"{check(None if p99 is None else p99 <= 5)}")
        lines.append(f"- single task into an idle worker < 5 ms: {single or 0:.2f} ms -> "
                     f"{check(None if single is None else single < 5)}")
    if b.finished:
        r3 = ratio(median_rate(b.finished.get("big", [])), median_rate(b.finished.get("empty", [])))
        lines.append(f"- 1,000,000 done rows within 10% of empty: {r3 or 0:.2f} -> "
                     f"{check(None if r3 is None else r3 >= 0.9)}")
    d = b.rss.get(100)
    if d:
        kb = max((k for k in d.rss_kb if k), default=None)
        lines.append(f"- peak RSS < 60 MB at WORKER_COUNT=100: {mb(kb) or 0:.1f} MB -> "
                     f"{check(None if kb is None else kb / 1024 < 60)}")
    return lines


def source_digest() -> str:
    """Identifies the taskworker source measured (the work tree may be uncommitted)."""
    digest = hashlib.sha1()
    for path in sorted([*tw.REPO.glob("taskworker/*.py"), *tw.REPO.glob("taskworker/*.sql"),
                        *tw.REPO.glob("migrations/*.sql")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def versions(server: Server) -> dict[str, str]:
    def v(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    try:
        commit = subprocess.run(["git", "-C", str(tw.REPO), "describe", "--always", "--dirty"],
                                check=False, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    pgbench = rawsql.find_pgbench(None)
    info = server.info()
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")),
                       "?")
    except OSError:
        pass
    psycopg2_version = v("psycopg2-binary")
    if psycopg2_version == "not installed":
        psycopg2_version = v("psycopg2")
    return {
        "python": platform.python_version(),
        "gevent": v("gevent"),
        "psycopg2": psycopg2_version,
        "taskworker": f"{v('taskworker')} (git {commit or '?'}; sha1 of taskworker/*.py, "
                      f"*.sql and migrations/*.sql: {source_digest()})",
        "pgqueuer": v("pgqueuer"),
        "asyncpg": v("asyncpg"),
        "uvloop": v("uvloop"),
        "celery / kombu / amqp / redis-py": f"{v('celery')} / {v('kombu')} / {v('amqp')} / "
                                            f"{v('redis')}",
        "procrastinate / psycopg": f"{v('procrastinate')} / {v('psycopg')}",
        "PostgreSQL": info.pop("version"),
        "pgbench": rawsql.pgbench_version(pgbench) if pgbench else "not found",
        "py-spy": profiling.available() or "not installed",
        "server settings": ", ".join(f"{k}={val}" for k, val in info.items()),
        "machine": f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}",
    }


def render(b: Bench, started: datetime.datetime, elapsed: float,
           info: dict[str, str]) -> str:
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    out = [f"# taskworker benchmark, {started:%Y-%m-%d %H:%M} ({elapsed:.0f} s)", "",
           f"Command: `{command.strip()}`", ""]
    out += [f"- {k}: {val}" for k, val in info.items()]
    secs = sections(b)
    if any(rows for _, rows in secs):
        out += ["", table(secs), ""]
        out += [MEASURED, ""]
    else:
        out += [""]
    if b.scaling is not None and b.scaling.runs:
        out += [*scaling_table(b.scaling), ""]
    if b.claims is not None:
        out += [*claims.report(b.claims), ""]
    if b.dashboard is not None:
        out += [*dashboard.report(b.dashboard), ""]
    if b.baseline is not None:
        out += [*baseline.report(b.baseline), ""]
    if b.defaults is not None:
        out += [*defaults.report(b.defaults), ""]
    if b.rivals is not None:
        out += [*rivals.report(b.rivals), ""]
    if b.roundtrip is not None:
        out += [*roundtrip.report(b.roundtrip), ""]
    if b.underload is not None:
        out += [*underload.report(*b.underload), ""]
    if b.backlog is not None:
        out += [*backlog.report(b.backlog), ""]
    if b.calls is not None:
        out += [*calls.report(b.calls), ""]
    if b.bound is not None:
        out += [*bound.report(b.bound), ""]
    if b.producers is not None:
        out += [*producers.report(b.producers), ""]
    if b.minimal is not None:
        out += [*minimal.report(b.minimal), ""]
    if b.soak is not None:
        out += [*soak.report(b.soak, b.args.soak_plot), ""]
    if b.history is not None:
        out += [*history.report(b.history), ""]
    tl = targets(b)
    if tl:
        out += ["Targets of issue 4:", *tl, ""]
    if b.profile is not None:
        p = b.profile
        if p.error:
            out += [f"py-spy: {p.error}", ""]
        else:
            out += [f"py-spy, {p.samples} samples (idle included) — top self time:"]
            out += [f"    {pct:5.1f}%  {frame}" for frame, pct in p.top("self", 15)]
            out += ["top total time (including callees):"]
            out += [f"    {pct:5.1f}%  {frame}" for frame, pct in p.top("total", 15)]
            out.append("")
    if b.notes:
        out += ["Notes (anything odd):", *[f"- {n}" for n in b.notes], ""]
    return "\n".join(out)


