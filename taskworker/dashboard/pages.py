"""The pages: overview (and its live region), tasks, task, schedules.

Each handler reads what it shows (small, indexed statements; counts and the
chart from the sampler) and renders a template; none writes.
"""
from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import backlog, codec
from ..registry import RateLimit
from ..schedule_listing import listing
from ..store import admin, processes, search
from ..store import dashboard as store
from ..store import schedules as schedule_store
from .chart import chart
from .http import MAX_ID, Request, Response, task_id, url
from .render import FOLD_CHARS, HIDDEN

if TYPE_CHECKING:
    from .app import Dashboard

PAGE_SIZE = 50
MIN_TEXT = 3  # characters a text search needs (trigrams)
# The columns the task page shows below its table, each in a section of its own
# (and whole, as plain text, at /tasks/ID/raw/COLUMN).
LONG_COLUMNS = ("payload", "arguments", "result", "return_value", "error", "traceback")
JSON_COLUMNS = ("arguments", "return_value")  # jsonb: shown as indented JSON
ARGUMENT_COLUMNS = ("payload", "arguments")  # what DASHBOARD_HIDE_ARGUMENTS hides
TITLES = {"return_value": "Return value"}
FOLD_JSON_LINES = 10  # JSON longer than this (or FOLD_JSON_CHARS) is shown folded
FOLD_JSON_CHARS = 500


def overview(app: Dashboard, request: Request) -> Response:
    return app.page(request, "overview.html", **live_context(app))


def overview_live(app: Dashboard, request: Request) -> Response:
    """The overview's live region alone: the script swaps it in every few seconds."""
    return app.page(request, "live.html", **live_context(app))


def live_context(app: Dashboard) -> dict[str, Any]:
    sampler = app.sampler
    with app.pool.connection() as db:
        alive = processes.live(db)
        held = {h.locked_by: h for h in admin.holders(db)}
        paused = processes.paused(db)
        rates = admin.rate_limits(db)
    now = time.monotonic()
    rows: list[admin.Backlog] = sampler.backlog.value  # type: ignore[assignment]
    counted: list[store.Count] = sampler.counts.value  # type: ignore[assignment]
    by_status = dict.fromkeys(store.STATES, 0)
    finished: dict[tuple[str, str | None], dict[str, int]] = {}
    for c in counted:
        by_status[c.status] += c.tasks
        for key in (("queue", c.queue), ("task", c.task)):
            finished.setdefault(key, dict.fromkeys(store.STATES, 0))[c.status] += c.tasks
    if sampler.backlog.at:
        by_status["pending"] = sum(r.pending + r.scheduled for r in rows)
        by_status["claimed"] = sum(r.claimed for r in rows)
        by_status["running"] = sum(r.running for r in rows)
    queues = _table("queue", backlog.by_queue(rows), finished)
    names = _table("task", backlog.by_task(rows), finished)
    ages = [r.oldest_pending_seconds for r in rows if r.oldest_pending_seconds is not None]
    return {
        "by_status": by_status, "statuses": store.STATES,
        "counted_ago": now - sampler.counts.at if sampler.counts.at else None,
        "backlog_ago": now - sampler.backlog.at if sampler.backlog.at else None,
        "count_took": sampler.count_took, "problem": sampler.problem,
        "queues": queues, "names": names,
        "oldest_pending": max(ages) if ages else None,
        "chart": chart(sampler.minutes, sampler.now) if sampler.minutes_at else None,
        "processes": [(p, held.get(p.holder)) for p in alive],
        "paused": paused,
        "rate_limits": [(r, str(RateLimit(r.starts, r.per))) for r in rates],
        "unserved": backlog.unserved(rows, alive) if alive or rows else [],
        "no_name": backlog.NO_NAME,
    }


def _table(kind: str, live: list[backlog.Total],
           finished: dict[tuple[str, str | None], dict[str, int]]) -> list[dict[str, Any]]:
    """One row per queue (or task name): live counts and the finished ones."""
    found = {t.key: {"key": t.key, "pending": t.pending, "scheduled": t.scheduled,
                     "claimed": t.claimed, "running": t.running,
                     "oldest": t.oldest_pending_seconds}
             for t in live}
    for (k, key), statuses in finished.items():
        if k == kind:
            row = found.setdefault(key, {"key": key, "pending": 0, "scheduled": 0,
                                         "claimed": 0, "running": 0, "oldest": None})
            row.update(done=statuses["done"], error=statuses["error"],
                       cancelled=statuses["cancelled"])
    return sorted(found.values(), key=lambda r: (r["key"] is not None, r["key"] or ""))


