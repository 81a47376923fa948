"""`taskworker migrate` on a table in use: an open transaction that enqueued makes
it retry (inserts stall about a second at most), two migrates take turns while
one builds an index CONCURRENTLY, an index an interrupted build left INVALID is
rebuilt, and enqueueing and serving go on while it runs on a sizable table.
"""
from __future__ import annotations

import re
import signal
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from invariants import FAST, query, wait_until
from pgbouncer import available, bouncer
from proc import CLI, ServeFactory, ServeProcess, run_cli

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = sorted(p.name for p in (ROOT / "migrations").glob("*.sql"))
CLAIM_INDEXES = ("tasks_queue_claim_idx", "tasks_name_claim_idx", "tasks_unique_key_idx")
BIG = 200_000  # rows of the "live" table: a few seconds of index building
STALL = 2.0  # the longest an insert may wait while migrate runs (lock_timeout is 1s)


class Enqueuer(threading.Thread):
    """An application enqueueing one task every `every` seconds on its own
    connection (the pre-part-7 insert: just a payload), timing each insert."""

    def __init__(self, url: str, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.url, self.every = url, every
        self.ids: list[int] = []
        self.latencies: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with closing(psycopg2.connect(self.url)) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                while not self.stop.is_set():
                    started = time.monotonic()
                    cur.execute("INSERT INTO tasks (payload) VALUES ('live') RETURNING id")
                    self.latencies.append(time.monotonic() - started)
                    self.ids.append(cur.fetchone()[0])
                    time.sleep(self.every)

    def wait_for_inserts(self, count: int) -> None:
        """Wait until `count` more inserts than now have committed."""
        target = len(self.ids) + count
        wait_until(lambda: len(self.ids) >= target or not self.is_alive(), 30,
                   f"{count} more inserts by the enqueuer")
        assert self.is_alive(), "the enqueuer stopped (an insert failed)"

    def finish(self) -> float:
        """Stop; return the longest insert."""
        self.stop.set()
        self.join(30)
        assert not self.is_alive() and self.latencies
        return max(self.latencies)


class BlockedByMigrate(threading.Thread):
    """Samples, until finished, the sessions that wait for a lock a `taskworker
    migrate` session holds (pg_blocking_pids): a migration that blocked serving or
    enqueueing shows there for as long as it blocks, however fast or slow the
    machine. Each sample: (application_name, query) of every such session."""

    def __init__(self, url: str, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.url, self.every = url, every
        self.seen: list[tuple[str, str]] = []
        self.samples = 0
        self.failed: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            with closing(connect(self.url)) as db:
                while not self.stop.is_set():
                    self.seen += query(
                        db, "SELECT a.application_name, a.query FROM pg_stat_activity AS a "
                            "JOIN pg_stat_activity AS m ON m.pid = ANY(pg_blocking_pids(a.pid)) "
                            "WHERE a.datname = current_database() "
                            "AND m.application_name = 'taskworker migrate'")
                    self.samples += 1
                    time.sleep(self.every)
        except BaseException as exc:  # reported by finish()
            self.failed = exc

    def finish(self) -> list[tuple[str, str]]:
        """Stop; return what was seen blocked."""
        self.stop.set()
        self.join(30)
        assert not self.is_alive() and self.failed is None and self.samples, self.failed
        return self.seen


def connect(url: str) -> Any:
    conn = psycopg2.connect(url, connect_timeout=10)
    conn.autocommit = True
    return conn


def migrate(url: str, tmp_path: Path, *args: str) -> ServeProcess:
    """`taskworker migrate *args` started in the background, its output in a file."""
    log = tmp_path / f"migrate-{time.monotonic_ns()}.log"
    return ServeProcess([], {"DATABASE_URL": url}, str(tmp_path), str(log),
                        command=[*CLI, "migrate", *args])


def migrated_to(url: str, version: int, rows: int = 0) -> None:
    """Apply migrations 1..version only, then add `rows` tasks (a quarter pending)."""
    code, out, err = run_cli(["migrate", "--to", str(version)], env={"DATABASE_URL": url})
    assert code == 0, (out, err)
    assert recorded(url) == MIGRATIONS[:version]
    if rows:
        with closing(connect(url)) as db:
            query(db, "INSERT INTO tasks (payload, status) SELECT 'old ' || n, CASE"
                      " WHEN n %% 4 = 0 THEN 'pending' ELSE 'done' END"
                      " FROM generate_series(1, %s) AS n", (rows,))


def recorded(url: str) -> list[str]:
    with closing(connect(url)) as db:
        return [r[0] for r in query(db, "SELECT name FROM schema_migrations ORDER BY version")]


def index_states(url: str) -> dict[str, bool]:
    """indisvalid of each claim index that exists."""
    with closing(connect(url)) as db:
        return dict(query(db, "SELECT c.relname, i.indisvalid FROM pg_index i"
                              " JOIN pg_class c ON c.oid = i.indexrelid"
                              " WHERE c.relname = ANY(%s)", (list(CLAIM_INDEXES),)))


def holding_a_lock(url: str) -> Any:
    """A connection inside a transaction that enqueued and has not committed: it
    holds a lock on tasks that ALTER TABLE and CREATE INDEX CONCURRENTLY wait for."""
    conn = psycopg2.connect(url, connect_timeout=10, application_name="app-holding-a-lock")
    with conn.cursor() as cur:
        cur.execute("INSERT INTO tasks (payload) VALUES ('held')")
    return conn


def test_an_open_transaction_makes_migrate_retry_without_stalling_inserts(
        empty_db_url: str, tmp_path: Path) -> None:
    migrated_to(empty_db_url, 5)
    held = holding_a_lock(empty_db_url)
    enqueuer = Enqueuer(empty_db_url)
    enqueuer.start()
    try:
        m = migrate(empty_db_url, tmp_path)
        retry = m.wait_for(r"^\S+ \S+ .*Migration 006_named_tasks.sql waited 1s for its locks "
                           r"\(the oldest transaction holding a lock is pid (\d+) "
                           r"\(app-holding-a-lock, idle in transaction, open \d+s\) on tasks\);"
                           r" trying again in 1s$")
        assert int(retry.group(1)) == held.get_backend_pid()
        m.wait_for(r"waited 1s for its locks.*(\n.*)*waited 1s for its locks")  # a second try
        assert recorded(empty_db_url) == MIGRATIONS[:5]  # nothing half applied meanwhile
        held.commit()
        assert m.wait(60) == 0, m.output()
    finally:
        held.close()
        longest = enqueuer.finish()
    assert "Migration completed successfully" in m.output()
    assert recorded(empty_db_url) == MIGRATIONS
    assert longest < STALL, f"an insert waited {longest:.2f}s while migrate retried"
    with closing(connect(empty_db_url)) as db:
        assert query(db, "SELECT count(*) FROM tasks WHERE payload = 'held'") == [(1,)]
        assert query(db, "SELECT count(*) FROM tasks WHERE payload = 'live'") == [
            (len(enqueuer.ids),)]


def test_migrate_gives_up_naming_the_transaction_in_the_way(empty_db_url: str) -> None:
    migrated_to(empty_db_url, 5)
    held = holding_a_lock(empty_db_url)
    try:
        started = time.monotonic()
        code, out, err = run_cli(["migrate", "--lock-timeout", "300ms", "--retry-for", "2s"],
                                 env={"DATABASE_URL": empty_db_url})
        assert time.monotonic() - started < 15
        assert code == 1, (out, err)
        assert err.count("\n") == 1 and "Traceback" not in out + err
        assert re.fullmatch(
            r"Error: migration 006_named_tasks.sql could not get its locks in \d+ attempts of "
            r"0.3s over \ds: the oldest transaction holding a lock is pid "
            rf"{held.get_backend_pid()} \(app-holding-a-lock, idle in transaction, open \d+s\)"
            r" on tasks; end that transaction \(or wait for it\) and run migrate again\n", err)
        assert out.count("trying again in 0.3s") >= 2
        assert recorded(empty_db_url) == MIGRATIONS[:5]
    finally:
        held.rollback()
        held.close()
    code, out, err = run_cli(["migrate"], env={"DATABASE_URL": empty_db_url})
    assert code == 0, (out, err)
    assert recorded(empty_db_url) == MIGRATIONS


def test_two_migrates_take_turns_while_one_builds_indexes(empty_db_url: str,
                                                         tmp_path: Path) -> None:
    """The first one's CREATE INDEX CONCURRENTLY waits for an application's open
    transaction; the second, started meanwhile, polls for its turn (a session
    waiting on the advisory lock would deadlock with that build) and applies nothing."""
    migrated_to(empty_db_url, 6)
    held = holding_a_lock(empty_db_url)
    try:
        first = migrate(empty_db_url, tmp_path)
        wait_until(lambda: "tasks_queue_claim_idx" in index_states(empty_db_url), 30,
                   "the first migrate to start building")
        second = migrate(empty_db_url, tmp_path)
        second.wait_for(r"^\S+ \S+ .*Waiting for another migrate to finish\.\.\.$")
        # The second polls meanwhile, and no deadlock is detected: it is still
        # polling (a try of the lock, started) past deadlock_timeout after it said so.
        with closing(connect(empty_db_url)) as db:
            [(past,)] = query(db, "SELECT now() + current_setting('deadlock_timeout')::interval")
            polls = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                     " AND query_start > %s AND pid <> pg_backend_pid()"
                     " AND query ILIKE '%%pg_try_advisory_lock%%'")
            wait_until(lambda: query(db, polls, (past,))[0][0], 30,
                       "the second migrate to poll past deadlock_timeout", [first, second],
                       fail_on_exit=True)
        assert first.proc.poll() is None and second.proc.poll() is None
        held.commit()
        assert first.wait(60) == 0, first.output()
        assert second.wait(60) == 0, second.output()
    finally:
        held.close()
    outputs = first.output() + second.output()
    assert "Traceback" not in outputs and "deadlock" not in outputs
    assert re.findall(r"Applied migration (\S+)", first.output()) == MIGRATIONS[6:]
    assert "Applied migration" not in second.output()
    assert second.output().count("Waiting for another migrate") == 1
    assert recorded(empty_db_url) == MIGRATIONS
    assert index_states(empty_db_url) == dict.fromkeys(CLAIM_INDEXES, True)


def test_an_interrupted_index_build_is_dropped_and_rebuilt(empty_db_url: str,
                                                          tmp_path: Path) -> None:
    migrated_to(empty_db_url, 6, rows=1000)
    held = holding_a_lock(empty_db_url)  # the build waits for it, its index still INVALID
    try:
        m = migrate(empty_db_url, tmp_path)
        wait_until(lambda: index_states(empty_db_url) == {"tasks_queue_claim_idx": False},
                   30, "the build of tasks_queue_claim_idx to start")
        m.signal(signal.SIGINT)
        assert m.wait(30) == 130, m.output()
        assert m.output().endswith("Error: interrupted (an index left half built is rebuilt "
                                   "by the next migrate)\n")
        with closing(connect(empty_db_url)) as db:  # the build was cancelled, not left running
            wait_until(lambda: not query(db, "SELECT pid FROM pg_stat_activity WHERE "
                                             "application_name = 'taskworker migrate'"),
                       10, "the migrate session to end")
    finally:
        held.commit()
        held.close()
    assert index_states(empty_db_url) == {"tasks_queue_claim_idx": False}
    assert recorded(empty_db_url) == MIGRATIONS[:6]

    code, out, err = run_cli(["migrate"], env={"DATABASE_URL": empty_db_url})
    assert code == 0, (out, err)
    assert re.search(r"^\S+ \S+ .*Dropping invalid index tasks_queue_claim_idx \(left by an "
                     r"interrupted build\) to build it again$", out, re.MULTILINE), out
    assert out.count("Dropping invalid index") == 1
    assert recorded(empty_db_url) == MIGRATIONS
    assert index_states(empty_db_url) == dict.fromkeys(CLAIM_INDEXES, True)
    with closing(connect(empty_db_url)) as db:  # the rebuilt index is used and complete
        query(db, "SET enable_seqscan = off")  # (a claim's conditions: migration 019)
        plan = "\n".join(r[0] for r in query(db, "EXPLAIN SELECT id FROM tasks WHERE "
                                                 "status = 'pending' AND queue = 'default' "
                                                 "AND format <= 2"))
        assert "tasks_queue_claim_idx" in plan or "tasks_name_claim_idx" in plan, plan
        assert query(db, "SELECT count(*) FROM tasks WHERE status = 'pending' "
                         "AND queue = 'default'") == [(1000 // 4 + 1,)]  # and 'held'


def test_enqueueing_goes_on_while_migrate_upgrades_a_big_table(empty_db_url: str,
                                                               tmp_path: Path) -> None:
    """From 005 (before part 7) to the end with BIG rows, an application enqueueing
    all along; then the new serve runs what was enqueued meanwhile."""
    migrated_to(empty_db_url, 5, rows=BIG)
    enqueuer = Enqueuer(empty_db_url)
    enqueuer.start()
    try:
        enqueuer.wait_for_inserts(5)  # enqueueing before migrate starts
        started = time.monotonic()
        code, out, err = run_cli(["migrate"], env={"DATABASE_URL": empty_db_url})
        took = time.monotonic() - started
        enqueuer.wait_for_inserts(5)  # and after it ends
    finally:
        longest = enqueuer.finish()
    assert code == 0, (out, err)
    assert re.findall(r"Applied migration (\S+)", out) == MIGRATIONS[5:]
    assert longest < STALL, f"an insert waited {longest:.2f}s during a {took:.1f}s migrate"
    assert index_states(empty_db_url) == dict.fromkeys(CLAIM_INDEXES, True)
    with closing(connect(empty_db_url)) as db:
        assert query(db, "SELECT count(*) FROM tasks WHERE payload = 'live'") == [
            (len(enqueuer.ids),)]


def test_serving_goes_on_while_migrate_builds_indexes_on_a_big_table(
        db_url: str, db: Any, tmp_path: Path, serve: ServeFactory) -> None:
    """A release whose new migration builds indexes CONCURRENTLY (here 007 again,
    undone) applied under a running serve and an application enqueueing: no
    session of theirs ever waits for a lock of migrate's (sampled all along:
    a plain CREATE INDEX would block every claim and completion while it builds),
    enqueueing goes on, and every task enqueued meanwhile is done."""
    query(db, "INSERT INTO tasks (payload, status) SELECT 'old ' || n, 'done'"
              " FROM generate_series(1, %s) AS n", (BIG,))
    p = serve(db_url, env={**FAST, "WORKER_COUNT": "4"})  # (it refuses an unmigrated database)
    enqueuer = Enqueuer(db_url)
    enqueuer.start()
    watch = BlockedByMigrate(db_url)
    try:
        wait_until(lambda: query(db, "SELECT count(*) FROM tasks WHERE status = 'done'"
                                     " AND payload = 'live'")[0][0] > 0, 30,
                   lambda: f"serve to run the first task:\n{p.output()}")
        for index in CLAIM_INDEXES:
            query(db, f"DROP INDEX {index}")
        query(db, "DELETE FROM schema_migrations WHERE version = 7")
        watch.start()
        code, out, err = run_cli(["migrate"], env={"DATABASE_URL": db_url})
        enqueuer.wait_for_inserts(5)  # enqueueing goes on after it ends
    finally:
        blocked = watch.finish() if watch.ident is not None else []
        enqueuer.finish()
    assert code == 0, (out, err)
    assert re.findall(r"Applied migration (\S+)", out) == ["007_claim_indexes.sql"]
    assert index_states(db_url) == dict.fromkeys(CLAIM_INDEXES, True)
    assert not blocked, f"sessions waited for migrate's locks: {sorted(set(blocked))}"
    wait_until(lambda: query(db, "SELECT count(*) FROM tasks WHERE status <> 'done'")
               == [(0,)], 30, lambda: f"every task done:\n{p.output()}")
    assert p.proc.poll() is None, p.output()


def test_migrate_to_a_version_that_does_not_exist(empty_db_url: str) -> None:
    code, out, err = run_cli(["migrate", "--to", "99"], env={"DATABASE_URL": empty_db_url})
    assert code == 1, (out, err)
    numbers = ", ".join(str(int(name.split("_")[0])) for name in MIGRATIONS)
    assert err == f"Error: no migration numbered 99 (there are {numbers})\n"
    with closing(connect(empty_db_url)) as db:
        assert query(db, "SELECT to_regclass('schema_migrations')") == [(None,)]


@pytest.mark.skipif(not available(), reason="pgbouncer is not installed")
def test_migrate_refuses_to_go_through_a_pooler(empty_db_url: str) -> None:
    with bouncer(empty_db_url) as via:
        code, out, err = run_cli(["migrate"], env={"DATABASE_URL": via(empty_db_url)})
    assert code == 1, (out, err)
    assert err == ("Error: migrate must connect to PostgreSQL directly, not through a "
                   "connection pooler (it keeps a session lock and builds indexes outside "
                   "transactions): point DATABASE_URL at the server itself\n")
    with closing(connect(empty_db_url)) as db:
        assert query(db, "SELECT to_regclass('schema_migrations')") == [(None,)]


def test_migrate_bad_lock_options_are_one_line(empty_db_url: str) -> None:
    for args, message in ((["--lock-timeout", "0"], "invalid --lock-timeout='0': must be "
                                                      "more than 0"),
                          (["--retry-for", "soon"], "invalid --retry-for='soon': expected a "
                                                    "duration such as 5, 5s, 1.5 or 500ms")):
        code, out, err = run_cli(["migrate", *args], env={"DATABASE_URL": empty_db_url})
        assert (code, err) == (2, f"Error: {message}\n"), out
    with closing(connect(empty_db_url)) as db:
        assert query(db, "SELECT to_regclass('schema_migrations')") == [(None,)]
