"""The dashboard in a real browser: Chromium driven by Playwright (tests/browser.py).

What only a browser shows: the pages render and run no inline script (the
Content-Security-Policy would refuse it, and the console would say so), a user
can click through a confirmation to retry and cancel, the overview follows a
task finishing without a reload, and a payload or error written to attack the
page runs nothing. Screenshots of every page go to tests/artifacts/.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import chromium, screenshot  # noqa: F401 (chromium: a fixture)
from dashboard_client import running_dashboard
from invariants import query, wait_until

pytestmark = pytest.mark.slow  # (a browser: the pages' scripts, on one interpreter only)

LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
ATTACK = "window.__attacked"  # set by any of the payloads below, if one ever ran


@pytest.fixture
def browse(chromium: Any) -> Iterator[Any]:  # noqa: F811
    """A factory of pages in fresh browser contexts; each page records the console
    errors and failed requests it saw in `page.problems`."""
    contexts = []

    def open_page(viewport: dict[str, int] = LAPTOP) -> Any:
        context = chromium.new_context(viewport=viewport)
        contexts.append(context)
        page = context.new_page()
        page.problems = []
        page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
        page.on("pageerror", lambda e: page.problems.append(str(e)))
        page.set_default_timeout(15_000)
        return page

    yield open_page
    for context in contexts:
        context.close()


def status_of(db: Any, task_id: int) -> str:
    return query(db, "SELECT status FROM tasks WHERE id = %s", (task_id,))[0][0]


def count_shown(page: Any, status: str) -> str:
    return page.inner_text(f"#count-{status} .n")


def expect(locator: Any) -> Any:
    """Playwright's expect (waiting assertions that run beside the page's own
    scripts: wait_for_function would evaluate a string in the page, which the
    dashboard's Content-Security-Policy rightly refuses)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def test_every_page_renders_without_a_script_error(browse: Any, db_url: str, db: Any,
                                                   serve: Any, tmp_path: Path) -> None:
    """Overview (laptop and phone), tasks, one task and schedules, with a serve
    process at work so that the chart and the processes table have something."""
    query(db, "INSERT INTO tasks (payload, queue, task, priority) SELECT 'report ' || i, "
              "(ARRAY['default', 'emails', 'images'])[1 + i % 3], NULL, i % 3 "
              "FROM generate_series(1, 60) AS i")
    p = serve(db_url, env={"TASK_MIN_SECONDS": "0.05", "TASK_MAX_SECONDS": "0.3",
                           "TASK_FAILURE_RATE": "0.2", "WORKER_COUNT": "3",
                           "MAX_RETRIES": "0"})
    # (TASK_FAILURE_RATE=0.2: the first 20 to finish may all be done, 1% of runs.)
    wait_until(lambda: query(db, "SELECT count(*) >= 20 AND count(*) FILTER (WHERE status = "
                                 "'error') > 0 FROM tasks WHERE status IN ('done', 'error')"
                             )[0][0], 60, "20 tasks to finish, one of them in error", [p])
    [failed] = query(db, "SELECT min(id) FROM tasks WHERE status = 'error'")[0]
    query(db, "INSERT INTO taskworker_ticks (task, tick, task_id) VALUES "
              "('nightly_report', date_trunc('hour', now()), %s)", (failed,))
    with running_dashboard(db_url, tmp_path) as d:
        base = f"http://127.0.0.1:{d.port}"
        page = browse()
        page.goto(base + "/")
        page.wait_for_selector("#counted:has-text('ago')")
        expect(page.locator("#count-done .n")).not_to_have_text("0")
        assert page.locator("#processes tbody tr").count() == 1
        assert page.locator("#chart rect.done").count() >= 1
        screenshot(page, "overview")

        page.click("#nav-tasks")
        page.wait_for_selector("#task-list")
        assert page.locator("#task-list tbody tr").count() == 50
        screenshot(page, "tasks")
        page.select_option("#filter-status", "error")
        page.click("#filter-submit")
        page.wait_for_url("**/tasks?status=error*")
        statuses = page.locator("#task-list .status").all_inner_texts()
        assert statuses and set(statuses) == {"error"}, statuses

        page.click(f"#task-list a[href='/tasks/{failed}']")
        page.wait_for_selector("#task-fields")
        assert page.inner_text("#task-status") == "error"
        assert "SimulatedFailure" in page.inner_text("#field-error")
        screenshot(page, "task")

        page.click("#nav-schedules")
        page.wait_for_selector("text=nightly_report")
        screenshot(page, "schedules")

        phone = browse(PHONE)
        phone.goto(base + "/")
        phone.wait_for_selector("#counted:has-text('ago')")
        # Usable on a phone: nothing wider than the screen but the tables' own scrollers.
        assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        screenshot(phone, "overview-phone")
        for shown in (page, phone):
            assert shown.problems == [], shown.problems