def parse_filter(query: dict[str, str], hide: tuple[str, ...] = ()
                 ) -> tuple[store.Filter, list[str]]:
    """The list's filter from the query string, and what was wrong with it;
    `hide`: DASHBOARD_HIDE_ARGUMENTS, whose tasks' payload and arguments its text
    is not searched in."""
    problems = []
    status = query.get("status") or None
    if status is not None and status not in store.STATES:
        problems.append(f"unknown status {status!r}")
        status = None
    task = query.get("task") or None
    if task == backlog.NO_NAME:
        task = ""
    text = query.get("q", "").strip() or None
    if text is not None and len(text) < MIN_TEXT:
        problems.append(f"a text search needs at least {MIN_TEXT} characters")
        text = None
    workflow = None
    if query.get("workflow", "").strip():
        workflow = task_id(query["workflow"].strip())
        if workflow is None:
            problems.append(f"workflow= is a workflow id: a whole number from 1 to {MAX_ID}")
    return store.Filter(status, query.get("queue") or None, task, text, hide,
                        workflow), problems


def filter_query(f: store.Filter) -> dict[str, str | None]:
    """The query string of `f` (for links and forms)."""
    return {"status": f.status, "queue": f.queue,
            "task": backlog.NO_NAME if f.task == "" else f.task, "q": f.text,
            "workflow": None if f.workflow is None else str(f.workflow)}


def tasks(app: Dashboard, request: Request) -> Response:
    f, problems = parse_filter(request.query, app.settings.dashboard_hide_arguments)
    wrong_ids = [f"{name}= is a task id: a whole number from 1 to {MAX_ID}"
                 for name in ("id", "before") if request.query.get(name, "").strip()
                 and task_id(request.query[name].strip()) is None]
    before = task_id(request.query.get("before", "").strip())
    wanted_id = task_id(request.query.get("id", "").strip())
    # A text search reads the newest window on any connection (a common word
    # fills its page there, in milliseconds) and goes below it, through the search
    # index, only on one of the pool's few search turns: on a long history a rare
    # word can take seconds, and must not hold every connection.
    with app.pool.connection() as db:
        if wrong_ids:
            found: store.Page | store.Unfilled = store.Page([], None, None)
        elif wanted_id is not None:
            found = store.page(db, f, wanted_id + 1, 1)
        else:
            found = store.page(db, f, before, PAGE_SIZE)
        lag = search.lag(db) if f.text else None
    if isinstance(found, store.Unfilled):
        with app.pool.connection(search=True) as db:
            found = store.text_rest(db, f, found)
    page = found if wanted_id is None else store.Page(
        [r for r in found.rows if r.id == wanted_id], None, None)
    hidden = {r.id for r in page.rows if app.settings.hides_arguments(r.task)}
    page = page._replace(rows=[r._replace(payload=None, payload_length=None, arguments=None,
                                          arguments_length=None) if r.id in hidden else r
                               for r in page.rows])
    known = app.sampler.counts.value
    return app.page(request, "tasks.html", page=page, hidden=hidden, filter=f,
                    query=filter_query(f),
                    qs=url("", filter_query(f)).lstrip("?"),
                    problems=problems + wrong_ids, before=before, wanted_id=wanted_id,
                    lag=lag if lag is not None and lag.behind else None,
                    statuses=store.STATES, no_name=backlog.NO_NAME,
                    known_queues=sorted({c.queue for c in known}),  # type: ignore[attr-defined]
                    known_names=sorted({c.task for c in known if c.task}),  # type: ignore
                    retry_filter=f.status in (None, "error"),
                    delete_filter=f.status in (None, "done", "error", "cancelled"),
                    status=400 if wrong_ids else 200)


class Value(NamedTuple):
    """One long value of the task page, as it is shown."""

    name: str  # the column
    title: str
    text: str | None  # None: (null)
    hidden: list[str] | None  # hidden arguments: the positions and names shown instead
    fold: bool  # shown in a <details>, `summary` on its closed line
    summary: str


