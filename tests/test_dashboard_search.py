"""The dashboard's text search through its side index (taskworker_search, filled
by the dashboard's indexer, migration 008), as a user sees it on the tasks page:
tasks found as they finish and once indexed, never through a stale side row,
deleted ones gone, a late commit not skipped, a bulk completion fully indexed,
and the page saying when the index is catching up. And the reason for it all:
no index on tasks uses GIN."""
from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg2
from dashboard_client import Client, running_dashboard
from invariants import query, wait_until

TOP = 1_000_000  # a task with this id puts the ones below out of the first window
WAIT = 30.0


def ids_on(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr data-id="(\d+)">', page)]


def found(c: Client, words: str) -> list[int]:
    page = c.get("/tasks?q=" + words.replace(" ", "+"))
    assert page.status == 200, page
    return ids_on(page.body)


def finished(db: Any, payload: str, status: str = "done", **columns: Any) -> int:
    names = ["payload", "status", *columns]
    return query(db, f"INSERT INTO tasks ({', '.join(names)}) VALUES "
                     f"({', '.join(['%s'] * len(names))}) RETURNING id",
                 (payload, status, *columns.values()))[0][0]


def top(db: Any) -> None:
    """The newest task, far above the others: searching them goes below the
    first window of ids (read directly), through the side index."""
    query(db, "INSERT INTO tasks (id, payload, status) VALUES (%s, 'the newest', 'done')",
          (TOP,))


def indexed(db: Any, task_id: int) -> bool:
    """Has the indexer passed the task as it is now ((updated_at, id) order)?"""
    return query(db, "SELECT (p.indexed_at, p.indexed_id) >= (t.updated_at, t.id) "
                     "FROM taskworker_search_progress p, tasks t WHERE t.id = %s",
                 (task_id,))[0][0]


def words_of(db: Any, task_id: int) -> str | None:
    rows = query(db, "SELECT words FROM taskworker_search WHERE task_id = %s", (task_id,))
    return rows[0][0] if rows else None


def passed_by_twice(db: Any, task_id: int) -> None:
    """Wait for a pass of the indexer that began over a second after the task
    finished (the watermark's margin) and for the pass after it: without the
    transaction holding it back, the indexer would have gone past the task."""
    def progress() -> Any:
        return query(db, "SELECT p.passed_at, p.passed_at > t.updated_at + interval '1.5 s' "
                         "FROM taskworker_search_progress p, tasks t WHERE t.id = %s",
                     (task_id,))[0]
    first = wait_until(lambda: (row := progress())[1] and row[0], WAIT, "a later pass")
    wait_until(lambda: progress()[0] > first, WAIT, "the pass after it")


def test_no_index_on_tasks_uses_gin(db: Any) -> None:
    # A GIN index on tasks makes every completion insert the row's trigrams inside
    # the completer's UPDATE (measured: -68% no-op throughput on 400-character
    # payloads); the dashboard's search index lives in taskworker_search instead.
    rows = query(db, "SELECT indexname, indexdef FROM pg_indexes "
                     "WHERE schemaname = current_schema() AND tablename = 'tasks'")
    assert rows and not [name for name, ddl in rows if "USING gin" in ddl], rows
    assert query(db, "SELECT indexdef FROM pg_indexes WHERE indexname = "
                     "'taskworker_search_range_words_idx'")[0][0].find("USING gin") > 0


def test_the_dashboards_statements_run_without_jit_or_parallel_workers(db_url: str) -> None:
    """The side tables are seldom analyzed (autovacuum may be off or behind), and
    their estimates priced a 1 ms statement past jit_above_cost: compiling it took
    135 ms, on every request; and past the parallel thresholds (two workers started
    per search). A dashboard connection runs each statement with JIT and parallel
    workers off, whatever the server's setting (JIT here forced on for every
    statement)."""
    script = (
        "import sys\n"
        "from taskworker.settings import load\n"
        "from taskworker.dashboard.pool import Pool\n"
        "pool = Pool(load({'DATABASE_URL': sys.argv[1]}))\n"
        "with pool.connection() as db:\n"
        "    print(db.query('SHOW jit')[0][0], db.query('SHOW jit_above_cost')[0][0],\n"
        "          db.query('SHOW max_parallel_workers_per_gather')[0][0])\n")
    with closing(psycopg2.connect(db_url)) as admin:
        admin.autocommit = True
        name = admin.get_dsn_parameters()["dbname"]
        query(admin, f"ALTER DATABASE {name} SET jit_above_cost = 0")
    out = subprocess.run([sys.executable, "-c", script, db_url], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["off", "0", "0"], out.stdout


def test_a_task_is_found_as_it_finishes_and_once_indexed(db_url: str, db: Any,
                                                          tmp_path: Path) -> None:
    [task_id] = query(db, "INSERT INTO tasks (payload) VALUES ('zebra crossing 17') "
                          "RETURNING id")[0]
    [other] = query(db, "INSERT INTO tasks (payload, status) VALUES ('zebra gone', 'done') "
                        "RETURNING id")[0]
    top(db)
    with running_dashboard(db_url, tmp_path) as d:
        c = d.client()
        wait_until(lambda: indexed(db, other), WAIT, "the indexer's first passes")
        assert found(c, "ZEBRA crossing") == [task_id]  # pending: its partial index
        query(db, "UPDATE tasks SET status = 'done', result = 'ok', updated_at = now() "
                  "WHERE id = %s", (task_id,))
        assert found(c, "zebra crossing") == [task_id]  # finished, maybe not indexed yet
        wait_until(lambda: indexed(db, task_id), WAIT, "the indexer to reach the task")
        assert words_of(db, task_id) == "zebra crossing 17 "
        assert found(c, "zebra crossing") == [task_id]
        assert found(c, "zebra") == [other, task_id]

        # Below the indexer's position the side table alone answers, and every
        # row it gives is rechecked against the task as it is now.
        query(db, "UPDATE taskworker_search SET words = 'tampered' WHERE task_id = %s",
              (task_id,))
        assert found(c, "tampered") == []
        assert found(c, "zebra crossing") == []

        # Deleted through the dashboard: its side row goes with it.
        assert c.confirm(f"/actions/delete?id={other}").status == 303
        assert words_of(db, other) is None and found(c, "zebra gone") == []
        # Deleted otherwise (`taskworker` commands, SQL): never shown either.
        query(db, "UPDATE taskworker_search SET words = 'zebra crossing 17' "
                  "WHERE task_id = %s", (task_id,))
        assert found(c, "zebra crossing") == [task_id]
        query(db, "DELETE FROM tasks WHERE id = %s", (task_id,))
        assert found(c, "zebra crossing") == []


def test_a_retried_task_is_found_by_its_new_error_only(db_url: str, db: Any,
                                                       tmp_path: Path) -> None:
    task_id = finished(db, "import batch 9", "error", error="KeyError: alphaville")
    top(db)
    with running_dashboard(db_url, tmp_path) as d:
        c = d.client()
        wait_until(lambda: indexed(db, task_id), WAIT, "the indexer to reach the task")
        assert found(c, "alphaville") == [task_id]
        c.confirm(f"/actions/retry?id={task_id}")
        assert query(db, "SELECT status FROM tasks WHERE id = %s", (task_id,)) == [("pending",)]
        assert found(c, "alphaville") == [task_id]  # pending, its last error kept
        # It runs and fails again: its side row still holds the old error until the
        # indexer passes, and is rechecked away meanwhile.
        query(db, "UPDATE tasks SET status = 'error', error = 'TimeoutError: betatown', "
                  "attempts = attempts + 1, updated_at = now() WHERE id = %s", (task_id,))
        assert found(c, "betatown") == [task_id]
        assert found(c, "alphaville") == []
        wait_until(lambda: indexed(db, task_id), WAIT, "the indexer to reach it again")
        assert words_of(db, task_id) == "import batch 9 TimeoutError: betatown"
        assert found(c, "betatown") == [task_id] and found(c, "alphaville") == []


def test_a_bulk_completion_of_one_statement_is_indexed_whole(db_url: str, db: Any,
                                                             tmp_path: Path) -> None:
    query(db, "INSERT INTO tasks (payload, status) SELECT 'bulk ' || n || ' mark', "
              "'in_progress' FROM generate_series(1, 12000) AS n")
    top(db)
    with running_dashboard(db_url, tmp_path) as d:
        c = d.client()
        # One statement: 12,000 rows with the same updated_at (more than a batch).
        query(db, "UPDATE tasks SET status = 'done' WHERE status = 'in_progress'")
        [(last,)] = query(db, "SELECT max(id) FROM tasks WHERE id < %s", (TOP,))
        wait_until(lambda: indexed(db, last), WAIT, "the indexer to reach the last one")
        assert query(db, "SELECT count(*), count(DISTINCT finished_at) FROM taskworker_search "
                         "WHERE words LIKE 'bulk %% mark %%'") == [(12000, 1)]
        assert found(c, "bulk 7777 mark") == [r[0] for r in query(
            db, "SELECT id FROM tasks WHERE payload = 'bulk 7777 mark'")]
        everything = c.get("/tasks?q=mark")
        assert len(ids_on(everything.body)) == 50 and 'id="next-page"' in everything.body


def test_a_late_commit_is_not_skipped_and_a_backlog_is_announced(
        db_url: str, db: Any, tmp_path: Path) -> None:
    [late] = query(db, "INSERT INTO tasks (payload, status) VALUES ('late lemur', "
                       "'in_progress') RETURNING id")[0]
    top(db)
    with running_dashboard(db_url, tmp_path) as d, \
            closing(psycopg2.connect(db_url)) as slow:
        c = d.client()
        # A transaction finishes a task (updated_at: the transaction's start) and
        # commits only after 10,001 tasks finished later, in other transactions.
        with slow.cursor() as cur:
            cur.execute("UPDATE tasks SET status = 'done', updated_at = now() "
                        "WHERE id = %s", (late,))
        query(db, "INSERT INTO tasks (payload, status) SELECT 'early ' || n, 'done' "
                  "FROM generate_series(1, 10001) AS n")
        [(first, newest)] = query(db, "SELECT min(id), max(id) FROM tasks "
                                      "WHERE payload LIKE 'early %%'")
        passed_by_twice(db, newest)
        assert not indexed(db, first)  # the open transaction holds the indexer back
        page = wait_until(lambda: (p := c.get("/tasks?q=early+77")).status == 200
                          and 'id="search-catching-up"' in p.body and p, WAIT,
                          "the page to say the index is catching up")
        assert "more than 10,000 finished since are searched directly" in page.text
        assert len(ids_on(page.body)) == 50  # complete results, found directly
        slow.commit()
        wait_until(lambda: indexed(db, newest), WAIT, "the indexer to go on")
        assert indexed(db, late) and words_of(db, late) == "late lemur "
        assert found(c, "late lemur") == [late]
        assert 'id="search-catching-up"' not in c.get("/tasks?q=early+77").body


def test_slow_text_searches_leave_the_other_pages_answering(db_url: str, db: Any,
                                                            tmp_path: Path) -> None:
    """On months of history a rare word can take seconds to find. Searches take at
    most two of the dashboard's connections, so the other pages still answer at
    once while eight searches wait; the searches all answer once they can go on.
    (Here they wait on a lock the test holds on the side table.) A common word,
    whose page the newest ids fill, needs no turn: it answers meanwhile too."""
    finished(db, "an old task")
    top(db)
    query(db, "INSERT INTO tasks (id, payload, status) SELECT i, 'a common word', 'done' "
              "FROM generate_series(%s, %s) i", (TOP - 60, TOP - 1))
    with running_dashboard(db_url, tmp_path) as d:
        c = d.client()
        assert c.get("/tasks?q=nothing+like+it").status == 200  # (connections opened)
        holder = psycopg2.connect(db_url)
        replies: list[int] = []
        try:
            with holder.cursor() as cur:
                cur.execute("LOCK TABLE taskworker_search IN ACCESS EXCLUSIVE MODE")
            searches = [threading.Thread(target=lambda: replies.append(
                d.client().get("/tasks?q=nothing+like+it").status)) for _ in range(8)]
            for t in searches:
                t.start()

            def searching() -> int:
                return query(db, "SELECT count(*) FROM pg_stat_activity WHERE application_name"
                                 " = 'taskworker dashboard' AND wait_event_type = 'Lock' "
                                 "AND query LIKE '%%taskworker_search s%%'")[0][0]
            wait_until(lambda: searching() == 2, WAIT, "two searches waiting on the lock")
            quick = http.client.HTTPConnection("127.0.0.1", d.port, timeout=5)
            for path in ("/tasks", "/tasks?status=done", "/", "/tasks?q=common"):
                quick.request("GET", path)
                reply = quick.getresponse()
                body = reply.read().decode()
                assert reply.status == 200, path  # while every search still waits
            assert body.count("a common word") >= 50  # (a page of the newest matches)
            quick.close()
            assert searching() == 2 and replies == []
        finally:
            holder.close()  # (the lock goes with it)
        for t in searches:
            t.join(30)
    assert replies == [200] * 8


RANGE = 2**18  # the ids of one range of the search index (migration 021)


def test_a_search_reads_the_id_ranges_newest_first_and_pages_through_them(
        db_url: str, db: Any, tmp_path: Path) -> None:
    """Finished tasks are searched a range of ids at a time, newest first: the
    pages list every match once, newest first, across range boundaries, a range
    without a match passed over, and a filter applied within each range."""
    needles = [*range(3 * RANGE + 10, 3 * RANGE + 80),  # 70: more than a page, in one range
               3 * RANGE - 1, 2 * RANGE,  # the last and first ids of range 2
               RANGE - 1, 5]  # range 0 (range 1 has none)
    others = [2 * RANGE + 50_000, 7]  # matching, in another queue
    hay = [3 * RANGE + 5, 3 * RANGE - 2, RANGE + 1, 6]
    query(db, "INSERT INTO tasks (id, payload, status, queue) "
              "SELECT i, 'a needle here', 'done', 'default' FROM unnest(%s::bigint[]) i "
              "UNION ALL SELECT i, 'needle too', 'done', 'other' FROM unnest(%s::bigint[]) i "
              "UNION ALL SELECT i, 'only hay', 'done', 'default' FROM unnest(%s::bigint[]) i",
          (needles, others, hay))
    top(db)
    with running_dashboard(db_url, tmp_path) as d:
        c = d.client()
        wait_until(lambda: indexed(db, TOP), WAIT, "the indexer to reach the newest")
        listed: list[int] = []
        path: str | None = "/tasks?q=needle&queue=default"
        while path is not None:
            page = c.get(path)
            assert page.status == 200, page
            listed += ids_on(page.body)
            more = re.search(r'href="(/tasks\?[^"]*)" id="next-page"', page.body)
            path = more.group(1).replace("&amp;", "&") if more else None
        assert listed == sorted(needles, reverse=True)
        assert found(c, "needle&queue=other") == sorted(others, reverse=True)
        assert found(c, "hay") == sorted(hay, reverse=True)


def test_a_search_stops_at_the_range_that_fills_its_page(db: Any) -> None:
    """With the plan a long history gets (the side table's trigram index; on a
    table this small the planner would read it whole per range), a page filled in
    the newest range reads that range only, and a search that finds nothing reads
    each range once."""
    from plans import walk

    from taskworker.store import sql
    from taskworker.store.dashboard import Filter
    query(db, "INSERT INTO taskworker_search (task_id, words, finished_at) "
              "SELECT i, 'word ' || i || CASE WHEN i %% 3 = 0 THEN ' common' ELSE '' END, "
              "now() FROM generate_series(1, 4 * %s, 97) i", (RANGE,))
    query(db, "INSERT INTO tasks (id, payload, status) SELECT task_id, words, 'done' "
              "FROM taskworker_search")
    query(db, "UPDATE taskworker_search_progress SET indexed_at = 'infinity'")
    query(db, "ANALYZE taskworker_search")

    def range_scans(text: str) -> tuple[int, int]:
        """(rows found, index scans of the range index) for a page of 50."""
        params = {**Filter(text=text).params(), "before": 2**63 - 1, "limit": 51,
                  "indexed_at": "infinity", "indexed_id": 0}
        with db.cursor() as cur:
            cur.execute("SET enable_seqscan = off; SET enable_indexscan = off")
            cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql.dash_tasks_text_finished,
                        params)
            plan = cur.fetchone()[0][0]["Plan"]
            cur.execute("RESET enable_seqscan; RESET enable_indexscan")
        scans = [n for n, _ in walk(plan)
                 if n.get("Index Name") == "taskworker_search_range_words_idx"]
        assert scans and all(n["Node Type"] == "Bitmap Index Scan" for n in scans), \
            json.dumps(plan, indent=1)
        return plan["Actual Rows"], sum(n["Actual Loops"] for n in scans)

    assert range_scans("common") == (51, 1)  # (about 900 in the newest range)
    assert range_scans("absent") == (0, 4)