def test_retry_and_cancel_through_their_confirmation(browse: Any, db_url: str, db: Any,
                                                     tmp_path: Path) -> None:
    [failed] = query(db, "INSERT INTO tasks (payload, status, error, attempts) VALUES "
                         "('resize photo 7', 'error', 'TimeoutError: gave up', 4) RETURNING id")[0]
    [waiting] = query(db, "INSERT INTO tasks (payload, run_at) VALUES "
                          "('send digest', now() + interval '1 hour') RETURNING id")[0]
    with running_dashboard(db_url, tmp_path) as d:
        base = f"http://127.0.0.1:{d.port}"
        page = browse()
        page.goto(f"{base}/tasks/{failed}")
        page.click("#retry-task")
        page.wait_for_selector("#confirm-form")
        assert status_of(db, failed) == "error"  # nothing happens before the confirmation
        screenshot(page, "confirm-retry")
        page.click("#confirm")
        page.wait_for_selector("#flash")
        assert "retr" in page.inner_text("#flash").lower()
        assert status_of(db, failed) == "pending"

        page.goto(f"{base}/tasks/{waiting}")
        page.click("#cancel-task")
        page.click("#cancel-confirm")  # "Go back": changes nothing
        page.wait_for_selector("#task-fields")
        assert status_of(db, waiting) == "pending"
        page.click("#cancel-task")
        page.click("#confirm")
        page.wait_for_selector("#flash")
        assert status_of(db, waiting) == "cancelled"
        page.goto(f"{base}/tasks/{waiting}")
        assert page.inner_text("#task-status") == "cancelled"
        assert page.locator("#cancel-task").count() == 0
        assert page.problems == [], page.problems
    log = d.output()
    assert f"retried task {failed}" in log and f"task {waiting}" in log, log


