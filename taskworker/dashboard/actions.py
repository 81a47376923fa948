"""The actions: retry, cancel, delete. Each is a confirmation page (GET) whose
form POSTs; the POST acts, logs who did what, and redirects (303) back with a
message saying what was done (a task deleted has no page left: to the list).
A bulk action's confirmation says how many tasks it would change (counted up to
COUNT_CAP), and the unfiltered delete that it means every finished task.

They have the admin commands' semantics, through the same store functions:
retry puts tasks in error back to pending as if new and skips a task whose
unique key a live task holds; cancel cancels a pending task and asks the
process holding a claimed or running task to stop it (cancel_requested_at and
a NOTIFY); delete removes finished tasks only. Their messages name a task in
progress as the pages do: claimed, or running.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from ..logs import log
from ..store import admin, tasks
from ..store import dashboard as store
from ..store.database import Direct
from .http import Request, Response, redirect, task_id, url
from .pages import filter_query, parse_filter
from .security import Visitor

if TYPE_CHECKING:
    from .app import Dashboard

BATCH = 1000  # tasks per statement of an action on a filter
FINISHED = ("done", "error", "cancelled")
COUNT_CAP = 10_000  # a bulk confirmation counts the tasks it would change up to this
# The tasks a bulk action changes, by the filter's status (None: every finished one),
# singular and plural, as its confirmation names them.
NOUNS = {None: ("finished task", "finished tasks"), "done": ("task done", "tasks done"),
         "error": ("task in error", "tasks in error"),
         "cancelled": ("cancelled task", "cancelled tasks")}


class Target(NamedTuple):
    """What an action acts on: one task, or every task matching a filter."""

    id: int | None
    filter: store.Filter
    listed: store.Filter = store.Filter()  # the list the action was started from

    def describe(self) -> str:
        if self.id is not None:
            return f"task {self.id}"
        f = self.filter
        parts = [f"{name} {value!r}" for name, value in
                 (("status", f.status), ("queue", f.queue), ("text", f.text)) if value]
        if f.task is not None:
            parts.append("without a name" if f.task == "" else f"named {f.task!r}")
        return "every task matching " + ", ".join(parts) if parts else "every task"

    def restrictions(self) -> str:
        """The filter but its status, as words after a noun: " named 'tick' in
        queue 'emails' containing 'SMTP'" ("" without one)."""
        f = self.filter
        words = []
        if f.task is not None:
            words.append("without a name" if f.task == "" else f"named {f.task!r}")
        if f.queue:
            words.append(f"in queue {f.queue!r}")
        if f.text:
            words.append(f"containing {f.text!r}")
        return "".join(" " + w for w in words)

    def back(self) -> str:
        """Where the browser goes after the action."""
        if self.id is not None:
            return f"/tasks/{self.id}"
        return url("/tasks", filter_query(self.listed))


class NoSuchTask(Exception):
    """The id of an action's target is no task id (404)."""


def target(fields: dict[str, str], action: str, hide: tuple[str, ...] = ()) -> Target | None:
    """The action's target from the query string or the form (None: unusable;
    NoSuchTask: an id that no task can have). `hide`: DASHBOARD_HIDE_ARGUMENTS,
    whose tasks a text filter matches by their error alone, as the list does."""
    raw = fields.get("id", "")
    if raw:
        wanted = task_id(raw)
        if wanted is None:
            raise NoSuchTask(raw)
        return Target(wanted, store.Filter())
    if action == "cancel":
        return None  # one task at a time
    f, problems = parse_filter(fields, hide)
    if problems:
        return None
    if action == "retry":
        return Target(None, f._replace(status="error"), f)
    if f.status not in (None, *FINISHED):
        return None
    return Target(None, f, f)


VERBS = {"retry": "Retry", "cancel": "Cancel", "delete": "Delete"}


def confirm(app: Dashboard, request: Request, action: str) -> Response:
    try:
        t = target(request.query, action, app.settings.dashboard_hide_arguments)
    except NoSuchTask as exc:
        return app.page(request, "missing.html", status=404, what=f"task {exc}")
    if t is None:
        return app.page(request, "missing.html", status=400, what="what to act on")
    count = None
    if t.id is None:
        with app.pool.connection() as db:
            count = store.count_matching(db, t.filter, action == "delete", COUNT_CAP + 1)
    fields = filter_query(t.listed) if t.id is None else {"id": t.id}
    return app.page(request, "confirm.html", action=action, verb=VERBS[action],
                    question=question(VERBS[action], t, count), count=count,
                    fields={k: v for k, v in fields.items() if v not in (None, "")},
                    back=t.back())


