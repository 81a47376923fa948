"""The exchange against a scripted database: each statement it sends is named
and answered from a script (rows, or an error), so the tests see exactly which
statements one round trip sends and what it makes of their answers: which
outcomes it reports written, fenced off or written before a lost reply, which
it leaves for the writing lane, and which tasks it hands to the workers.

A stand-in, beside the real-database tests of the same paths
(test_completions.py, test_interleavings.py, test_round_trips.py): it drives
orders of events and answers the real server gives only by chance.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg2.errors
import pytest

from taskworker.processor.catalog import Catalog
from taskworker.processor.completer import Completer
from taskworker.processor.dispatch import Dispatch
from taskworker.processor.exchange import Exchange
from taskworker.processor.outcomes import DONE, GIVE_BACK, Outcome
from taskworker.settings import load
from taskworker.store import sql
from taskworker.store.connection import Stopped
from taskworker.store.prepared import Prepared
from taskworker.store.sql import QUERIES
from taskworker.store.tasks import Claim, ClaimedTask

HOLDER = "scripted:1:00000001"
Answer = list[tuple[Any, ...]] | BaseException | Callable[[dict[str, Any]], Any]


class ScriptedDatabase:
    """A lane's connection: answers each statement, by name, from `script`."""

    def __init__(self, script: dict[str, list[Answer]]) -> None:
        self.script = script
        self.sent: list[str] = []  # the statements' names, in order
        self.params: list[dict[str, Any]] = []
        self.sent_at = 0.0

    def query(self, statement: str | Prepared, params: Any = None, *,
              resend_on_timeout: bool = True) -> list[tuple[Any, ...]]:
        text = statement.text if isinstance(statement, Prepared) else \
            statement.removeprefix(sql.ORDERED)  # (see tasks.HEARTBEAT)
        name = next(n for n, q in QUERIES.items() if q == text)
        self.sent.append(name)
        self.params.append(dict(params or {}))
        self.sent_at = time.monotonic()
        answers = self.script.get(name)
        assert answers, f"unscripted statement {name}"
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer(dict(params or {})) if callable(answer) else answer

    def recycle(self) -> None:
        pass

    def close(self) -> None:
        pass


def claimed_row(task_id: int, completing: bool = False) -> tuple[Any, ...]:
    """A claim's row: id, payload, attempts, rescues, size, task, queue, share, cancel,
    fence, unstarted_rescues, format, trace, priority, run_at (and, from
    claim_shares_completing, NULL for `written`)."""
    row = (task_id, f"payload {task_id}", 1, 0, 10, None, "default", 100, False, 1, 0, 1, None,
           0, "2026-12-08 00:00:00+00")
    return (*row, None) if completing else row


def exchange(claiming: ScriptedDatabase, writing: ScriptedDatabase,
             workers: int = 20) -> Exchange:
    settings = load({"DATABASE_URL": "postgresql://scripted/none",
                     "WORKER_COUNT": str(workers)})
    dispatch = Dispatch(settings.worker_count, settings.lease_seconds)
    completer = Completer(settings, dispatch, frees_slots=False)
    catalog = Catalog(settings, (lambda payload: payload, False), {})
    ex = Exchange(settings, HOLDER, dispatch, catalog, completer, renewing=lambda: True,
                  stopping=lambda: False, giving_up=lambda: False,
                  lanes=(claiming, writing))  # type: ignore[arg-type]
    ex.fetcher._pairs, ex.fetcher._pairs_at = [("default", "")], time.monotonic()
    return ex


def held(ex: Exchange, *ids: int) -> list[Outcome]:
    """Outcomes (done) of tasks the dispatch holds, handed to the completer."""
    tasks = [ClaimedTask(i, f"payload {i}", 1, 0, fence=1) for i in ids]
    ex.dispatch.hand_out(tasks, time.monotonic())
    for _ in tasks:
        ex.dispatch.take()
    outcomes = [Outcome(t, 1, DONE, result=f"result {t.id}") for t in tasks]
    for outcome in outcomes:
        ex.completer.put(outcome)
    return outcomes