def test_the_overview_follows_a_task_finishing_without_a_reload(
        browse: Any, db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    [task_id] = query(db, "INSERT INTO tasks (payload) VALUES ('count words') RETURNING id")[0]
    with running_dashboard(db_url, tmp_path) as d:
        page = browse()
        page.goto(f"http://127.0.0.1:{d.port}/")
        expect(page.locator("#count-pending .n")).to_have_text("1")
        assert count_shown(page, "done") == "0"
        page.evaluate("window.__samePage = 'not reloaded'")
        p = serve(db_url, env={"TASK_MIN_SECONDS": "0", "TASK_MAX_SECONDS": "0",
                               "TASK_FAILURE_RATE": "0"})
        wait_until(lambda: status_of(db, task_id) == "done", 30, "the task to finish", [p])
        expect(page.locator("#count-done .n")).to_have_text("1", timeout=30_000)
        expect(page.locator("#count-pending .n")).to_have_text("0")
        assert page.evaluate("window.__samePage") == "not reloaded"
        assert page.problems == [], page.problems


def test_a_hostile_payload_and_error_run_nothing(browse: Any, db_url: str, db: Any,
                                                 tmp_path: Path) -> None:
    payload = (f"<script>{ATTACK} = 'script'</script>"
               f"<img src=x onerror=\"{ATTACK} = 'img'\">")
    error = f"<svg onload=\"{ATTACK} = 'svg'\"></svg><a href=\"javascript:{ATTACK}='a'\">x</a>"
    result = f"javascript:{ATTACK} = 'link'"
    [task_id] = query(db, "INSERT INTO tasks (payload, status, error, result, queue, task) "
                          "VALUES (%s, 'error', %s, %s, %s, %s) RETURNING id",
                      (payload, error, result, f"<b onmouseover=\"{ATTACK}='q'\">q</b>",
                       f"<script>{ATTACK}='name'</script>"))[0]
    with running_dashboard(db_url, tmp_path) as d:
        base = f"http://127.0.0.1:{d.port}"
        page = browse()
        for path in ("/", "/tasks", "/tasks?q=script", f"/tasks/{task_id}",
                     f"/actions/retry?id={task_id}", "/schedules"):
            page.goto(base + path)
            page.wait_for_load_state("load")
            if path == "/":
                page.wait_for_selector("#counted:has-text('ago')")
            for link in page.locator("a").all():
                link.hover()  # (an onmouseover, had one been written into the page)
            assert page.evaluate(ATTACK) is None, path
            assert page.locator("a[href^='javascript']").count() == 0, path
            assert page.locator("img[src='x'], svg[onload]").count() == 0, path
        page.goto(f"{base}/tasks/{task_id}")
        assert page.inner_text("#field-payload") == payload  # shown as text
        assert page.inner_text("#field-error") == error
        assert page.inner_text("#field-result") == result
        screenshot(page, "hostile-task")
        assert page.problems == [], page.problems


# The geometry of every page, measured in the page: the document's width, every
# table wider than its box (a sideways scroller), and the task list's rows.
MEASURE = """() => {
  const box = e => e.getBoundingClientRect();
  const rows = [...document.querySelectorAll('#task-list tbody tr')];
  const updated = [...document.querySelectorAll('#task-list td.col-updated')];
  const main = box(document.querySelector('main'));
  return {
    width: document.documentElement.scrollWidth,
    scrolling: [...document.querySelectorAll('table')]
      .filter(t => t.parentElement.scrollWidth > t.parentElement.clientWidth + 1)
      .map(t => t.id || t.className),
    tallest: Math.max(0, ...rows.map(r => box(r).height)),
    updatedOutside: updated.filter(td => box(td).right > main.right + 1
                                         || td.scrollWidth > td.clientWidth).length,
    updatedLines: Math.max(0, ...updated.map(td => {  // line boxes of its text
      const range = document.createRange();
      range.selectNodeContents(td);
      return new Set([...range.getClientRects()].map(r => Math.round(r.top))).size;
    })),
  };
}"""
LONG = "charge customer 42 for 99.50 EUR " * 150  # 4,950 characters, with spaces
UNBROKEN = "x" * 3000  # no place to break a line


def test_long_values_keep_the_pages_inside_the_screen(browse: Any, db_url: str, db: Any,
                                                      tmp_path: Path) -> None:
    """Issue 25 item 8: long payloads, errors and names are cut short in the list
    (whole on the task page), rows stay one line high (at most 48 px at 1280 px),
    no page is wider than the screen at 1280 or 390 px and no table scrolls
    sideways; dates have one format, statuses one spelling, the status cards no
    coloured corner. Deleting a task lands on the list (item 9)."""
    name = "billing.charge_customer_" + "n" * 80
    query(db, "INSERT INTO tasks (payload, status, error, queue, task, attempts) "
              "SELECT CASE WHEN i %% 2 = 0 THEN %s ELSE %s END, "
              "(ARRAY['done', 'error', 'pending'])[1 + i %% 3], "
              "CASE WHEN i %% 3 = 1 THEN 'CardDeclined: ' || %s END, "
              "'payments-' || repeat('q', 40), %s, 1 FROM generate_series(1, 60) AS i",
          (LONG, UNBROKEN, LONG, name))
    [running] = query(db, "INSERT INTO tasks (payload, status, locked_by, locked_until, "
                          "started_at, cancel_requested_at) VALUES (%s, 'in_progress', "
                          "'web-1:100:aaaa1111', now() + interval '1 hour', now(), now()) "
                          "RETURNING id", (LONG,))[0]
    [done] = query(db, "SELECT max(id) FROM tasks WHERE status = 'done'")[0]
    query(db, "INSERT INTO taskworker_processes (holder, host, pid, queues, tasks, "
              "default_handler, lease_seconds, started_at, seen_at, schedules) VALUES "
              "('web-1:100:aaaa1111', 'web-1', 100, %s, %s, true, 600, now(), now(), "
              "%s::jsonb)", (["default", "payments-" + "q" * 40], [name],
                             json.dumps({name: "cron */5 * * * *"})))
    query(db, "INSERT INTO taskworker_ticks (task, tick, task_id) VALUES "
              "(%s, date_trunc('hour', now()), %s)", (name, done))
    with running_dashboard(db_url, tmp_path) as d:
        base = f"http://127.0.0.1:{d.port}"
        for viewport, suffix in ((LAPTOP, ""), (PHONE, "-phone")):
            page = browse(viewport)
            for path, shot in (("/", "overview"), ("/tasks", "tasks"),
                               (f"/tasks/{running}", "task"), ("/schedules", "schedules"),
                               ("/actions/delete?task=" + name, "confirm")):
                page.goto(base + path)
                if path == "/":
                    page.wait_for_selector("#counted:has-text('ago')")
                screenshot(page, f"long-{shot}{suffix}")
                got = page.evaluate(MEASURE)
                assert got["width"] <= viewport["width"], (path, viewport, got)
                assert got["scrolling"] == [], (path, viewport, got)
                if path == "/tasks":
                    assert page.locator("#task-list tbody tr").count() == 50
                    assert got["updatedOutside"] == 0 and got["updatedLines"] == 1, got
                    if viewport is LAPTOP:
                        assert got["tallest"] <= 48, got
                    for column in ("id", "status", "task", "payload", "updated"):
                        cell = page.locator(f"#task-list tr[data-id='{running}'] "
                                            f"td.col-{column}")
                        assert cell.is_visible(), (column, viewport)
                text = page.inner_text("main")
                assert "in_progress" not in text and "in progress" not in text, path
                # One date format: 2026-12-06 22:18:30 UTC, nothing ISO or +0000.
                assert not re.search(r"\dT\d|\+0000|\d:\d\dZ", text), (path, text)
            assert page.problems == [], page.problems
        page = browse()
        page.goto(base + "/")
        page.wait_for_selector("#counted:has-text('ago')")
        # No coloured sliver in a status card's corners: nothing coloured behind or
        # beside its rounded box (its colour is the dot before its name).
        cards = page.evaluate("""() => [...document.querySelectorAll('.count')].map(li => {
            const a = getComputedStyle(li.querySelector('a'));
            return [getComputedStyle(li).backgroundColor, a.borderLeftColor === a.borderTopColor
                    && a.borderLeftWidth === a.borderTopWidth]})""")
        # (one card per status: pending, claimed, running, done, error, cancelled, waiting)
        assert len(cards) == 7 and all(bg == "rgba(0, 0, 0, 0)" and even for bg, even in cards), \
            cards
        page.goto(f"{base}/tasks/{done}")
        dates = re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", page.inner_text("main"))
        assert len(dates) >= 3, dates
        page.click("#delete-task")
        page.click("#confirm")
        page.wait_for_selector("#flash")
        assert page.url == f"{base}/tasks" and f"deleted task {done}" in page.inner_text(
            "#flash")
        assert page.problems == [], page.problems
