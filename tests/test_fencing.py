"""The fencing token: every claim of a task gives its hold a new `fence`, and
nothing else changes it, so no write of an earlier hold is ever taken for a
later one's, even when the same process claims the task again.

Driven step by step through the store's own functions on a real database, one
statement at a time, in the orders that happen when a reply is lost or a
process gives a task back and claims it again (no sleeps, no processes: each
step is the statement serve would send at that point). The processor-level
interleaving (a claim's rows given back as orphans while they are handed out)
is in test_fencing_interleavings.py.
"""
from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2
from invariants import insert_tasks, query, tasks, wait_until

from taskworker.store import admin, completion
from taskworker.store import tasks as store
from taskworker.store.completion import OutcomeWrite
from taskworker.store.database import Direct
from taskworker.store.tasks import ClaimedTask

HOLDER = "fencing-test:1:00000001"
OTHER = "fencing-test:2:00000002"


def claim_one(db: Any, holder: str = HOLDER) -> ClaimedTask:
    rows = store.claim(Direct(db), holder=holder, limit=1, lease=300).rows
    assert len(rows) == 1, rows
    return rows[0].task


def done(task: ClaimedTask, result: str) -> OutcomeWrite:
    return OutcomeWrite(task.id, task.fence, "done", result, None, None, False, task.rescues)


def given_back(task: ClaimedTask) -> OutcomeWrite:
    return OutcomeWrite(task.id, task.fence, "pending", None, None, None, True, task.rescues)


def write(db: Any, *writes: OutcomeWrite, holder: str = HOLDER) -> dict[tuple[int, int], str]:
    return completion.complete(Direct(db), holder=holder, writes=writes, frees_slots=False)


def test_a_give_back_resent_after_a_lost_reply_does_not_give_back_the_next_hold(
        db_url: str, db: Any) -> None:
    """The completer gives task X back (shutdown of a worker, say); the statement
    commits but its reply is lost with the connection. The same process claims X
    again (its second hold) and a worker starts it. Then the completer, having
    reconnected, sends the give back again. With the attempt count as the token
    (lowered by the give back, raised again by the claim) the resend matched the
    second hold and gave it back under the running worker; with the fence it
    writes nothing."""
    [task_id] = insert_tasks(db, ["x"])
    first = claim_one(db)
    assert write(db, given_back(first)) == {first.hold: "now"}  # committed; its reply lost
    second = claim_one(db)
    assert (second.id, second.attempt) == (first.id, first.attempt)  # what users see
    assert second.fence == first.fence + 1

    assert write(db, given_back(first)) == {}  # the resend: fenced off
    row = tasks(db)[task_id]
    assert (row["status"], row["locked_by"]) == ("in_progress", HOLDER), row

    assert write(db, done(second, "second's result")) == {second.hold: "now"}
    row = tasks(db)[task_id]
    assert (row["status"], row["result"], row["attempts"]) == ("done", "second's result", 1)


def test_a_statement_sent_again_says_from_its_own_answer_what_the_first_send_wrote(
        db_url: str, db: Any) -> None:
    """The completion of A and B commits and its reply is lost; meanwhile B's
    lease ran out and another process rescued and claimed it. Sent again, the
    statement writes nothing, and its answer says A's outcome is in the table
    (written before: its row shows this hold's write) and B's is not (B's row
    has another holder and a new fence): no second look at the rows."""
    a, b = insert_tasks(db, ["a", "b"])
    held = store.claim(Direct(db), holder=HOLDER, limit=2, lease=300).rows
    first_a, first_b = sorted((row.task for row in held), key=lambda t: t.id)
    assert write(db, done(first_a, "A")) == {first_a.hold: "now"}  # its reply lost
    with db.cursor() as cur:
        cur.execute("UPDATE tasks SET locked_until = now() - interval '1 second' "
                    "WHERE id = %s", (b,))
    assert store.rescue(Direct(db), max_rescues=5, holder=OTHER, held=[]).back == [b]
    claim_one(db, OTHER)
    assert write(db, done(first_a, "A"), done(first_b, "B")) == {first_a.hold: "before"}
    rows = tasks(db)
    assert (rows[a]["status"], rows[a]["result"]) == ("done", "A")
    assert (rows[b]["status"], rows[b]["locked_by"]) == ("in_progress", OTHER)