def question(verb: str, t: Target, count: int | None) -> str:
    """What a confirmation asks: "Delete task 5?", "Delete 30 finished tasks named
    'tick'?", "Delete every finished task (1,204: done, in error or cancelled)?";
    how many, counted up to COUNT_CAP (`count`; None for one task)."""
    if t.id is not None or count is None:
        return f"{verb} {t.describe()}?"
    status = t.filter.status
    one, many = NOUNS[status if status in NOUNS else None]
    shown = f"more than {COUNT_CAP:,}" if count > COUNT_CAP else f"{count:,}"
    restricted = t.restrictions()
    if verb == "Delete" and status is None and not restricted:
        return f"{verb} every finished task ({shown}: done, in error or cancelled)?"
    return f"{verb} {shown} {one if count == 1 else many}{restricted}?"


def perform(app: Dashboard, request: Request, action: str, who: Visitor) -> Response:
    try:
        t = target(request.form, action, app.settings.dashboard_hide_arguments)
    except NoSuchTask as exc:
        return app.page(request, "missing.html", status=404, what=f"task {exc}")
    if t is None:
        return app.page(request, "missing.html", status=400, what="what to act on")
    with app.pool.connection() as db:
        said = {"retry": retry, "cancel": cancel, "delete": delete}[action](db, t)
        gone = t.id is not None and admin.states(db, [t.id])[t.id].status is None
    log.info("Dashboard: %s at %s: %s", who.name, who.address, said)
    # A task deleted has no page left to go back to: the list says what was done.
    return app.flash(redirect("/tasks" if gone else t.back()), said)


def retry(db: Direct, t: Target) -> str:
    now = tasks.cutoff(db, None).now
    if t.id is not None:
        if admin.retry(db, ids=[t.id], since=None, before=now, limit=1):
            tasks.wake_others(db)
            return f"retried task {t.id}"
        blocked = admin.blocked(db, ids=[t.id], since=None, before=now)
        if blocked:
            return f"did not retry task {t.id}: {blocked[0].reason}"
        return f"did not retry task {t.id}: {_state(db, t.id, 'only tasks in error are retried')}"
    retried = skipped = 0
    before = None
    while ids := store.matching_ids(db, t.filter, before, BATCH):
        got = admin.retry(db, ids=ids, since=None, before=now, limit=len(ids))
        retried += len(got)
        left = sorted(set(ids) - set(got))
        skipped += len(admin.blocked(db, ids=left, since=None, before=now)) if left else 0
        before = min(ids)
    if retried:
        tasks.wake_others(db)
    return (f"retried {_tasks(retried)} ({t.describe()})"
            + (f"; skipped {skipped}: a live task holds its unique key" if skipped else ""))


def cancel(db: Direct, t: Target) -> str:
    assert t.id is not None
    done = admin.cancel(db, [t.id], source="the dashboard")
    if done.cancelled:
        return f"cancelled task {t.id}"
    if done.requested:
        return f"asked the process holding task {t.id} to stop it"
    return (f"did not cancel task {t.id}: "
            + _state(db, t.id, "only pending, claimed and running tasks can be cancelled"))


def delete(db: Direct, t: Target) -> str:
    if t.id is not None:
        if store.delete_finished(db, [t.id]):
            return f"deleted task {t.id}"
        return f"did not delete task {t.id}: " + _state(db, t.id, "only finished tasks are")
    deleted = 0
    before = None
    while ids := store.matching_ids(db, t.filter, before, BATCH):
        deleted += len(store.delete_finished(db, ids))
        before = min(ids)
    return f"deleted {_tasks(deleted)} ({t.describe()}, finished)"


def _state(db: Direct, task_id: int, rule: str) -> str:
    state = admin.states(db, [task_id])[task_id]
    if state.status is None:
        return "there is no such task"
    return f"it is {admin.state(state.status, state.started)}: {rule}"


def _tasks(n: int) -> str:
    return f"{n:,} task" + ("" if n == 1 else "s")