def task(app: Dashboard, request: Request, raw_id: str) -> Response:
    wanted = task_id(raw_id)
    if wanted is None:
        return app.page(request, "missing.html", status=404, what=f"task {raw_id}")
    with app.pool.connection() as db:
        row = admin.task(db, wanted)
        if row is None:
            return app.page(request, "missing.html", status=404, what=f"task {raw_id}")
        place = admin.workflow_place(db, wanted) if row.get("workflow_id") else None
        flow = admin.workflow_state(db, place.workflow_id) if place else None
    hide = app.settings.hides_arguments(row.get("task"))
    calls = row.get("format") == 2  # its arguments and return value, not payload and result
    wanted_columns = ("arguments", "return_value") if calls else ("payload", "result")
    values = [value(row, name, hide) for name in LONG_COLUMNS
              if name in (*wanted_columns, "error", "traceback") or row.get(name) is not None]
    short = {k: v for k, v in row.items() if k not in LONG_COLUMNS}
    return app.page(request, "task.html", task=short, short=short, values=values, id=wanted,
                    state=admin.state(row["status"], row.get("started_at") is not None),
                    place=place, flow=flow)


def value(row: dict[str, Any], name: str, hide: bool) -> Value:
    """Column `name` of `row` as the task page shows it: JSON indented and folded
    when long, a traceback folded under its last line, hidden arguments as their
    positions and names only."""
    title = TITLES.get(name, name.capitalize())
    raw = row.get(name)
    if raw is None:
        return Value(name, title, None, None, False, "")
    if hide and name in ARGUMENT_COLUMNS:
        return Value(name, title, None, argument_names(raw) if name == "arguments" else [],
                     False, "")
    if name in JSON_COLUMNS:
        text = codec.readable(raw)
        long = text.count("\n") >= FOLD_JSON_LINES or len(text) > FOLD_JSON_CHARS
        return Value(name, title, text, None, long, " ".join(text[:200].split()))
    text = str(raw)
    if name == "traceback":
        lines = text.rstrip().splitlines()
        return Value(name, title, text, None, True, lines[-1] if lines else "")
    return Value(name, title, text, None, len(text) > FOLD_CHARS, text[:200])


def argument_names(call: Any) -> list[str]:
    """The positions and names of a call's arguments, never their values:
    "1", "2", "subject" (empty when the row holds something other than a call)."""
    if not isinstance(call, dict):
        return []
    args, kwargs = call.get("args"), call.get("kwargs")
    return ([f"argument {n}" for n in range(1, len(args) + 1)] if isinstance(args, list)
            else []) + ([str(k) for k in kwargs] if isinstance(kwargs, dict) else [])


def raw(app: Dashboard, request: Request, raw_id: str, column: str) -> Response:
    """A long value whole, as plain text (never rendered as markup: nosniff);
    JSON indented. Hidden arguments are refused (403), as on the task page."""
    wanted = task_id(raw_id)
    if column not in LONG_COLUMNS or wanted is None:
        return app.page(request, "missing.html", status=404, what=request.path)
    with app.pool.connection() as db:
        row = admin.task(db, wanted)
    if row is None or row.get(column) is None:
        return app.page(request, "missing.html", status=404, what=f"task {raw_id}'s {column}")
    if column in ARGUMENT_COLUMNS and app.settings.hides_arguments(row.get("task")):
        return app.page(request, "error.html", status=403,
                        problem=f"the {column} of task {wanted}: {HIDDEN}")
    shown = codec.readable(row[column]) if column in JSON_COLUMNS else str(row[column])
    return Response(shown, content_type="text/plain; charset=utf-8")


def schedules(app: Dashboard, request: Request) -> Response:
    with app.pool.connection() as db:
        live = schedule_store.live_schedules(db)
        ticks = schedule_store.last_ticks(db)
    rows = listing(live, {}, ticks, app.settings.cron_tz, datetime.now(UTC))
    for r in rows:  # a last run in progress: claimed or running, as on every page here
        if r["last_status"] == "in_progress":
            r["last_status"] = admin.state("in_progress", ticks[r["task"]].started)
    return app.page(request, "schedules.html", rows=rows)


