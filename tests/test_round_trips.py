"""Part 10, one round trip per batch: a busy process writes the outcomes of the
tasks it ran in the same statement (and transaction) as its next claim, and an
outcome that statement cannot write is written apart, once, as before.

What is asserted holds whichever way each outcome went (with a claim, or in a
batch of the completer's own): every task is done exactly once (the completion
audit), its row and its log lines say so, and nothing is reported lost. How many
outcomes rode a claim depends on timing (on a loaded machine a claim may find
nothing waiting): a statement-level trigger on tasks (its transition tables)
counts them per transaction, and the tests print that figure, not assert it;
its size is the benchmark's business (benchmarks/).
"""
from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import pytest
from invariants import (
    DONE_LINE,
    LEASE_LOST_LINE,
    REFUSE_RESULT,
    REFUSED_RESULT,
    assert_each_done_line_once,
    completions,
    ids_in,
    insert_tasks,
    install_completion_audit,
    query,
    query_free,
    stop_all,
    stray_traceback,
    tail,
    wait_finished,
)
from proc import ServeFactory, ServeProcess, importable

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


def all_ids(db: Any) -> list[int]:
    return [r[0] for r in query(db, "SELECT id FROM tasks ORDER BY id")]


def assert_each_completed_once(db: Any, p: ServeProcess, ids: list[int]) -> None:
    """Each task was completed exactly once (the audit counts the writes that set
    done or error), logged done at most once, and no outcome was fenced off as
    lost: the process held every lease to the end."""
    counts = completions(db)
    not_once = {i: counts.get(i, 0) for i in ids if counts.get(i, 0) != 1}
    assert not not_once, f"tasks not completed exactly once: {dict(list(not_once.items())[:20])}"
    out = p.output()
    assert_each_done_line_once([out])
    assert not ids_in(out, LEASE_LOST_LINE), tail(out)
    assert not stray_traceback(out), tail(out)


def test_a_busy_process_writes_its_outcomes_with_its_next_claims(
        db_url: str, db: Any, serve: ServeFactory, echo_env: dict[str, str]) -> None:
    """5,000 no-op tasks on 100 workers at the default settings (claims come
    back full: a busy process, whose claims carry the outcomes waiting): each
    task is done exactly once, with its result, its lease let go, one done
    line each, and no outcome reported lost."""
    total = 5000
    query_free(db, TRANSACTIONS)
    install_completion_audit(db)
    query_free(db, "INSERT INTO tasks (payload) SELECT 'task ' || n "
                   "FROM generate_series(1, %s) AS n", (total,))
    ids = all_ids(db)
    p = serve(db_url, env={**echo_env, "LOG_LEVEL": "INFO"})
    wait_finished(db, 120, [p])
    stop_all([p], signal.SIGINT)
    rows = query(db, "SELECT status, attempts, rescues, count(*) FROM tasks GROUP BY 1, 2, 3")
    assert rows == [("done", 1, 0, total)], rows
    assert query(db, "SELECT count(*) FROM tasks WHERE result IS DISTINCT FROM payload "
                     "OR locked_by IS NOT NULL OR locked_until IS NOT NULL") == [(0,)]
    assert_each_completed_once(db, p, ids)
    assert sorted(ids_in(p.output(), DONE_LINE)) == ids  # every task logged done
    along, finished = per_transaction(db)
    assert finished == total, (along, finished)  # each went in_progress -> done once
    print(f"{along} of {finished} outcomes written by a claim's transaction")


def test_an_outcome_the_claim_cannot_write_is_written_apart(
        db_url: str, db: Any, serve: ServeFactory, echo_env: dict[str, str]) -> None:
    """A row the table refuses fails the whole statement it rides in: the claim
    is not made, and the completer writes that statement's outcomes itself (the
    refused one stored as the task's error, the others done), each once.

    The refused outcome sits among thousands, so that it usually rides a claim;
    if it went in a batch of the completer's own (no claim in flight just then,
    as on a loaded machine), that batch is refused instead, and the same holds."""
    total = 3000
    query_free(db, TRANSACTIONS)
    query_free(db, REFUSE_RESULT)
    install_completion_audit(db)
    query_free(db, "INSERT INTO tasks (payload) SELECT 'task ' || n "
                   "FROM generate_series(1, %s) AS n", (total,))
    refused = insert_tasks(db, [REFUSED_RESULT])[0]
    query_free(db, "INSERT INTO tasks (payload) SELECT 'late ' || n "
                   "FROM generate_series(1, %s) AS n", (total,))
    ids = all_ids(db)
    p = serve(db_url, env={**echo_env, "LOG_LEVEL": "INFO"})
    wait_finished(db, 120, [p])
    stop_all([p], signal.SIGINT)
    out = p.output()
    rows = query(db, "SELECT status, attempts, count(*) FROM tasks WHERE id <> %s "
                     "GROUP BY 1, 2", (refused,))
    assert rows == [("done", 1, 2 * total)], rows
    [(status, error, attempts)] = query(db, "SELECT status, error, attempts FROM tasks "
                                            "WHERE id = %s", (refused,))
    assert (status, attempts) == ("error", 1)
    assert error.startswith("could not store result: RaiseException: results like this")
    assert_each_completed_once(db, p, ids)
    assert sorted(ids_in(out, DONE_LINE)) == sorted(set(ids) - {refused})
    assert f"Task ID: {refused} processed with status: error" in out, tail(out)
    rode = re.search(r"Claim with \d+ outcomes refused \(results like this are not allowed\)",
                     out)
    along, finished = per_transaction(db)
    assert finished == 2 * total + 1, (along, finished)
    print(f"the refused result {'rode a claim' if rode else 'was in a batch of its own'}; "
          f"{along} of {finished} outcomes written by a claim's transaction")
