"""Part 15's workflows, measured (python -m benchmarks.workflows):

  group   a group of N members with a callback against N independent tasks of the
          same function, interleaved round by round, one serve (WORKER_COUNT=100,
          FETCH_LIMIT=100): each rate from the members' own completion times, the
          ratio of medians (target >= 0.8); how many times the callback became
          pending (1), and how long after the last member's outcome
  chain   a chain of M steps through one serve: seconds per step and transactions
          per step (pg_stat_database's xact_commit over the run: every statement
          of the serve, heartbeat and presence included), against M lone tasks
          run one after another the same way without a workflow (a trigger of the
          harness inserts the next when one is done, in its outcome's
          transaction, as the chain's release is): what a step costs beyond a
          lone task is the workflow's

The rows are inserted in SQL, as `taskworker.group(...).then(...).enqueue` and
`taskworker.chain(...).enqueue` insert them (store/queries.sql,
enqueue_workflow), in one statement so that one NOTIFY wakes the processes. The
no-op path with no workflow in use is the baseline phase of benchmarks.run
(`--only baseline --baseline REF`).
"""
from __future__ import annotations

import argparse
import statistics
import time

from . import taskworker_runs as tw
from .databases import Server, connect

WORKERS, FETCH_LIMIT = 100, 100
TASKS = "benchmarks.workflow_tasks"
CALL = "jsonb_build_object('args', jsonb_build_array(n), 'kwargs', '{}'::jsonb)"
INDEPENDENT = f"""
WITH ins AS (
    INSERT INTO tasks (task, format, arguments)
    SELECT 'bench_member', 2, {CALL} FROM generate_series(1, %s) AS n
    RETURNING id
)
SELECT min(id), max(id), count(*) FROM ins
"""
GROUP = f"""
WITH wf AS (SELECT nextval('taskworker_workflow_ids') AS id),
cb AS (SELECT nextval(pg_get_serial_sequence('tasks', 'id')) AS id),
members AS (
    INSERT INTO tasks (task, format, arguments, workflow_id, next_ids, next_joins)
    SELECT 'bench_member', 2, {CALL}, wf.id, ARRAY[cb.id], true
    FROM generate_series(1, %s) AS n, wf, cb
    RETURNING id
),
callback AS (
    INSERT INTO tasks (id, task, format, arguments, status, workflow_id)
    SELECT cb.id, 'bench_total', 2, '{{"args": [], "kwargs": {{}}}}', 'waiting', wf.id
    FROM cb, wf
),
waits AS (
    INSERT INTO taskworker_waits (task_id, parents_left)
    SELECT cb.id, (SELECT count(*) FROM members) FROM cb
)
SELECT min(id), max(id), count(*) FROM members
"""
CHAIN = """
WITH wf AS (SELECT nextval('taskworker_workflow_ids') AS id),
ids AS MATERIALIZED (
    SELECT n, nextval(pg_get_serial_sequence('tasks', 'id')) AS id
    FROM generate_series(1, %s) AS n
),
steps AS (
    INSERT INTO tasks (id, task, format, arguments, status, workflow_id, next_ids)
    SELECT id, 'bench_step', 2,
           CASE WHEN n = 1 THEN '{"args": [0], "kwargs": {}}'::jsonb
                ELSE '{"args": [], "kwargs": {}}'::jsonb END,
           CASE WHEN n = 1 THEN 'pending' ELSE 'waiting' END, (SELECT id FROM wf),
           CASE WHEN next IS NOT NULL THEN ARRAY[next] END
    FROM (SELECT n, id, lead(id) OVER (ORDER BY n) AS next FROM ids) AS s
    RETURNING id
),
waits AS (
    INSERT INTO taskworker_waits (task_id, parents_left)
    SELECT id, 1 FROM ids WHERE n > 1
)
SELECT min(id), max(id), count(*) FROM steps
"""
SINGLE = """
WITH ins AS (
    INSERT INTO tasks (task, format, arguments)
    VALUES ('bench_step', 2, '{"args": [0], "kwargs": {"lone": %s}}')
    RETURNING id
)
SELECT min(id), max(id), count(*) FROM ins
"""
# The lone tasks' harness: each one done inserts the next (kwargs.lone: how many).
LONE = """
CREATE OR REPLACE FUNCTION bench_next() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tasks (task, format, arguments)
    VALUES ('bench_step', 2, jsonb_build_object('args', jsonb_build_array(NEW.return_value),
                                                'kwargs', NEW.arguments -> 'kwargs'));
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS bench_next ON tasks;
CREATE TRIGGER bench_next AFTER UPDATE ON tasks FOR EACH ROW
    WHEN (NEW.status = 'done' AND OLD.status <> 'done' AND NEW.workflow_id IS NULL
          AND NEW.arguments -> 'kwargs' ? 'lone'
          AND (NEW.return_value)::text::int < (NEW.arguments -> 'kwargs' ->> 'lone')::int)
    EXECUTE FUNCTION bench_next();
"""
# Records each release of a waiting task (waiting -> pending), with the clock.
AUDIT = """
CREATE TABLE IF NOT EXISTS bench_releases (task_id bigint, at timestamptz);
CREATE OR REPLACE FUNCTION bench_release() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_releases VALUES (NEW.id, clock_timestamp());
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS bench_release ON tasks;
CREATE TRIGGER bench_release AFTER UPDATE ON tasks FOR EACH ROW
    WHEN (OLD.status = 'waiting' AND NEW.status = 'pending') EXECUTE FUNCTION bench_release();
"""