def test_an_orphans_outcome_is_refused_after_the_same_process_claims_the_task_again(
        db_url: str, db: Any) -> None:
    """A claim commits and the process loses its reply; after the reconnect it
    gives back the rows it holds but does not know (orphans), and claims them
    again. An outcome naming the first hold is refused; the second hold's is
    written. Also when the first hold is known to the process after all (the
    orphan check runs while a worker has it: the race part 12 names)."""
    [task_id] = insert_tasks(db, ["y"])
    first = claim_one(db)
    assert store.give_back_orphans(Direct(db), holder=HOLDER, known=[]) == [task_id]
    second = claim_one(db)
    assert write(db, done(first, "first's result")) == {}
    assert write(db, done(second, "second's result")) == {second.hold: "now"}
    assert tasks(db)[task_id]["result"] == "second's result"


def test_the_orphan_check_gives_back_a_hold_it_does_not_know_even_of_a_known_task(
        db_url: str, db: Any) -> None:
    """The process knows task Z by its first hold; the table says it holds Z by
    a later hold (a claim of Z whose reply was lost). That later hold is an
    orphan: the check gives it back instead of leaving it to run out its lease
    and be charged a rescue."""
    [task_id] = insert_tasks(db, ["z"])
    first = claim_one(db)
    assert write(db, given_back(first)) == {first.hold: "now"}
    claim_one(db)  # its reply lost: the process still knows only `first`
    assert store.give_back_orphans(Direct(db), holder=HOLDER, known=[first.hold]) == [task_id]
    row = tasks(db)[task_id]
    assert (row["status"], row["locked_by"], row["attempts"]) == ("pending", None, 0), row


def test_lease_renewals_and_payload_loads_name_the_hold(db_url: str, db: Any) -> None:
    """The heartbeat renews, and the payload load reads, only the holds the
    process still has: not an earlier hold of a task it holds again."""
    [task_id] = insert_tasks(db, ["w"])
    first = claim_one(db)
    write(db, given_back(first))
    second = claim_one(db)
    d = Direct(db)
    assert store.heartbeat(d, holder=HOLDER, holds=[first.hold], lease=300).ids == set()
    assert store.heartbeat(d, holder=HOLDER, holds=[second.hold], lease=300).ids == {task_id}
    assert store.payloads(d, holder=HOLDER, holds=[first.hold]) == {}
    assert store.payloads(d, holder=HOLDER, holds=[second.hold]) == {task_id: "w"}


def test_nothing_but_a_claim_changes_the_fence(db_url: str, db: Any) -> None:
    """Give backs, retries, rescues, `taskworker retry` and a stale write lower
    `attempts` or leave it: the fence only ever goes up, by one per claim."""
    [task_id] = insert_tasks(db, ["v"])
    d = Direct(db)

    def fence() -> int:
        with db.cursor() as cur:
            cur.execute("SELECT fence FROM tasks WHERE id = %s", (task_id,))
            return int(cur.fetchone()[0])

    seen = [fence()]
    first = claim_one(db)
    seen.append(fence())
    write(db, given_back(first))  # the attempt is not counted
    seen.append(fence())
    second = claim_one(db)
    seen.append(fence())
    with db.cursor() as cur:  # its lease ran out: another process rescues it
        cur.execute("UPDATE tasks SET locked_until = now() - interval '1 second' "
                    "WHERE id = %s", (task_id,))
    assert store.rescue(d, max_rescues=5, holder=OTHER, held=[]).back == [task_id]
    seen.append(fence())
    assert write(db, done(second, "late")) == {}  # the rescued hold's outcome
    third = claim_one(db, OTHER)
    seen.append(fence())
    assert write(db, OutcomeWrite(task_id, third.fence, "error", None, "boom", None, False),
                 holder=OTHER) == {third.hold: "now"}
    seen.append(fence())
    later = datetime.now(UTC) + timedelta(hours=1)  # `taskworker retry`: attempts 0
    assert admin.retry(d, ids=[task_id], since=None, before=later, limit=10) == [task_id]
    seen.append(fence())
    fourth = claim_one(db)
    seen.append(fence())
    start = seen[0]  # (random at the insert: migration 020)
    assert [f - start for f in seen] == [0, 1, 1, 2, 2, 3, 3, 3, 4], seen
    assert fourth.fence == start + 4
    assert len({first.fence, second.fence, third.fence, fourth.fence}) == 4


