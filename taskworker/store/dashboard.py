"""The dashboard's statements: the task list, the sampled counts and chart, and
deleting finished tasks.

The list is paged by keyset (`id < before`, newest first), never OFFSET, so a
deep page costs what the first does. A filter the indexes serve (none, a live
status, text among finished tasks through the search side table of migration 008)
reads only what it returns; any other filter reads a bounded window of ids per
page (WINDOW, TEXT_WINDOW), and a page that window did not fill says where the
search stopped, for the next page to go on below it.

The dashboard names a task in progress by whether its handler started
(admin.state): claimed (waiting in its process's local queue) or running; its
filter, list and counts use those names (STATES), never in_progress.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from . import sql
from .admin import CLAIMED, RUNNING, state
from .database import Database
from .tasks import FINISHED

# The statuses as the dashboard names them (waiting: a workflow's step, migration 015).
STATES = ("pending", "waiting", CLAIMED, RUNNING, *FINISHED)
LIVE = ("pending", CLAIMED, RUNNING)
STARTED = {CLAIMED: False, RUNNING: True}  # the states of status in_progress: started?
WINDOW = 50_000  # ids read per page by a filter no index serves
TEXT_WINDOW = 2_000  # ids read per page by a text search before the index is asked
# (a word common enough to fill a page there is cheapest found there; 10,000 cost a rare
# word 12 ms more and its p95 at 100 requests/s went from about 95 to 135 ms)
LOWEST = -(2**63)
HIGHEST = 2**63 - 1


class Filter(NamedTuple):
    """What the list shows: None (or '') for any. `task` '' is tasks without a name."""

    status: str | None = None  # one of STATES
    queue: str | None = None
    task: str | None = None
    text: str | None = None  # searched in payload, arguments and error, case-insensitively
    # DASHBOARD_HIDE_ARGUMENTS: tasks whose payload and arguments the text is not
    # searched in (("*",): every task's)
    hide: tuple[str, ...] = ()
    workflow: int | None = None  # the tasks of one workflow (migration 015)

    @property
    def pattern(self) -> str | None:
        """The ILIKE pattern of `text`, its own % _ and \\ taken literally."""
        if not self.text:
            return None
        escaped = self.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return f"%{escaped}%"

    def params(self) -> dict[str, str | bool | int | list[str] | None]:
        """The statements' parameters: the state as a status (and started_at set or
        not, for claimed and running)."""
        started = STARTED.get(self.status or "")
        return {"status": "in_progress" if started is not None else self.status or None,
                "started": started, "queue": self.queue or None, "task": self.task,
                "pattern": self.pattern, "hide_all": "*" in self.hide,
                "hidden": [name for name in self.hide if name != "*"],
                "workflow": self.workflow}


class Row(NamedTuple):
    id: int
    status: str
    queue: str
    task: str | None
    priority: int
    attempts: int
    rescues: int
    payload: str | None  # the first 200 characters
    payload_length: int | None
    error: str | None  # the first 200 characters
    created_at: datetime
    updated_at: datetime
    run_at: datetime
    locked_by: str | None
    cancel_requested: bool
    started_at: datetime | None  # its handler started (status in_progress: running)
    arguments: str | None  # the first 200 characters of the JSON call (format 2)
    arguments_length: int | None

    @property
    def state(self) -> str:
        """Its status as the dashboard names it (claimed or running for in_progress)."""
        return state(self.status, self.started_at is not None)


class Page(NamedTuple):
    rows: list[Row]
    next_before: int | None  # the next page lists ids below this; None: the end
    searched_to: int | None  # a page the window did not fill: searched down to this id


class Unfilled(NamedTuple):
    """A text search's page that the window of the newest ids did not fill: the
    rows found there, and below `floor` the rest to look for through the search
    index (`text_rest`), which may take seconds on a long history: the dashboard
    does that part on one of its few search turns, the window on any connection."""

    rows: list[Row]
    floor: int
    limit: int


def page(db: Database, f: Filter, before: int | None, limit: int) -> Page | Unfilled:
    """Up to `limit` tasks matching `f` with ids below `before` (None: the newest);
    for a text search the newest window does not fill, Unfilled, for `text_rest`
    to finish (on a search turn)."""
    if f.workflow is not None:  # (its index lists the workflow's tasks, however old)
        rows = _rows(db, sql.dash_tasks, f, HIGHEST if before is None else before,
                     LOWEST, limit + 1)
        return Page(rows[:limit], rows[limit - 1].id if len(rows) > limit else None, None)
    if not (f.status or f.queue or f.task or f.text) or (
            f.status in LIVE and not (f.queue or f.task or f.text)):
        top = HIGHEST if before is None else before
        rows = _rows(db, sql.dash_tasks, f, top, LOWEST, limit + 1)
        return Page(rows[:limit], rows[limit - 1].id if len(rows) > limit else None, None)
    lowest, highest = db.query(sql.dash_id_range)[0]
    if highest is None:
        return Page([], None, None)
    top = highest + 1 if before is None else min(before, highest + 1)
    if f.text:
        return _text_window(db, f, top, lowest, limit)
    floor = max(top - WINDOW, LOWEST)
    rows = _rows(db, sql.dash_tasks, f, top, floor, limit + 1)
    if len(rows) > limit:
        return Page(rows[:limit], rows[limit - 1].id, None)
    if floor <= lowest:
        return Page(rows, None, None)
    return Page(rows, floor, floor)


def _text_window(db: Database, f: Filter, top: int, lowest: int,
                 limit: int) -> Page | Unfilled:
    """The window of the newest ids, read directly: a common word fills the page
    there (and the trigram index would list most of the table for it)."""
    floor = max(top - TEXT_WINDOW, LOWEST)
    rows = _rows(db, sql.dash_tasks, f, top, floor, limit + 1)
    if len(rows) > limit:
        return Page(rows[:limit], rows[limit - 1].id, None)
    if floor <= lowest:  # (the window reached the oldest task: nothing is below)
        return Page(rows, None, None)
    return Unfilled(rows, floor, limit)


def text_rest(db: Database, f: Filter, window: Unfilled) -> Page:
    """A text search's page finished below its window: finished tasks through the
    search side table (and those finished since the indexer last passed,
    directly), live ones through their partial indexes."""
    rows, limit = list(window.rows), window.limit
    want = limit + 1 - len(rows)
    params = {**f.params(), "before": window.floor, "limit": want}
    found: list[Row] = []
    if f.status is None or f.status in FINISHED:
        found += [Row(*r) for r in _text_finished(db, params)]
    live = ("pending", "in_progress") if f.status is None \
        else (params["status"],) if f.status in LIVE else ()
    for status in live:
        found += [Row(*r) for r in db.query(sql.dash_tasks_text_live,
                                            {**params, "status": status})]
    rows += sorted(found, key=lambda r: -r.id)[:want]
    return Page(rows[:limit], rows[limit - 1].id if len(rows) > limit else None, None)


def _text_finished(db: Database, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """dash_tasks_text_finished with `params` and the search indexer's position,
    read first (the statement says why)."""
    indexed_at, indexed_id = db.query(sql.dash_search_position)[0]
    return db.query(sql.dash_tasks_text_finished,
                    {**params, "indexed_at": indexed_at, "indexed_id": indexed_id})


def _rows(db: Database, statement: str, f: Filter, before: int, floor: int,
          limit: int) -> list[Row]:
    return [Row(*r) for r in db.query(statement, {**f.params(), "before": before,
                                                  "floor": floor, "limit": limit})]


def matching_ids(db: Database, f: Filter, before: int | None, limit: int) -> list[int]:
    """Ids of up to `limit` tasks matching `f` below `before`, newest first, read
    to the end of the table (an action's batch, not a page: no window). With a
    text and no status, finished tasks only (what the actions act on)."""
    top = HIGHEST if before is None else before
    if f.text and f.workflow is None and (f.status is None or f.status in FINISHED):
        rows = _text_finished(db, {**f.params(), "before": top, "limit": limit})
    else:
        rows = db.query(sql.dash_tasks, {**f.params(), "before": top, "floor": LOWEST,
                                         "limit": limit})
    return [r[0] for r in rows]


class Count(NamedTuple):
    status: str  # one of STATES
    queue: str
    task: str | None
    tasks: int


def counts(db: Database) -> list[Count]:
    """Every task counted by state, queue and name: a scan (the sampler's, seldom)."""
    return [Count(state(status, started), queue, task or None, n)
            for status, started, queue, task, n in db.query(sql.dash_counts)]


class Minute(NamedTuple):
    at: int  # the minute's start, epoch seconds (the database's clock)
    done: int
    error: int


def finished_per_minute(db: Database, since: float) -> list[Minute]:
    """Tasks done and in error per minute, from `since` (epoch seconds) on."""
    return [Minute(int(at), done, error) for at, done, error in db.query(
        sql.dash_finished_per_minute, {"since": since})]


def clock(db: Database) -> float:
    """The database's now(), epoch seconds."""
    return float(db.query(sql.dash_now)[0][0])


def count_matching(db: Database, f: Filter, finished: bool, cap: int) -> int:
    """How many tasks match `f` (finished ones only with `finished`), counted up to
    `cap`: what a bulk action would change. A text filter counts matching_ids'
    batches (the search index's path: finished tasks only)."""
    if f.text:
        counted, before = 0, None
        while counted < cap and (ids := matching_ids(db, f, before, min(1000, cap - counted))):
            counted += len(ids)
            before = min(ids)
        return counted
    return int(db.query(sql.dash_count_matching,
                        {**f.params(), "finished": finished, "cap": cap})[0][0])


def delete_finished(db: Database, ids: list[int]) -> list[int]:
    """Delete the finished tasks among `ids`; the ids deleted."""
    return [r[0] for r in db.query(sql.dash_delete_finished, {"ids": ids})]
