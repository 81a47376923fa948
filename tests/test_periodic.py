"""Periodic tasks run by `serve`: each tick enqueued once across processes, a tick
pruned stays taken, only the latest missed tick after downtime, skip_if_running,
schedules nobody registers any more. Assertions are on taskworker_ticks, tasks
and the log lines.

Until named tasks are claimed and run with their own function, serve runs every
row with TASK_HANDLER: here `by_payload`, which does what the periodic
functions do (sleep as the payload says), so the same tests hold either way.
"""

from __future__ import annotations

import re
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from invariants import FAST, query, wait_until
from proc import ServeProcess

ENV = {**FAST, "TASK_HANDLER": "mymod:by_payload", "WORKER_COUNT": "10"}
ENQUEUED = r"Enqueued periodic task {} \(tick (\S+)\) as task ID (\d+)"
SKIPPED = r"Skipped tick (\S+) of periodic task {}: its previous run \(ID (\d+)\) is still " \
          r"(running|pending|waiting to start in a process)"

APP = '''
import time

from taskworker.registry import task


def run(payload):
    """Every periodic task here: sleep as "sleep:SECONDS" says."""
    if payload and payload.startswith("sleep:"):
        time.sleep(float(payload[6:]))
    return "ok"


def by_payload(payload):  # TASK_HANDLER
    return run(payload)

'''


def write_app(tmp_path: Path, *tasks: str, module: str = "mymod") -> list[str]:
    """Write a module registering `tasks` (lines of `task(...)(run)`) into serve's cwd;
    the serve arguments that load it."""
    (tmp_path / "cwd" / f"{module}.py").write_text(APP + "\n".join(tasks) + "\n")
    return ["--tasks", module]


def stop(*procs: ServeProcess) -> None:
    for p in procs:
        p.signal(signal.SIGINT)
    for p in procs:
        assert p.wait() == 0, p.output()


def logged(procs: Any, pattern: str) -> list[tuple[str, ...]]:
    return [m for p in procs for m in re.findall(pattern, p.output())]


def ticks(db: Any, task: str) -> list[tuple[datetime, int | None]]:
    return [(t, i) for t, i in query(
        db, "SELECT tick, task_id FROM taskworker_ticks WHERE task = %s ORDER BY tick", (task,))]


def task_ids(db: Any, task: str) -> list[int]:
    return [r[0] for r in query(db, "SELECT id FROM tasks WHERE task = %s ORDER BY id", (task,))]


def show(tick: datetime) -> str:
    """As the log lines show a tick: 2026-11-27T20:55:00Z, 2026-11-27T20:55:00.5Z."""
    text = tick.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{tick.microsecond:06d}".rstrip("0") if tick.microsecond else "") + "Z"


def test_three_processes_enqueue_each_tick_once(db_url: str, db: Any, serve: Any,
                                                tmp_path: Path) -> None:
    args = write_app(tmp_path, 'task("tick1", every="1s", skip_if_running=False)(run)')
    procs = [serve(db_url, env=ENV, args=args) for _ in range(3)]
    for p in procs:
        p.wait_for("Starting worker 1")
    # Three ticks after all three processes are up: each tick offered by all three.
    [(up,)] = query(db, "SELECT now()")
    wait_until(lambda: len([t for t, _ in ticks(db, "tick1") if t > up]) >= 3, 20,
               "three ticks of tick1 with the three processes up", procs, fail_on_exit=True)
    stop(*procs)

    found = ticks(db, "tick1")
    assert len(found) >= 3, found
    # One row per second, none missing: every process computed the same ticks.
    first = found[0][0]
    assert [t for t, _ in found] == [first + timedelta(seconds=n) for n in range(len(found))]
    # Each tick has its one task, and no task was enqueued outside a tick.
    assert None not in [i for _, i in found]
    assert sorted(i for _, i in found) == task_ids(db, "tick1")
    # Each tick was enqueued by exactly one of the three processes.
    lines = logged(procs, ENQUEUED.format("tick1"))
    assert sorted(lines) == sorted((show(t), str(i)) for t, i in found)


