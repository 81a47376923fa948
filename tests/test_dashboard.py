"""`taskworker dashboard` over HTTP, against a real database: every page, the
task list's filters and keyset pages, escaping, headers, authentication, and a
database that goes away. (Actions: test_dashboard_actions.py.)"""
from __future__ import annotations

import re
from datetime import UTC
from pathlib import Path
from typing import Any

from dashboard_client import running_dashboard
from invariants import query, wait_until
from proc import run_cli
from tcpproxy import Proxy

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
XSS = {"payload": "<script>alert('payload')</script>",
       "error": '<img src=x onerror="alert(1)">',
       "result": "javascript:alert(2)"}


def add(db: Any, n: int, **columns: Any) -> list[int]:
    """Insert `n` tasks with `columns` set (payload 'task <i>' unless given)."""
    names = [*(["payload"] if "payload" not in columns else []), *columns]
    values = [*(["'task ' || i"] if "payload" not in columns else []),
              *(["%s"] * len(columns))]
    rows = query(db, f"INSERT INTO tasks ({', '.join(names)}) SELECT {', '.join(values)} "
                     "FROM generate_series(1, %s) AS i ORDER BY i RETURNING id",
                 (*columns.values(), n))
    return [r[0] for r in rows]


def ids_on(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr data-id="(\d+)">', page)]


def test_every_page_answers_with_its_content_and_headers(db_url: str, db: Any,
                                                         tmp_path: Path) -> None:
    add(db, 3)
    add(db, 2, status="done", queue="emails", task="send_email", result="sent")
    [failed] = add(db, 1, status="error", error="ValueError: boom")
    query(db, "INSERT INTO taskworker_ticks (task, tick, task_id) VALUES "
              "('nightly', now() - interval '1 hour', %s)", (failed,))
    with running_dashboard(db_url, tmp_path) as d:
        c = d.client()
        home = c.get("/")
        assert home.status == 200, home
        assert 'id="live"' in home.body and 'href="/static/style.css"' in home.body
        live = wait_until(lambda: (r := c.get("/overview/live")).status == 200
                          and "counted" in r.text and "ago" in r.text and r, 20,
                          "the first sample")
        assert re.search(r'id="count-pending"[^>]*><span class="n">3<', live.body), live.body
        assert re.search(r'id="count-done"[^>]*><span class="n">2<', live.body)
        assert re.search(r'id="count-error"[^>]*><span class="n">1<', live.body)
        assert 'id="chart"' in live.body and "<svg" in live.body
        assert "No serve process is running." in live.text
        assert 'id="by-queue"' in live.body and ">emails<" in live.body
        assert ">send_email<" in live.body
        tasks = c.get("/tasks")
        assert tasks.status == 200 and len(ids_on(tasks.body)) == 6
        assert f'href="/tasks/{failed}"' in tasks.body
        one = c.get(f"/tasks/{failed}")
        assert one.status == 200 and "ValueError: boom" in one.text
        for column in ("id", "status", "queue", "attempts", "rescues", "created_at",
                       "updated_at", "run_at", "locked_by", "unique_key", "priority"):
            assert f'id="field-{column}"' in one.body, column
        schedules = c.get("/schedules")
        assert schedules.status == 200 and "nightly" in schedules.text
        assert f'href="/tasks/{failed}"' in schedules.body
        for path in ("/static/style.css", "/static/dashboard.js"):
            assert c.get(path).status == 200
        assert c.get("/tasks/999999").status == 404
        assert c.get("/nowhere").status == 404
        for reply in (home, live, tasks, one, schedules, c.get("/static/dashboard.js")):
            assert reply.headers["content-security-policy"] == CSP
            assert reply.headers["x-content-type-options"] == "nosniff"
            assert reply.headers["x-frame-options"] == "DENY"
            assert reply.headers["referrer-policy"] == "same-origin"


def test_filters_and_keyset_pages(db_url: str, db: Any, tmp_path: Path) -> None:
    ids = add(db, 120)
    mail = add(db, 7, queue="emails", task="send_email", status="error",
               error="SMTP refused user42@example.com")
    with running_dashboard(db_url, tmp_path) as d:
        c = d.client()
        first = c.get("/tasks")
        newest = sorted(ids + mail, reverse=True)
        assert ids_on(first.body) == newest[:50]
        after = re.search(r'href="/tasks\?&amp;before=(\d+)" id="next-page"', first.body)
        assert after, first.body
        second = c.get(f"/tasks?before={after.group(1)}")
        assert ids_on(second.body) == newest[50:100]
        third_link = re.search(r'href="(/tasks\?[^"]*)" id="next-page"', second.body)
        assert third_link
        third = c.get(third_link.group(1).replace("&amp;", "&"))
        assert ids_on(third.body) == newest[100:] and 'id="end-of-list"' in third.body

        assert ids_on(c.get("/tasks?status=error").body) == sorted(mail, reverse=True)
        assert ids_on(c.get("/tasks?queue=emails").body) == sorted(mail, reverse=True)
        assert ids_on(c.get("/tasks?task=send_email").body) == sorted(mail, reverse=True)
        assert ids_on(c.get("/tasks?task=%28no+name%29&status=pending").body) == newest[7:57]
        assert ids_on(c.get("/tasks?q=USER42%40example").body) == sorted(mail, reverse=True)
        assert ids_on(c.get("/tasks?q=task+11&status=pending").body) == [
            i for i in sorted(ids, reverse=True) if f"task {ids.index(i) + 1}".startswith(
                "task 11")]
        assert ids_on(c.get(f"/tasks?id={mail[2]}").body) == [mail[2]]
        assert ids_on(c.get("/tasks?q=no+such+words").body) == []
        assert "at least 3 characters" in c.get("/tasks?q=ab").text
        assert "unknown status" in c.get("/tasks?status=nope").text
        # A text search of finished tasks goes on below its first window of ids:
        # through the side index once the indexer has passed them (before, directly).
        [old] = query(db, "INSERT INTO tasks (id, payload, status) VALUES "
                          "(1000000, 'needle in the haystack', 'done') RETURNING id")[0]
        query(db, "INSERT INTO tasks (id, payload, status) VALUES "
                  "(2000000, 'the newest', 'done')")
        assert ids_on(c.get("/tasks?q=NEEDLE").body) == [old]
        wait_until(lambda: query(db, "SELECT count(*) FROM taskworker_search WHERE task_id "
                                     "IN (1000000, 2000000)") == [(2,)], 30, "the indexer")
        assert ids_on(c.get("/tasks?q=NEEDLE").body) == [old]


def test_a_filter_no_index_serves_reads_a_window_and_offers_to_go_on(
        db_url: str, db: Any, tmp_path: Path) -> None:
    query(db, "INSERT INTO tasks (id, payload, status, queue) VALUES "
              "(30000, 'old', 'done', 'rare'), (100010, 'new', 'done', 'default')")
    with running_dashboard(db_url, tmp_path) as d:
        c = d.client()
        first = c.get("/tasks?queue=rare")
        assert ids_on(first.body) == [] and 'id="searched-to"' in first.body, first.body
        link = re.search(r'href="(/tasks\?[^"]*)" id="next-page"', first.body)
        assert link and "Continue searching below id" in first.text
        second = c.get(link.group(1).replace("&amp;", "&"))
        assert ids_on(second.body) == [30000] and 'id="end-of-list"' in second.body


def test_everything_from_the_database_is_escaped(db_url: str, db: Any,
                                                 tmp_path: Path) -> None:
    [task_id] = add(db, 1, status="error", queue='q"><script>alert(3)</script>',
                    task="<b>bold</b>", **XSS)
    with running_dashboard(db_url, tmp_path) as d:
        c = d.client()
        wait_until(lambda: "counted" in c.get("/overview/live").text, 20, "a sample")
        for path in ("/", "/overview/live", "/tasks", f"/tasks/{task_id}",
                     "/tasks?q=script", f"/actions/retry?id={task_id}"):
            page = c.get(path)
            assert page.status == 200, (path, page)
            assert "<script>alert" not in page.body and "<img src=x" not in page.body, path
            assert "<b>bold" not in page.body, path
            assert not re.search(r"""(href|src)=["']?javascript:""", page.body), path
            assert not re.search(r"<script(?! src=\"/static/dashboard.js\" defer>)",
                                 page.body), path
        shown = c.get(f"/tasks/{task_id}").body
        assert "&lt;script&gt;alert(&#39;payload&#39;)&lt;/script&gt;" in shown
        assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in shown
        assert "javascript:alert(2)" in shown  # as text, in a <pre>
        raw = c.get(f"/tasks/{task_id}/raw/payload")
        assert raw.headers["content-type"] == "text/plain; charset=utf-8"
        assert raw.headers["x-content-type-options"] == "nosniff"


def test_a_long_payload_is_folded(db_url: str, db: Any, tmp_path: Path) -> None:
    [task_id] = add(db, 1, payload="x" * 150_000)
    with running_dashboard(db_url, tmp_path) as d:
        page = d.client().get(f"/tasks/{task_id}").body
        assert '<details id="field-payload">' in page
        assert "150,000 characters" in page
        assert f'href="/tasks/{task_id}/raw/payload"' in page
        assert len(d.client().get(f"/tasks/{task_id}/raw/payload").body) == 150_000


def test_it_refuses_to_listen_off_loopback_without_authentication(db_url: str) -> None:
    code, out, err = run_cli(["dashboard", "--host", "0.0.0.0", "--port", "1"],
                             env={"DATABASE_URL": db_url})
    assert code == 2, (out, err)
    assert err == ("Error: the dashboard would listen on 0.0.0.0 without authentication: "
                   "set DASHBOARD_PASSWORD (HTTP basic auth) or DASHBOARD_TOKEN, or listen "
                   "on 127.0.0.1\n")
    code, out, err = run_cli(["serve", "--dashboard"], env={
        "DATABASE_URL": db_url, "DASHBOARD_HOST": "192.0.2.1"})
    assert code == 2 and "DASHBOARD_PASSWORD" in err and err.count("\n") == 1, (out, err)


def test_basic_auth_and_token(db_url: str, tmp_path: Path) -> None:
    env = {"DASHBOARD_PASSWORD": "pa55word", "DASHBOARD_TOKEN": "t0ken-xyz",
           "DASHBOARD_HOST": "0.0.0.0"}
    with running_dashboard(db_url, tmp_path, env) as d:
        anonymous = d.client().get("/")
        assert anonymous.status == 401
        assert anonymous.headers["www-authenticate"].startswith('Basic realm=')
        assert "pa55word" not in anonymous.body
        assert d.client().get("/static/style.css").status == 401
        assert d.client(auth=("admin", "wrong")).get("/").status == 401
        assert d.client(auth=("root", "pa55word")).get("/").status == 401
        assert d.client(auth=("admin", "pa55word")).get("/").status == 200
        assert d.client(token="t0ken-xyz").get("/tasks").status == 200
        assert d.client(token="t0ken-xy").get("/tasks").status == 401
        browser = d.client()
        login = browser.get("/tasks?token=t0ken-xyz&status=done")
        assert login.status == 303 and login.headers["location"] == "/tasks?status=done"
        assert "t0ken-xyz" not in browser.cookies.get("tw_session", "t0ken-xyz")
        assert browser.get("/tasks?status=done").status == 200
        assert "pa55word" not in d.output() and "t0ken-xyz" not in d.output()


def test_no_password_of_database_url_on_any_page(db_url: str, db: Any,
                                                 tmp_path: Path) -> None:
    secret_url = db_url.replace("postgres@", "postgres:Sup3rSecretPw@", 1)
    assert secret_url != db_url
    [task_id] = add(db, 1, status="error", error="boom")
    with running_dashboard(secret_url, tmp_path) as d:
        c = d.client()
        pages = [c.get(p) for p in ("/", "/overview/live", "/tasks", f"/tasks/{task_id}",
                                    "/schedules", f"/actions/retry?id={task_id}")]
        assert all(p.status == 200 for p in pages)
        assert not [p for p in pages if "Sup3rSecretPw" in p.body]
        assert "Sup3rSecretPw" not in d.output()


def test_a_database_that_goes_away_gives_503_then_recovers(db_url: str,
                                                           tmp_path: Path) -> None:
    """Behind a proxy that stops listening (and the dashboard's connections ended,
    as a server restart ends them): 503 pages naming nothing of the connection,
    one log line for the outage; the proxy back on its port: pages again, and one
    line saying so."""
    m = re.match(r"postgresql://([^@]+)@([^:/]+):(\d+)/(.+)", db_url)
    assert m, db_url
    target = (m.group(2), int(m.group(3)))
    proxy = Proxy(*target)
    proxied = f"postgresql://{m.group(1)}:Sup3rSecretPw@127.0.0.1:{proxy.port}/{m.group(4)}"
    with running_dashboard(proxied, tmp_path, {"CONNECT_TIMEOUT": "2"}) as d:
        c = d.client()
        wait_until(lambda: "counted" in c.get("/overview/live").text, 20, "a sample")
        proxy.close()
        _end_dashboard_sessions(db_url)
        wait_until(lambda: proxy.forwarding == 0, 10, "the proxy to pass the goodbyes on")
        for path in ("/", "/tasks", "/overview/live", "/tasks", "/schedules"):
            down = c.get(path)
            assert down.status == 503, (path, down)
            assert "cannot connect to the database" in down.text, (path, down.text)
            assert "Sup3rSecretPw" not in down.body and str(proxy.port) not in down.body
        proxy = Proxy(*target, listen_port=proxy.port)
        try:
            for path in ("/", "/tasks"):
                assert wait_until(lambda: c.get(path).status == 200,  # noqa: B023
                                  20, "the pages to recover")
        finally:
            proxy.close()
        out = d.output()
    assert "Traceback" not in out and "Sup3rSecretPw" not in out
    assert len(re.findall(r"^\S+ \S+ Dashboard: cannot connect", out, re.M)) == 1, out
    assert out.count("Dashboard: the database answers again") == 1, out


def _end_dashboard_sessions(db_url: str) -> None:
    """End the dashboard's idle connections to this test's database, as a server
    restart would (and wait until they are gone: their goodbye is then on its way
    to the dashboard). Only this database's: other tests' dashboards, on the same
    server, are none of this test's business."""
    import psycopg2

    conn = psycopg2.connect(db_url)
    conn.autocommit = True
    sessions = ("FROM pg_stat_activity WHERE application_name = 'taskworker dashboard' "
                "AND datname = current_database()")
    try:
        query(conn, f"SELECT pg_terminate_backend(pid) {sessions}")
        wait_until(lambda: query(conn, f"SELECT count(*) {sessions}") == [(0,)], 10,
                   "the dashboard's sessions to end")
    finally:
        conn.close()


def test_a_claimed_task_is_not_called_running(db_url: str, db: Any, tmp_path: Path) -> None:
    """A task in progress whose handler has not started (started_at NULL, as a claim
    leaves it while it waits in its process's local queue) shows as claimed on every
    page; one whose handler started, as running, with its start."""
    (now,) = query(db, "SELECT now()")[0]
    add(db, 2)
    [claimed] = add(db, 1, payload="claimed one", status="in_progress", attempts=1,
                    locked_by="host-a:1:aaaa")
    [running] = add(db, 1, payload="running one", status="in_progress", attempts=1,
                    locked_by="host-a:1:aaaa", started_at=now, queue="emails")
    query(db, "INSERT INTO taskworker_ticks (task, tick, task_id) VALUES "
              "('nightly', %s, %s), ('hourly', %s, %s)", (now, claimed, now, running))
    with running_dashboard(db_url, tmp_path) as d:
        c = d.client()
        c.get("/")
        live = wait_until(lambda: (r := c.get("/overview/live")).status == 200
                          and "counted" in r.text and "running read" in r.text and r, 20,
                          "the first sample")
        for state, n in (("pending", 2), ("claimed", 1), ("running", 1)):
            assert re.search(rf'id="count-{state}"[^>]*><span class="n">{n}</span> '
                             rf'<span class="label">{state}<', live.body), live.body
        assert 'id="count-in_progress"' not in live.body and "in progress" not in live.text
        assert "pending, claimed and running read" in live.text
        assert ">Claimed</th><th" in live.body
        cells = r'<td class="num"[^>]*>(\d+)</td>'
        for queue, numbers in (("default", "2 0 1 0"), ("emails", "0 0 0 1")):
            row = re.search(rf'<a href="/tasks\?queue={queue}">{queue}</a></td>\s*'
                            + cells * 4, live.body)
            assert row and " ".join(row.groups()) == numbers, (queue, live.body)

        listed = c.get("/tasks")
        assert re.search(rf'<tr data-id="{claimed}">.*?<span class="status status-claimed"'
                         rf'[^>]*>claimed</span>', listed.body, re.S), listed.body
        assert re.search(rf'<tr data-id="{running}">.*?<span class="status status-running"'
                         rf'[^>]*>running</span>', listed.body, re.S), listed.body
        assert "in progress" not in listed.text and "in_progress" not in listed.body
        assert '<option value="claimed">claimed</option>' in listed.body
        assert ids_on(c.get("/tasks?status=claimed").body) == [claimed]
        assert ids_on(c.get("/tasks?status=running").body) == [running]
        assert ids_on(c.get("/tasks?status=claimed&q=one").body) == [claimed]
        assert ids_on(c.get("/tasks?status=running&q=one").body) == [running]
        assert ids_on(c.get("/tasks?status=running&queue=default").body) == []

        page = c.get(f"/tasks/{claimed}")
        assert re.search(r'id="task-status"[^>]*>claimed<', page.body), page.body
        assert "its handler has not started" in page.text
        # One spelling of each state (issue 25 item 8): claimed, never in_progress.
        assert re.search(r'id="field-status">claimed <span class="muted">\(taken by a '
                         r'process, waiting in its local queue: its handler has not started\)',
                         page.body), page.body
        assert "in_progress" not in page.body and "in progress" not in page.text
        assert re.search(r'id="field-started_at"><span class="muted">\(null\)', page.body)
        page = c.get(f"/tasks/{running}")
        assert re.search(r'id="task-status"[^>]*>running<', page.body), page.body
        assert re.search(r'id="field-status">running <span class="muted">\(taken by a '
                         r'process: its handler has started\)', page.body), page.body
        started = now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")  # one format
        assert f'id="field-started_at">{started}<' in page.body, page.body
        assert (f'Running in <span class="mono">host-a:1:aaaa</span> since {started}.'
                in page.body), page.body

        schedules = c.get("/schedules").body
        assert re.search(rf'href="/tasks/{claimed}">task {claimed}</a> <span class="status '
                         r'status-claimed">claimed<', schedules), schedules
        assert re.search(rf'href="/tasks/{running}">task {running}</a> <span class="status '
                         r'status-running">running<', schedules), schedules
        assert "in_progress" not in schedules
