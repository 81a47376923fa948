"""The dashboard's actions over HTTP, against a real database: retry, cancel and
delete change the rows they should, behind a confirmation, a CSRF token and the
read-only switch, each written to the log with who did it; and `serve
--dashboard` serves the same pages."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from dashboard_client import CSRF_FIELD, running_dashboard
from invariants import query, wait_until
from test_dashboard import add


def statuses(db: Any, ids: list[int]) -> list[str]:
    found = dict(query(db, "SELECT id, status FROM tasks WHERE id = ANY(%s)", (ids,)))
    return [found.get(i, "deleted") for i in ids]


def test_retry_one_task_and_every_task_in_error_of_a_filter(db_url: str, db: Any,
                                                            tmp_path: Path) -> None:
    [one] = add(db, 1, status="error", error="boom", attempts=3)
    mail = add(db, 3, status="error", queue="emails", error="SMTP down")
    [held] = add(db, 1, status="error", queue="emails", error="SMTP down", unique_key="k1")
    [holder] = add(db, 1, unique_key="k1")  # pending: holds k1
    [other] = add(db, 1, status="error", queue="images", error="SMTP down")
    with running_dashboard(db_url, tmp_path) as d:
        c = d.client()
        page = c.get(f"/tasks/{one}")
        assert f'href="/actions/retry?id={one}"' in page.body
        confirm = c.get(f"/actions/retry?id={one}")
        assert confirm.status == 200 and f"Retry task {one}?" in confirm.text
        assert statuses(db, [one]) == ["error"]  # a GET changes nothing
        done = c.confirm(f"/actions/retry?id={one}")
        assert done.status == 303 and done.headers["location"] == f"/tasks/{one}"
        assert statuses(db, [one]) == ["pending"]
        assert query(db, "SELECT attempts FROM tasks WHERE id = %s", (one,)) == [(0,)]
        after = c.get(f"/tasks/{one}")
        assert f"retried task {one}" in after.text and 'id="flash"' in after.body
        assert 'id="flash"' not in c.get(f"/tasks/{one}").body  # shown once

        listing = c.get("/tasks?queue=emails&q=SMTP")
        assert 'href="/actions/retry?queue=emails&amp;q=SMTP"' in listing.body
        done = c.confirm("/actions/retry?queue=emails&q=SMTP")
        assert done.status == 303
        assert done.headers["location"] == "/tasks?queue=emails&q=SMTP"
        assert statuses(db, [*mail, held, other]) == ["pending"] * 3 + ["error", "error"]
        message = c.get(done.headers["location"]).text
        assert "retried 3 tasks" in message and "skipped 1" in message, message
        d.wait_for(rf"Dashboard: anonymous at 127\.0\.0\.1: retried task {one}$")
        d.wait_for(r"Dashboard: anonymous at 127\.0\.0\.1: retried 3 tasks \(every task "
                   r"matching status 'error', queue 'emails', text 'SMTP'\); skipped 1")
        assert statuses(db, [holder]) == ["pending"]


def test_cancel_pending_and_delete_finished(db_url: str, db: Any, tmp_path: Path) -> None:
    [pending] = add(db, 1)
    old = add(db, 3, status="done", queue="reports")
    [kept] = add(db, 1, status="done", queue="other")
    [live] = add(db, 1, queue="reports")
    [failed] = add(db, 1, status="error", queue="reports")
    with running_dashboard(db_url, tmp_path) as d:
        c = d.client()
        assert f'href="/actions/cancel?id={pending}"' in c.get(f"/tasks/{pending}").body
        assert c.confirm(f"/actions/cancel?id={pending}").status == 303
        assert statuses(db, [pending]) == ["cancelled"]
        assert "cancelled task" in c.get(f"/tasks/{pending}").text
        again = c.confirm(f"/actions/cancel?id={pending}")
        assert again.status == 303
        assert "it is cancelled: only pending, claimed and running" in c.get(
            again.headers["location"]).text

        assert c.confirm("/actions/delete?queue=reports&status=done").status == 303
        assert statuses(db, [*old, kept, live, failed]) == ["deleted"] * 3 + [
            "done", "pending", "error"]
        assert c.confirm("/actions/delete?queue=reports").status == 303  # every finished one
        assert statuses(db, [live, failed]) == ["pending", "deleted"]
        assert c.confirm(f"/actions/delete?id={kept}").status == 303
        assert statuses(db, [kept]) == ["deleted"]
        refused = c.confirm(f"/actions/delete?id={live}")
        assert "only finished tasks" in c.get(refused.headers["location"]).text
        assert c.get("/actions/delete?status=pending").status == 400
        d.wait_for(rf"Dashboard: anonymous at 127\.0\.0\.1: cancelled task {pending}$")
        d.wait_for(r"Dashboard: anonymous at 127\.0\.0\.1: deleted 3 tasks \(every task "
                   r"matching status 'done', queue 'reports', finished\)$")
        d.wait_for(rf"Dashboard: anonymous at 127\.0\.0\.1: deleted task {kept}$")


def test_cancel_a_running_task(db_url: str, db: Any, tmp_path: Path, serve: Any) -> None:
    [task_id] = add(db, 1)
    p = serve(db_url, env={"TASK_MIN_SECONDS": "60", "TASK_MAX_SECONDS": "60",
                           "TASK_FAILURE_RATE": "0", "FETCH_INTERVAL": "100ms"})
    wait_until(lambda: statuses(db, [task_id]) == ["in_progress"], 30, "the task to run", [p])
    with running_dashboard(db_url, tmp_path, {"DASHBOARD_PASSWORD": "pw"}) as d:
        c = d.client(auth=("admin", "pw"))
        assert f'href="/actions/cancel?id={task_id}"' in c.get(f"/tasks/{task_id}").body
        done = c.confirm(f"/actions/cancel?id={task_id}")
        assert done.status == 303
        assert "asked the process holding task" in c.get(done.headers["location"]).text
        wait_until(lambda: statuses(db, [task_id]) == ["cancelled"], 15,
                   "the running task to be cancelled", [p])
        # The stored reason names who asked (issue 25, item 10).
        assert query(db, "SELECT error FROM tasks WHERE id = %s", (task_id,)) == [
            ("cancelled: by the dashboard",)]
        d.wait_for(rf"Dashboard: admin at 127\.0\.0\.1: asked the process holding task "
                   rf"{task_id} to stop it$")


def test_posts_without_a_valid_token_or_from_another_site_are_refused(
        db_url: str, db: Any, tmp_path: Path) -> None:
    [task_id] = add(db, 1, status="error", error="boom")
    with running_dashboard(db_url, tmp_path) as d:
        c = d.client()
        page = c.get(f"/actions/retry?id={task_id}")
        token = CSRF_FIELD.search(page.body)
        assert token
        refused = [
            c.post("/actions/retry", {"id": task_id}),
            c.post("/actions/retry", {"id": task_id, "csrf": "0" * 64}),
            c.post("/actions/retry", {"id": task_id, "csrf": token.group(1)},
                   headers={"Origin": "http://evil.example"}),
            c.post("/actions/retry", {"id": task_id, "csrf": token.group(1)},
                   headers={"Sec-Fetch-Site": "cross-site"}),
            d.client().post("/actions/retry", {"id": task_id, "csrf": token.group(1)}),
        ]
        assert [r.status for r in refused] == [403] * 5, refused
        assert statuses(db, [task_id]) == ["error"]
        same_site = c.post("/actions/retry", {"id": task_id, "csrf": token.group(1)},
                           headers={"Origin": f"http://127.0.0.1:{d.port}"})
        assert same_site.status == 303 and statuses(db, [task_id]) == ["pending"]
        assert "without a valid CSRF token" in d.output()
        cookie = [v for v in page.headers.get("set-cookie", "").split("\n") if "tw_csrf" in v]
        assert cookie and "SameSite=Strict" in cookie[0] and "HttpOnly" in cookie[0]


def test_read_only_hides_every_action_and_refuses_every_post(db_url: str, db: Any,
                                                             tmp_path: Path) -> None:
    [failed] = add(db, 1, status="error", error="boom")
    [pending] = add(db, 1)
    with running_dashboard(db_url, tmp_path, {"DASHBOARD_READONLY": "true"}) as d:
        c = d.client()
        for path in ("/", "/tasks", "/tasks?status=error", f"/tasks/{failed}",
                     f"/tasks/{pending}", "/schedules"):
            page = c.get(path)
            assert page.status == 200 and 'id="readonly"' in page.body, path
            assert "/actions/" not in page.body and 'method="post"' not in page.body, path
        assert c.get(f"/actions/retry?id={failed}").status == 403
        token = CSRF_FIELD.search(c.get("/").body)
        assert token is None
        for action, fields in (("retry", {"id": failed}), ("cancel", {"id": pending}),
                               ("delete", {"id": failed})):
            reply = c.post(f"/actions/{action}", fields)
            assert reply.status == 403 and "read-only" in reply.text
        assert statuses(db, [failed, pending]) == ["error", "pending"]


def test_serve_with_dashboard_serves_the_overview(db_url: str, db: Any, serve: Any) -> None:
    from dashboard_client import Client
    from pgserver import free_port

    add(db, 2)
    port = free_port()
    p = serve(db_url, env={"DASHBOARD_PORT": str(port), "TASK_MIN_SECONDS": "0",
                           "TASK_MAX_SECONDS": "0", "TASK_FAILURE_RATE": "0"},
              args=["--dashboard"])
    p.wait_for(rf"Dashboard on http://127\.0\.0\.1:{port}/")
    c = Client(port)
    live = wait_until(lambda: (r := c.get("/overview/live")).status == 200
                      and 'id="processes"' in r.body and "counted" in r.text and r, 20,
                      "the overview to show the serve process", [p])
    assert re.search(r'<td class="num"[^>]*>\d+</td>', live.body)
    wait_until(lambda: statuses(db, [1, 2]) == ["done", "done"], 20, "the tasks to run", [p])
    p.signal(2)
    assert p.wait(30) == 0, p.output()


def test_a_deleted_task_lands_on_the_list_and_bulk_confirmations_count(
        db_url: str, db: Any, tmp_path: Path) -> None:
    """Issue 25 item 9: deleting one task goes to the list with the message (its own
    page is a 404 now); a bulk confirmation says how many tasks it would change,
    and the unfiltered delete says it means every finished task."""
    ticks = add(db, 30, status="done", task="tick")
    add(db, 2, task="tick")  # pending: never deleted, not counted
    add(db, 4, status="error", task="tick", error="boom")
    add(db, 1, status="cancelled", queue="emails")
    with running_dashboard(db_url, tmp_path) as d:
        c = d.client()
        done = c.confirm(f"/actions/delete?id={ticks[0]}")
        assert done.status == 303 and done.headers["location"] == "/tasks", done
        landed = c.get(done.headers["location"])
        assert landed.status == 200 and f"deleted task {ticks[0]}" in landed.text

        def asks(path: str) -> str:
            reply = c.get(path)
            assert reply.status == 200, reply
            found = re.search(r'<h1 id="question">(.*?)</h1>', reply.body)
            assert found, reply.body
            return found.group(1).replace("&#39;", "'")

        assert asks("/actions/delete?task=tick&status=done") == (
            "Delete 29 tasks done named 'tick'?")
        assert asks("/actions/delete?task=tick") == "Delete 33 finished tasks named 'tick'?"
        assert asks("/actions/retry?task=tick") == "Retry 4 tasks in error named 'tick'?"
        assert asks("/actions/retry?q=boom") == "Retry 4 tasks in error containing 'boom'?"
        assert asks("/actions/delete?queue=emails&q=xyz") == (
            "Delete 0 finished tasks in queue 'emails' containing 'xyz'?")
        assert asks("/actions/delete") == (
            "Delete every finished task (34: done, in error or cancelled)?")
