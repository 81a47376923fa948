"""Part 10, one round trip per batch: a busy process writes the outcomes of the
tasks it ran in the same statement (and transaction) as its next claim, and an
outcome that statement cannot write is written apart, once, as before.

Observed from the table: a statement-level trigger on tasks (its transition
tables) records, per transaction, how many rows it claimed (pending -> in
progress) and how many it finished (in progress -> done or error).
"""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from invariants import (
    LEASE_LOST_LINE,
    REFUSE_RESULT,
    REFUSED_RESULT,
    ids_in,
    insert_tasks,
    query,
    query_free,
    stop_all,
    tail,
    wait_finished,
)
from proc import ServeFactory, importable

ECHO = '''\
"""Returns its payload: the result the table may refuse."""


def echo(payload):
    return payload
'''

TRANSACTIONS = """
CREATE TABLE round_trips (txid bigint, claimed int, finished int);
CREATE FUNCTION count_round_trip() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO round_trips
    SELECT txid_current(),
           count(*) FILTER (WHERE o.status = 'pending' AND n.status = 'in_progress'),
           count(*) FILTER (WHERE o.status = 'in_progress' AND n.status IN ('done', 'error'))
    FROM old_rows AS o JOIN new_rows AS n USING (id);
    RETURN NULL;
END $$;
CREATE TRIGGER count_round_trip AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION count_round_trip();
"""
@pytest.fixture
def echo_env(tmp_path: Path) -> dict[str, str]:
    return {**importable(tmp_path / "handlers", {"round_trip_echo": ECHO}),
            "TASK_HANDLER": "round_trip_echo:echo", "LOG_LEVEL": "WARNING",
            "WORKER_COUNT": "100", "FETCH_INTERVAL": "0.5"}


def per_transaction(db: Any) -> tuple[int, int]:
    """(outcomes finished in a transaction that also claimed, all outcomes finished)."""
    [(along, finished)] = query(db, """
        SELECT coalesce(sum(finished) FILTER (WHERE claimed > 0), 0), coalesce(sum(finished), 0)
        FROM (SELECT txid, sum(claimed) AS claimed, sum(finished) AS finished
              FROM round_trips GROUP BY txid) AS t""")
    return int(along), int(finished)


def test_a_busy_process_writes_its_outcomes_with_its_next_claims(
        db_url: str, db: Any, serve: ServeFactory, echo_env: dict[str, str]) -> None:
    """20,000 no-op tasks at the default settings: most outcomes are written by
    the transaction of a claim (two statements per batch would write none so),
    each task is done once, and no outcome is reported lost."""
    total = 20_000
    query_free(db, TRANSACTIONS)
    query_free(db, "INSERT INTO tasks (payload) SELECT 'task ' || n "
                   "FROM generate_series(1, %s) AS n", (total,))
    p = serve(db_url, env=echo_env)
    wait_finished(db, 90, [p])
    stop_all([p], signal.SIGINT)
    rows = query(db, "SELECT status, attempts, count(*) FROM tasks GROUP BY 1, 2")
    assert rows == [("done", 1, total)], rows
    assert query(db, "SELECT count(*) FROM tasks WHERE result <> payload") == [(0,)]
    along, finished = per_transaction(db)
    print(f"{along} of {finished} outcomes written by a claim's transaction")
    assert finished == total
    assert along >= 0.8 * total, (along, finished)
    assert not ids_in(p.output(), LEASE_LOST_LINE), tail(p.output())


def test_an_outcome_the_claim_cannot_write_is_written_apart(
        db_url: str, db: Any, serve: ServeFactory, echo_env: dict[str, str]) -> None:
    """A row the table refuses fails the whole statement it rides in (a claim's,
    or the writing lane's: which one carries it depends on timing): its
    outcomes are written apart, the refused one stored as the task's error, the
    others done, each once."""
    total = 6000
    query_free(db, REFUSE_RESULT)
    query_free(db, "INSERT INTO tasks (payload) SELECT 'task ' || n "
                   "FROM generate_series(1, %s) AS n", (total,))
    refused = insert_tasks(db, [REFUSED_RESULT])[0]
    query_free(db, "INSERT INTO tasks (payload) SELECT 'late ' || n "
                   "FROM generate_series(1, %s) AS n", (total,))
    p = serve(db_url, env={**echo_env, "LOG_LEVEL": "INFO"})
    wait_finished(db, 90, [p])
    stop_all([p], signal.SIGINT)
    out = p.output()
    rows = query(db, "SELECT status, attempts, count(*) FROM tasks WHERE id <> %s "
                     "GROUP BY 1, 2", (refused,))
    assert rows == [("done", 1, 2 * total)], rows
    [(status, error, attempts)] = query(db, "SELECT status, error, attempts FROM tasks "
                                            "WHERE id = %s", (refused,))
    assert (status, attempts) == ("error", 1)
    assert error.startswith("could not store result: RaiseException: results like this")
    assert not ids_in(out, LEASE_LOST_LINE), tail(out)
    done = ids_in(out, r"Task ID: (\d+) processed with status: done")
    assert len(done) == len(set(done)) == 2 * total  # each reported once
