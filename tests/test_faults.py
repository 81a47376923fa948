"""Fault injection: real `taskworker serve` processes are killed, frozen,
disconnected and interrupted mid-run; afterwards the table and the logs must show
that no task was lost, stranded, or completed twice.
"""
from __future__ import annotations

import random
import re
import signal
import time

import pytest
from invariants import (
    DONE_LINE,
    FAST,
    LEASE_LOST_LINE,
    RESCUED_LINE,
    assert_all_done_once,
    assert_each_done_line_once,
    backends_of,
    create_runs_table,
    handler_env,
    ids_in,
    insert_tasks,
    install_completion_audit,
    query,
    status_counts,
    stop_all,
    stray_traceback,
    tail,
    tasks,
    wait_finished,
    wait_lines,
    wait_statements_ended,
    wait_until,
)
from proc import ServeProcess


def held_by(db, pid: int) -> list[int]:  # type: ignore[no-untyped-def]
    """Ids of the tasks the serve process `pid` holds (in progress, leased to it)."""
    rows = query(db, "SELECT id FROM tasks WHERE status = 'in_progress' "
                     "AND split_part(locked_by, ':', 2) = %s ORDER BY id", (str(pid),))
    return [r[0] for r in rows]


def done_count(db) -> int:  # type: ignore[no-untyped-def]
    return status_counts(db).get("done", 0)


def test_kill_9_one_of_three_processes(db_url, db, serve) -> None:  # type: ignore[no-untyped-def]
    lease = 2.0
    install_completion_audit(db)
    ids = insert_tasks(db, [f"task {n} of the kill -9 run" for n in range(2500)])
    env = {**FAST, "TASK_MIN_SECONDS": "0.005", "TASK_MAX_SECONDS": "0.02",
           "WORKER_COUNT": "20", "FETCH_LIMIT": "20", "LEASE_SECONDS": str(lease)}
    procs = [serve(db_url, env=env) for _ in range(3)]
    for p in procs:
        p.wait_for(r"Starting worker 20$")
    victim, survivors = procs[0], procs[1:]

    # Kill the victim while it holds tasks and plenty of work is left.
    wait_until(lambda: done_count(db) >= 300 and held_by(db, victim.pid), 30,
               "the victim to hold tasks mid-run", procs, interval=0.01)
    backends = backends_of(db, victim.pid)
    victim.proc.kill()
    killed_at = time.monotonic()
    victim.wait(5)
    # What it held when it died, once what it had sent (a completion, a claim: its
    # backend runs it to the end and commits) has landed; well before its leases
    # (renewed a third of the lease before it died at most) run out.
    wait_statements_ended(db, backends, "the killed process")
    lost = held_by(db, victim.pid)
    assert lost, "the victim held nothing when it was killed"
    assert done_count(db) < len(ids), "the run was over before the kill"

    # Its tasks are rescued once their lease runs out, and finished by the others.
    wait_until(lambda: all(tasks_done(db, lost)), lease + 10,
               f"the {len(lost)} tasks of the killed process to be done", survivors)
    assert time.monotonic() - killed_at < lease + 10
    wait_finished(db, 60, survivors)

    rescued = set()
    for p in survivors:
        rescued.update(ids_in(p.output(), RESCUED_LINE))
    assert set(lost) <= rescued, f"not rescued: {sorted(set(lost) - rescued)[:20]}"
    stop_all(survivors, signal.SIGINT)

    assert_all_done_once(db, ids)
    assert_each_done_line_once(p.output() for p in procs)
    finished_by_survivors = set()
    for p in survivors:
        finished_by_survivors.update(ids_in(p.output(), DONE_LINE))
    assert set(lost) <= finished_by_survivors
    assert not set(lost) & set(ids_in(victim.output(), DONE_LINE))
    rows = tasks(db)  # each lost once: charged if its start was in the table (migration 011)
    assert all(rows[i]["rescues"] + rows[i]["unstarted_rescues"] == 1 for i in lost), rows
    assert all(rows[i]["attempts"] == 1 + rows[i]["rescues"] for i in lost), rows


def tasks_done(db, ids) -> list[bool]:  # type: ignore[no-untyped-def]
    rows = query(db, "SELECT status = 'done' FROM tasks WHERE id = ANY(%s)", (list(ids),))
    return [r[0] for r in rows]