def start(url: str) -> list[tw.Proc]:
    return [tw.start_serve(url, WORKERS, FETCH_LIMIT, handler=None, task_modules=TASKS)]


def callback_release(url: str) -> tuple[int, float | None, str]:
    """(releases of the callback, seconds from the last member's outcome to its
    release, the callback's status)."""
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("""
                SELECT (SELECT count(*) FROM bench_releases),
                       extract(epoch FROM (SELECT max(at) FROM bench_releases)
                               - (SELECT max(updated_at) FROM tasks
                                  WHERE task = 'bench_member')),
                       (SELECT status FROM tasks WHERE task = 'bench_total')""")
            count, delay, status = cur.fetchone()
            cur.execute("TRUNCATE bench_releases")
        return count, None if delay is None else float(delay), status
    finally:
        conn.close()


def run_group(url: str, n: int, rounds: int) -> list[str]:
    rates: dict[str, list[float]] = {"independent": [], "group": []}
    releases: list[tuple[int, float | None, str]] = []
    for r in range(rounds):
        for kind in (("independent", "group") if r % 2 == 0 else ("group", "independent")):
            d = tw.throughput(url, n, WORKERS, FETCH_LIMIT, checkpoint=True,
                              insert=GROUP if kind == "group" else INDEPENDENT,
                              start=lambda: start(url))
            print(f"  round {r + 1} {kind}: {d.rate or 0:,.0f} tasks/s {d.notes or ''}",
                  flush=True)
            if d.rate:
                rates[kind].append(d.rate)
            if kind == "group":
                releases.append(callback_release(url))
    a, b = (statistics.median(rates[k]) if rates[k] else 0.0 for k in ("group", "independent"))
    lines = [f"Group of {n:,} members with a callback vs {n:,} independent tasks of the same "
             f"function, one serve (WORKER_COUNT={WORKERS}, FETCH_LIMIT={FETCH_LIMIT}), "
             f"{rounds} interleaved rounds, ratio of medians", "",
             "| run | tasks/s (median) | each run |", "| --- | ---: | --- |"]
    for kind in ("independent", "group"):
        each = ", ".join(f"{x:,.0f}" for x in rates[kind])
        lines.append(f"| {kind} | {statistics.median(rates[kind]) if rates[kind] else 0:,.0f} "
                     f"| {each} |")
    lines += ["", f"- group / independent: {a / b if b else 0:.2f} (target >= 0.8)"]
    for i, (count, delay, status) in enumerate(releases, 1):
        shown = "n/a" if delay is None else f"{delay * 1000:.0f} ms"
        lines.append(f"- group run {i}: the callback became pending {count} time(s), {shown} "
                     f"after the last member's outcome transaction began; callback {status}")
    return lines