def states(*rows: tuple[int, str]) -> list[tuple[Any, ...]]:
    """claim_shares_completing's rows for outcomes: (id, fence 1, written)."""
    return [(i, *[None] * 8, 1, None, None, None, None, None, written) for i, written in rows]


def test_a_busy_claim_writes_the_outcomes_waiting_in_its_own_statement(
        caplog: pytest.LogCaptureFixture) -> None:
    """One statement: the outcomes of tasks 1-3 and a claim of 4 and 5. Its answer
    says 1 written now, 2 written before (a lost reply), 3 fenced off: reported
    as such, and 4 and 5 go to the workers in the claim's order."""
    claiming = ScriptedDatabase({"claim_shares_completing": [
        [claimed_row(5, True), claimed_row(4, True),
         *states((1, "now"), (2, "before"), (3, "fenced"))]]})
    ex = exchange(claiming, ScriptedDatabase({}))
    held(ex, 1, 2, 3)
    caplog.set_level(logging.INFO, logger="taskworker")
    tasks, _ = ex.claim(ex.fetcher.plan(10))
    assert claiming.sent == ["claim_shares_completing"]
    assert [t.id for t in tasks] == [5, 4]
    assert [ex.dispatch.take().id for _ in range(2)] == [5, 4]  # type: ignore[union-attr]
    stats = ex.completer.stats()
    assert (stats["done"], stats["lease_lost"], stats["unwritten"]) == (2, 1, 0), stats
    lines = [r.getMessage() for r in caplog.records]
    assert "Task ID: 2 outcome was written before the connection was lost" in lines
    assert "[Worker 1] Task ID: 3 lease lost, result discarded" in lines
    assert sum("processed with status: done" in line for line in lines) == 2


def test_a_claim_refused_with_outcomes_leaves_them_to_the_writing_lane() -> None:
    """The claiming lane's statement is refused whole (a row the table refuses):
    its outcomes go back to the completer unreported, a plain claim follows, and
    the writing lane writes them apart, one by one, finding the one at fault."""
    refused = psycopg2.errors.RaiseException("results like this are not allowed")
    claiming = ScriptedDatabase({"claim_shares_completing": [refused],
                                 "claim_shares": [[claimed_row(9)]]})

    def one(params: dict[str, Any]) -> Any:
        ids = params["ids"].strip("{}").split(",")
        if ids == ["2"] and "done" in params["statuses"]:  # (its error can be stored)
            raise psycopg2.errors.RaiseException("results like this are not allowed")
        return [(int(i), 1, "now") for i in ids]

    writing = ScriptedDatabase({"complete": [refused, one, one, one, one]})
    ex = exchange(claiming, writing)
    held(ex, 1, 2, 3)
    tasks, _ = ex.claim(ex.fetcher.plan(10))
    assert claiming.sent == ["claim_shares_completing", "claim_shares"]
    assert [t.id for t in tasks] == [9]
    assert ex.completer.stats()["unwritten"] == 3  # none reported by the claiming lane
    ex.write(ex.writing, ex.completer.take())
    # the batch refused, then 1, 2 (refused: its error stored instead), 3
    assert writing.sent == ["complete"] * 5
    assert [p["ids"] for p in writing.params] == ["{1,2,3}", "{1}", "{2}", "{2}", "{3}"]
    assert writing.params[3]["statuses"] == '{"error"}'  # (its error stored instead)
    stats = ex.completer.stats()
    assert (stats["done"], stats["error"], stats["unwritten"]) == (2, 1, 0), stats


def test_a_batch_cancelled_by_statement_timeout_is_written_in_halves() -> None:
    cancelled = psycopg2.errors.QueryCanceled("canceling statement due to statement timeout")
    writing = ScriptedDatabase({"complete": [
        cancelled, lambda p: [(int(i), 1, "now") for i in p["ids"].strip("{}").split(",")],
        lambda p: [(int(i), 1, "now") for i in p["ids"].strip("{}").split(",")]]})
    ex = exchange(ScriptedDatabase({}), writing)
    held(ex, 1, 2, 3, 4)
    ex.write(ex.writing, ex.completer.take())
    assert [p["ids"] for p in writing.params] == ["{1,2,3,4}", "{1,2}", "{3,4}"]
    assert ex.completer.stats()["done"] == 4