def test_every_backend_terminated_twice(db_url, db, serve) -> None:  # type: ignore[no-untyped-def]
    install_completion_audit(db)
    ids = insert_tasks(db, [f"task {n} of the outage run" for n in range(1600)])
    env = {**FAST, "TASK_MIN_SECONDS": "0.03", "TASK_MAX_SECONDS": "0.07",
           "WORKER_COUNT": "10", "LEASE_SECONDS": "3"}
    procs = [serve(db_url, env=env) for _ in range(2)]

    def connections() -> int:
        return query(db, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                         "current_database() AND application_name LIKE 'taskworker %%'")[0][0]

    for round_no, progress in enumerate((200, 800), 1):
        # All four connections of both processes up, and the run under way.
        wait_until(lambda n=progress: connections() == 8 and done_count(db) >= n, 30,
                   f"8 connections and {progress} tasks done (round {round_no})", procs)
        killed = query(db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        assert len(killed) >= 8 and all(ok for (ok,) in killed)
        assert done_count(db) < len(ids), f"the run was over before outage {round_no}"
        for p in procs:
            def reconnected(p: ServeProcess = p, n: int = round_no) -> bool:
                return len(re.findall(r"Reconnected to database", p.output())) >= n * 3

            wait_until(reconnected, 30, f"pid {p.pid} to reconnect (round {round_no})",
                       [p])

    wait_finished(db, 60, procs)
    for p in procs:
        assert p.proc.poll() is None, f"serve exited during the outages:\n{tail(p.output())}"
        out = p.output()
        assert "Database connection lost" in out
        assert "Reconnected to database" in out
        assert not stray_traceback(out), tail(out, 80)
    stop_all(procs, signal.SIGINT)
    assert_all_done_once(db, ids)
    assert_each_done_line_once(p.output() for p in procs)


def test_sigstop_past_lease_then_sigcont(db_url, db, serve) -> None:  # type: ignore[no-untyped-def]
    lease = 2.0
    install_completion_audit(db)
    create_runs_table(db)
    ids = insert_tasks(db, [f"frozen task {n}" for n in range(6)])
    common = {**FAST, "LEASE_SECONDS": str(lease), "FETCH_INTERVAL": "0.2"}
    # The process to freeze holds long tasks: it is mid-task when stopped.
    frozen = serve(db_url, env=handler_env("recording", **common, TEST_SLEEP="2",
                                          WORKER_COUNT="3", FETCH_LIMIT="3"))
    wait_lines(frozen, r"Processing task ID", 3)
    backends = backends_of(db, frozen.pid)
    frozen.signal(signal.SIGSTOP)
    try:
        wait_statements_ended(db, backends, "the frozen process")
        held = held_by(db, frozen.pid)
        assert len(held) >= 3, held
        other = serve(db_url, env=handler_env("recording", **common, TEST_SLEEP="0.05",
                                              WORKER_COUNT="3"))
        wait_finished(db, lease + 15, [other])
        other.wait_for(RESCUED_LINE)
    finally:
        before_resume = len(frozen.output())
        frozen.signal(signal.SIGCONT)

    # Resumed, the frozen process may not write: each of its runs either ends and
    # its result is discarded, or is stopped by the lease guard (the lease ran out
    # while it was frozen) and its give-back is fenced off. It starts nothing new.
    running = ids_in(frozen.output(), r"Processing task ID: (\d+)")
    wait_until(lambda: set(running) <= set(ids_in(frozen.output(), LEASE_LOST_LINE)), 15,
               "the frozen process to discard its late results", [frozen])
    assert not ids_in(frozen.output()[before_resume:], r"Processing task ID: (\d+)"), \
        frozen.output()
    stop_all([frozen, other], signal.SIGINT)

    assert_all_done_once(db, ids)
    holders = dict(query(db, "SELECT task_id, split_part(holder, ':', 2)::int FROM completions"))
    assert set(holders.values()) == {other.pid}, holders
    assert not ids_in(frozen.output(), DONE_LINE)
    assert_each_done_line_once([frozen.output(), other.output()])
    runs = query(db, "SELECT task_id, pid FROM runs")
    for task_id in running:  # the other process ran each of them to the end
        assert other.pid in {pid for t, pid in runs if t == task_id}, (task_id, runs)
    rows = tasks(db)  # each lost once: charged if its start was in the table (migration 011)
    assert all(rows[i]["rescues"] + rows[i]["unstarted_rescues"] == 1
               and rows[i]["attempts"] == 1 + rows[i]["rescues"] for i in held), rows


@pytest.mark.slow
def test_ctrl_c_at_random_moments(db_url, db, serve) -> None:  # type: ignore[no-untyped-def]
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"random seed {seed}")
    ids = insert_tasks(db, [f"interrupted task {n}" for n in range(300)])
    env = {**FAST, "TASK_MIN_SECONDS": "0.05", "TASK_MAX_SECONDS": "0.4", "WORKER_COUNT": "10",
           "LEASE_SECONDS": "5"}

    for round_no in range(1, 6):
        p = serve(db_url, env=env)
        p.wait_for(r"Starting task processor")
        time.sleep(rng.uniform(0.2, 1.5))
        p.signal(signal.SIGTERM if round_no == 3 else signal.SIGINT)  # SIGTERM: the same
        if round_no % 2 == 0:  # a second Ctrl+C: running tasks are cancelled, given back
            time.sleep(rng.uniform(0, 0.1))
            p.signal(signal.SIGINT)
        code = p.wait(20)
        assert code == 0, f"round {round_no}: exit {code}\n{tail(p.output())}"
        assert "All workers have completed, shutdown successful" in p.output()
        rows = tasks(db)
        assert not [i for i, r in rows.items() if r["status"] == "in_progress"]
        assert not [i for i, r in rows.items() if r["status"] == "error"]
        wrong = {i: (r["status"], r["attempts"]) for i, r in rows.items()
                 if r["attempts"] != (1 if r["status"] == "done" else 0) or r["locked_by"]}
        assert not wrong, f"round {round_no}: attempts counted for given-back tasks: {wrong}"

    assert status_counts(db).get("pending", 0) > 0, "everything finished before the last Ctrl+C"
    p = serve(db_url, env=env)
    wait_finished(db, 60, [p])
    stop_all([p], signal.SIGINT)
    rows = tasks(db)
    assert sorted(rows) == ids
    assert all(r["status"] == "done" and r["result"] == r["payload"][::-1] for r in rows.values())
    assert all(r["attempts"] == 1 and r["rescues"] == 0 for r in rows.values())