def transactions(url: str) -> int:
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_stat_clear_snapshot()")
            cur.execute("SELECT xact_commit FROM pg_stat_database "
                        "WHERE datname = current_database()")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def steps_run(url: str, steps: int, insert: str) -> tuple[float, float, int]:
    """(ms per step, transactions per step, the last step's value)."""
    time.sleep(1.5)  # (the backends report their counts within a second or so)
    before = transactions(url)
    d = tw.throughput(url, steps, WORKERS, FETCH_LIMIT, insert=insert, start=lambda: start(url))
    conn = connect(url)
    try:
        with conn.cursor() as cur:  # (the lone tasks' rows are all in the database now)
            cur.execute("SELECT count(*), max(return_value::text::int), "
                        "extract(epoch FROM max(updated_at) - min(updated_at)) "
                        "FROM tasks WHERE task = 'bench_step' AND status = 'done'")
            done, last, span = cur.fetchone()
    finally:
        conn.close()
    time.sleep(1.5)
    after = transactions(url)
    if done != steps:
        print(f"  {done} of {steps} steps done {d.notes}", flush=True)
    return float(span or 0) * 1000 / max(steps - 1, 1), (after - before) / steps, last


def run_chain(url: str, steps: int, rounds: int) -> list[str]:
    conn = connect(url)
    with conn.cursor() as cur:
        cur.execute(LONE)
    conn.close()
    got: dict[str, list[tuple[float, float, int]]] = {"chain": [], "lone": []}
    for r in range(rounds):
        for kind in (("chain", "lone") if r % 2 == 0 else ("lone", "chain")):
            got[kind].append(steps_run(url, steps, CHAIN if kind == "chain" else SINGLE))
            ms, xacts, last = got[kind][-1]
            print(f"  round {r + 1} {kind}: {ms:.2f} ms/step, {xacts:.2f} transactions/step, "
                  f"last value {last}", flush=True)
    lines = [f"A chain of {steps:,} steps against {steps:,} lone tasks run one after another "
             f"(each inserted by the previous one's outcome transaction), one serve "
             f"(WORKER_COUNT={WORKERS}), {rounds} interleaved rounds, medians; transactions: "
             "pg_stat_database.xact_commit over the run (the serve's start and stop, its "
             "heartbeat and the harness's statements included)", "",
             "| run | ms per step | transactions per step | each run (ms, transactions) |",
             "| --- | ---: | ---: | --- |"]
    for kind in ("chain", "lone"):
        runs = got[kind]
        each = ", ".join(f"{ms:.2f} / {x:.2f}" for ms, x, _ in runs)
        lines.append(f"| {kind} | {statistics.median(m for m, _, _ in runs):.2f} | "
                     f"{statistics.median(x for _, x, _ in runs):.2f} | {each} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--tasks", type=int, default=100_000, help="group members")
    ap.add_argument("--steps", type=int, default=1000, help="chain steps")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=("group", "chain"))
    args = ap.parse_args()
    server = Server(args.database_url)
    try:
        url = server.create("workflows")
        tw.migrate(url)
        conn = connect(url)
        with conn.cursor() as cur:
            cur.execute(AUDIT)
        conn.close()
        lines: list[str] = []
        if args.only in (None, "group"):
            lines += run_group(url, args.tasks, args.rounds) + [""]
        if args.only in (None, "chain"):
            lines += run_chain(url, args.steps, args.rounds)
        print("\n".join(lines))
    finally:
        server.drop_all()


if __name__ == "__main__":
    main()