def test_a_claim_stopped_by_shutdown_leaves_its_outcomes_to_the_writing_lane() -> None:
    """Shutdown stops the claiming lane's statement (its connection was down):
    the outcomes it carried are neither reported nor lost; the writing lane's
    statement then says what is in the table, the first send included."""
    claiming = ScriptedDatabase({"claim_shares_completing": [Stopped("fetcher")]})
    writing = ScriptedDatabase({"complete": [[(1, 1, "before"), (2, 1, "now")]]})
    ex = exchange(claiming, writing)
    held(ex, 1, 2)
    with pytest.raises(Stopped):
        ex.claim(ex.fetcher.plan(10))
    assert ex.completer.stats()["unwritten"] == 2
    ex.write(ex.writing, ex.completer.take())
    stats = ex.completer.stats()
    assert (stats["done"], stats["unwritten"], stats["lease_lost"]) == (2, 0, 0), stats


def test_the_writing_lane_claims_along_only_for_a_busy_process() -> None:
    """Twenty workers or more, and claims coming back full: the writing lane's
    batch goes with a claim of its own (two in flight); otherwise alone."""
    writing = ScriptedDatabase({
        "complete": [[(1, 1, "now")]],
        "claim_shares_completing": [[claimed_row(7, True), *states((2, "now"))]]})
    ex = exchange(ScriptedDatabase({}), writing)
    outcomes = held(ex, 1)
    assert not ex._along(ex.completer.take())  # not busy: a plain write
    ex.write(ex.writing, outcomes)
    ex.fetcher.busy = True
    held(ex, 2)
    assert ex._along(ex.completer.take())
    assert writing.sent == ["complete", "claim_shares_completing"]
    assert ex.dispatch.held_ids() == [7]


def test_a_given_back_task_wakes_every_fetcher(caplog: pytest.LogCaptureFixture) -> None:
    """A give back written makes its task claimable at once: every process's
    fetcher is woken (wake_others) in the same lane, after the write."""
    writing = ScriptedDatabase({"complete": [[(1, 1, "now")]], "wake_others": [[]]})
    ex = exchange(ScriptedDatabase({}), writing)
    task = ClaimedTask(1, "p", 1, 0, fence=1)
    ex.dispatch.hand_out([task], time.monotonic())
    ex.completer.put(Outcome(task, 0, GIVE_BACK))
    ex.write(ex.writing, ex.completer.take())
    assert writing.sent == ["complete", "wake_others"]
    assert ex.completer.stats()["given_back"] == 1


def test_a_busy_claim_starts_where_its_last_claim_of_the_queue_began() -> None:
    """Each claim_shares sends, per queue, the first row the last one took (the
    bound: see shares_claimed); an idle spell forgets it, and the whole claim,
    which reads from the start, is sent again once PAIRS_TTL or ten times its own
    time has passed, whichever is longer."""
    claiming = ScriptedDatabase({"claim_shares": [[claimed_row(5), claimed_row(6)],
                                                  [claimed_row(7)]]})
    ex = exchange(claiming, ScriptedDatabase({}))
    ex.claim(ex.fetcher.plan(10))
    ex.claim(ex.fetcher.plan(10))
    first, second = claiming.params
    assert (first["from_priorities"], first["from_ids"]) == ("{NULL}", "{NULL}")
    assert (second["from_priorities"], second["from_ids"]) == ("{0}", "{5}")
    assert second["from_run_ats"] == '{"2026-12-08 00:00:00+00"}'

    ex.fetcher.idle()  # an idle spell: the next claim is the whole one, and no bound is kept
    assert ex.fetcher.plan(10).shares is None and ex.fetcher._bounds == {}

    whole = ex.fetcher.plan(10)
    took = 0.2  # the whole claim took 0.2 s: the next is due 2 s after it, not 0.5
    ex.fetcher.claimed(whole, Claim([], [("default", "")]), time.monotonic() - took)
    ex.fetcher._pairs_at = time.monotonic() - 1.0
    assert ex.fetcher.plan(10).shares is not None, "the whole claim was sent again too soon"
    ex.fetcher._pairs_at = time.monotonic() - 2.5
    assert ex.fetcher.plan(10).shares is None