def test_poison_task_is_parked_after_max_rescues(db_url, db, serve) -> None:  # type: ignore[no-untyped-def]
    payloads = [f"innocent task {n}" for n in range(40)]
    payloads.insert(10, "poison")
    ids = insert_tasks(db, payloads)
    poison_id = ids[10]
    env = handler_env("poison", **{**FAST, "LEASE_SECONDS": "1", "FETCH_INTERVAL": "0.2"},
                      MAX_RESCUES="2", TEST_SLEEP="0.05", WORKER_COUNT="4")

    starts = 0
    while True:
        status = query(db, "SELECT status FROM tasks WHERE id = %s", (poison_id,))[0][0]
        if status == "error":
            break
        assert starts < 8, f"poison not parked after {starts} starts: {tasks(db)[poison_id]}"
        p = serve(db_url, env=env)
        starts += 1
        # It either dies on the poison or (once the poison is parked) runs on.
        wait_until(lambda p=p: p.proc.poll() is not None or query(
            db, "SELECT status = 'error' FROM tasks WHERE id = %s", (poison_id,))[0][0],
            30, "the process to die on the poison, or the poison to be parked", [p])
        if p.proc.poll() is not None:
            assert p.proc.returncode == -signal.SIGKILL

    wait_finished(db, 30, [p])
    if p.proc.poll() is None:
        stop_all([p], signal.SIGINT)
    rows = tasks(db)
    assert rows[poison_id]["status"] == "error"
    assert rows[poison_id]["error"] == "abandoned: worker lost 3 times"
    assert rows[poison_id]["rescues"] == 3
    others = {i: (r["status"], r["error"]) for i, r in rows.items()
              if i != poison_id and (r["status"] != "done" or r["result"] != r["payload"][::-1])}
    assert not others, f"innocent tasks not done: {others}"


def test_shutdown_is_bounded_by_shutdown_timeout(db_url, db, serve) -> None:  # type: ignore[no-untyped-def]
    ids = insert_tasks(db, [f"long task {n}" for n in range(5)])
    p = serve(db_url, env={**FAST, "TASK_MIN_SECONDS": "10", "TASK_MAX_SECONDS": "10",
                           "SHUTDOWN_TIMEOUT": "1", "WORKER_COUNT": "3"})
    wait_lines(p, r"Processing task ID", 3)
    p.signal(signal.SIGINT)
    sent = time.monotonic()
    code = p.wait(15)
    took = time.monotonic() - sent
    assert code == 0, tail(p.output())
    assert took < 9, f"shutdown waited {took:.1f}s for 10-second tasks (SHUTDOWN_TIMEOUT=1)"
    out = p.output()
    assert "Cancelling 3 running tasks" in out
    assert "All workers have completed, shutdown successful" in out
    rows = tasks(db)
    assert sorted(rows) == ids
    for r in rows.values():
        assert (r["status"], r["attempts"], r["error"], r["locked_by"]) == \
            ("pending", 0, None, None), r
    assert not completions_possible(db)


def completions_possible(db) -> list[int]:  # type: ignore[no-untyped-def]
    """Tasks with a result or error written (none after a cancelled shutdown)."""
    return [r[0] for r in query(db, "SELECT id FROM tasks WHERE result IS NOT NULL "
                                    "OR error IS NOT NULL")]