def test_a_busy_statement_writes_its_outcomes_before_it_takes_a_claim(
        db_url: str, db: Any) -> None:
    """claim_shares_completing writes the outcomes before it locks any task to
    claim. Another transaction may hold a lock on one of this process's rows
    (a claim elsewhere keeps the lock of a row it found claimed meanwhile and
    passed over; a cancel or a user's UPDATE takes it) and go on to lock a
    pending row: had the busy statement already locked that pending row for its
    claim, each would wait for the other. Driven step by step: the other
    transaction locks the pending row NOWAIT while the busy statement waits for
    the row it writes (with the claim first, the NOWAIT fails)."""
    [held_id, pending_id] = insert_tasks(db, ["held", "pending"])
    held = claim_one(db)
    assert held.id == held_id
    other = psycopg2.connect(db_url, connect_timeout=10)
    busy = psycopg2.connect(db_url, connect_timeout=10)
    busy_pid = busy.get_backend_pid()
    answer: dict[str, Any] = {}

    def send() -> None:
        try:
            answer["claim"] = store.claim_shares_completing(
                Direct(busy), holder=HOLDER, lease=300, names=[""], shared={"default": 1},
                inline_bytes=1000, writes=[done(held, "r")])
            busy.commit()
        except Exception as exc:  # (reported by the assertions below)
            answer["error"] = exc
            busy.rollback()

    try:
        with other.cursor() as cur:  # the lock a claim elsewhere kept on the held row
            cur.execute("SELECT id FROM tasks WHERE id = %s FOR UPDATE", (held_id,))
        sender = threading.Thread(target=send)
        sender.start()
        wait_until(lambda: query(db, "SELECT wait_event_type FROM pg_stat_activity "
                                     "WHERE pid = %s", (busy_pid,)) == [("Lock",)],
                   30, "the busy statement to wait for the held row's lock")
        with other.cursor() as cur:  # not locked by the waiting statement: no wait
            cur.execute("SELECT id FROM tasks WHERE id = %s FOR UPDATE NOWAIT", (pending_id,))
        other.rollback()
        sender.join(30)
        assert not sender.is_alive()
    finally:
        other.close()
    assert "error" not in answer, answer
    claim = answer["claim"]
    busy.close()
    assert claim.written == {held.hold: "now"}
    assert [row.task.id for row in claim.rows] == [pending_id]
    assert dict(query(db, "SELECT id, status FROM tasks")) == {
        held_id: "done", pending_id: "in_progress"}


def test_a_task_that_gets_a_lost_tasks_id_does_not_get_its_hold(db: Any) -> None:
    """A failover to an asynchronous replica can lose the last tasks enqueued,
    and the new primary's sequence gives their ids to new tasks (played here by
    deleting the row and inserting one with its id). The process that held the
    lost task and now claims the new one must not have the lost hold's outcome
    written to it: the new task's fence starts elsewhere (migration 020)."""
    [task_id] = insert_tasks(db, ["lost"])
    lost = claim_one(db)
    query(db, "DELETE FROM tasks WHERE id = %s", (task_id,))
    query(db, "INSERT INTO tasks (id, payload) OVERRIDING SYSTEM VALUE VALUES (%s, 'new')",
          (task_id,))
    new = claim_one(db)
    assert new.id == lost.id and new.fence != lost.fence
    assert write(db, done(lost, "the lost task's result")) == {}  # fenced off
    assert query(db, "SELECT status, result FROM tasks WHERE id = %s", (task_id,)) == [
        ("in_progress", None)]
    assert write(db, done(new, "its own")) == {new.hold: "now"}