def test_only_the_latest_missed_tick_runs_and_a_pruned_tick_is_not_run_again(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    args = write_app(tmp_path, 'task("hourly", cron="0 * * * *", payload="hourly")(run)',
                     'task("yearly", cron="0 0 1 1 *")(run)',
                     'task("tick1", every="1s")(run)')
    # Every process was down for five hours: the last recorded tick is 5 h old.
    (hour,) = query(db, "SELECT date_trunc('hour', now())")[0]
    query(db, "INSERT INTO taskworker_ticks (task, tick) VALUES ('hourly', %s)",
          (hour - timedelta(hours=5),))
    first = serve(db_url, env=ENV, args=args)
    enqueued = first.wait_for(ENQUEUED.format("hourly"))
    wait_until(lambda: len(logged([first], ENQUEUED.format("tick1"))) >= 2, 10,
               "tick1 enqueued twice", [first])
    stop(first)

    found = ticks(db, "hourly")
    assert len(found) == 2, found  # the old one and the latest missed: none in between
    (latest, task_id), (enqueued_at,) = found[1], query(
        db, "SELECT enqueued_at FROM taskworker_ticks WHERE task = 'hourly' AND tick = %s",
        (found[1][0],))[0]
    assert latest == enqueued_at.replace(minute=0, second=0, microsecond=0)
    assert latest - found[0][0] >= timedelta(hours=5)
    assert enqueued.groups() == (show(latest), str(task_id))
    assert query(db, "SELECT status, payload FROM tasks WHERE id = %s", (task_id,)) == [
        ("done", "hourly")]
    # A schedule that never ran starts with its next tick, not the last one missed.
    assert ticks(db, "yearly") == []

    # Prune the finished runs and deploy again: the hour's tick stays taken.
    query(db, "DELETE FROM tasks WHERE status = 'done'")
    second = serve(db_url, env=ENV, args=args)
    wait_until(lambda: len(logged([second], ENQUEUED.format("tick1"))) >= 2, 10,
               "tick1 enqueued twice after the restart", [second])
    stop(second)
    newer = [t for t, _ in ticks(db, "hourly") if t > latest]  # (the hour may have turned)
    assert len(logged([second], ENQUEUED.format("hourly"))) == len(newer)
    assert (latest, task_id) in ticks(db, "hourly")


def test_after_downtime_the_interval_resumes_without_a_backlog(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    args = write_app(tmp_path, 'task("tick1", every="1s")(run)')
    first = serve(db_url, env=ENV, args=args)
    wait_until(lambda: len(ticks(db, "tick1")) >= 2, 10, "two ticks", [first])
    stop(first)
    (last, _) = ticks(db, "tick1")[-1]
    # Down for three ticks and more (by the database's clock, as the ticks are read).
    wait_until(lambda: query(db, "SELECT now() > %s + interval '3.5 seconds'", (last,))[0][0],
               10, "three ticks and more of downtime")
    second = serve(db_url, env=ENV, args=args)
    wait_until(lambda: len([t for t, _ in ticks(db, "tick1") if t > last]) >= 2, 10,
               "two ticks after the restart", [second])
    stop(second)
    after = [t for t, _ in ticks(db, "tick1") if t > last]
    assert after[0] - last >= timedelta(seconds=3), (last, after)  # nothing in the gap
    assert after == [after[0] + timedelta(seconds=n) for n in range(len(after))]
    assert len(task_ids(db, "tick1")) == len([i for _, i in ticks(db, "tick1") if i])


def test_a_tick_is_skipped_while_the_previous_run_is_live_unless_told_otherwise(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    args = write_app(tmp_path, 'task("slow", every="0.5s", payload="sleep:1.2")(run)',
                     'task("overlap", every="0.5s", payload="sleep:1.2", '
                     'skip_if_running=False)(run)')
    p = serve(db_url, env=ENV, args=args)
    wait_until(lambda: len([i for _, i in ticks(db, "slow") if i is None]) >= 2, 15,
               "two skipped ticks of slow", [p])
    wait_until(lambda: len(ticks(db, "overlap")) >= 4, 10, "four ticks of overlap", [p])
    stop(p)

    # (taskworker_ticks keeps the last 10 ticks of a task: the log has them all.)
    slow = ticks(db, "slow")
    skipped = [show(t) for t, i in slow if i is None]
    lines = logged([p], SKIPPED.format("slow"))
    assert [tick for tick, _, _ in lines][-len(skipped):] == skipped, p.output()
    runs = task_ids(db, "slow")
    assert {int(run) for _, run, _ in lines} <= set(runs)
    assert [int(i) for _, i in logged([p], ENQUEUED.format("slow"))] == runs
    assert {i for _, i in slow if i is not None} <= set(runs)
    # No two runs of "slow" overlapped: each was enqueued after the last one ended.
    spans = query(db, "SELECT created_at, updated_at FROM tasks WHERE task = 'slow' "
                      "ORDER BY id")
    for (_, ended), (started, _) in zip(spans, spans[1:], strict=False):
        assert started >= ended - timedelta(seconds=0.1), spans
    # skip_if_running=False: every tick got its run, and runs overlapped.
    overlap = ticks(db, "overlap")
    assert None not in [i for _, i in overlap]
    assert not logged([p], SKIPPED.format("overlap"))
    spans = query(db, "SELECT created_at, updated_at FROM tasks WHERE task = 'overlap' "
                      "ORDER BY id")
    assert spans[1][0] < spans[0][1], spans


def test_the_skip_line_says_whether_the_previous_run_started(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    """The previous run claimed by a process but not started (started_at NULL: it
    waits in that process's local queue) is not called running; once started, it is;
    pending, it is pending."""
    args = write_app(tmp_path, 'task("tick1", every="0.5s")(run)')
    [(previous,)] = query(db, "INSERT INTO tasks (task, status, attempts, locked_by, "
                              "locked_until) VALUES ('tick1', 'in_progress', 1, "
                              "'elsewhere:1:abcd', now() + interval '1 hour') RETURNING id")
    p = serve(db_url, env=ENV, args=args)
    line = SKIPPED.format("tick1").replace(r"\(ID (\d+)\)", rf"\(ID ({previous})\)")

    def says(state: str) -> None:
        wait_until(lambda: [s for _, _, s in logged([p], line)][-1:] == [state], 15,
                   f"a skip line saying {state!r}", [p])

    says("waiting to start in a process")
    query(db, "UPDATE tasks SET started_at = now() WHERE id = %s", (previous,))
    says("running")
    query(db, "UPDATE tasks SET status = 'pending', locked_by = NULL, locked_until = NULL, "
              "run_at = now() + interval '1 hour' WHERE id = %s", (previous,))
    says("pending")
    stop(p)
    assert not logged([p], ENQUEUED.format("tick1"))
    states = [s for _, _, s in logged([p], line)]
    first_running = states.index("running")
    assert set(states[:first_running]) == {"waiting to start in a process"}, states


def test_a_schedule_no_running_process_registers_enqueues_nothing(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    old = write_app(tmp_path, 'task("tick1", every="1s")(run)', 'task("gone", every="1s")(run)')
    first = serve(db_url, env=ENV, args=old)
    # (30 s deadlines: each includes a serve process starting, seconds when loaded)
    wait_until(lambda: ticks(db, "gone"), 30, "a tick of gone", [first])
    stop(first)
    (last_gone, _) = ticks(db, "gone")[-1]
    new = write_app(tmp_path, 'task("tick1", every="1s")(run)', module="mymod2")
    second = serve(db_url, env={**ENV, "TASK_HANDLER": "mymod2:by_payload"}, args=new)
    wait_until(lambda: len(logged([second], ENQUEUED.format("tick1"))) >= 3, 30,
               "tick1 enqueued three times", [second])
    stop(second)
    assert ticks(db, "gone")[-1][0] == last_gone
    assert not logged([second], ENQUEUED.format("gone"))


def test_serve_stops_when_the_scheduler_fails(db_url: str, db: Any, serve: Any,
                                              tmp_path: Path) -> None:
    args = write_app(tmp_path, 'task("tick1", every="1s")(run)')
    query(db, "DROP TABLE taskworker_ticks")
    p = serve(db_url, env=ENV, args=args)
    assert p.wait() == 1
    assert re.search(r'^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d Stopped because the scheduler failed: '
                     r'UndefinedTable: relation "taskworker_ticks" does not exist; '
                     r'exit status 1$', p.output(), re.MULTILINE), p.output()


def test_enqueue_tick_takes_a_tick_once_never_an_older_one_and_keeps_ten(db: Any) -> None:
    from taskworker.store.database import Direct
    from taskworker.store.schedules import enqueue_tick

    (hour,) = query(db, "SELECT date_trunc('hour', now())")[0]
    for back in range(20, 5, -1):  # 15 old ticks, the newest 6 hours ago
        query(db, "INSERT INTO taskworker_ticks (task, tick) VALUES ('hourly', %s)",
              (hour - timedelta(hours=back),))

    def offer(tick: datetime) -> Any:
        return enqueue_tick(Direct(db), task="hourly", tick=tick, since=hour, queue="reports",
                            priority=3, payload="p", skip_if_running=False)

    done = offer(hour)
    assert done.taken and done.task_id is not None
    assert query(db, "SELECT task, queue, priority, payload, status FROM tasks") == [
        ("hourly", "reports", 3, "p", "pending")]
    found = ticks(db, "hourly")
    assert len(found) == 10 and found[-1] == (hour, done.task_id)
    assert found[0][0] == hour - timedelta(hours=14)
    # Sent again (a reply lost with the connection): nothing more.
    assert offer(hour) == (False, None, None, None, None)
    # A host whose clock lags offers an older tick, not recorded yet: refused.
    assert offer(hour - timedelta(minutes=30)) == (False, None, None, None, None)
    assert len(task_ids(db, "hourly")) == 1
