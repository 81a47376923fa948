"""Run an application's tasks in its tests, without a `serve` process.

    import taskworker
    from myapp.tasks import send_email

    def test_signup_sends_a_welcome(conn):
        with taskworker.testing.eager():
            task_id = send_email.enqueue(conn, "ann@example.com", subject="Hi")
            assert taskworker.result(conn, task_id) == {"sent": 1}

Inside `eager()`, enqueueing a registered task (`.enqueue`, and
`taskworker.enqueue(..., task=...)` with arguments or a text payload) runs it
at once, in the thread that enqueued it, and writes nothing to the database:
the connection is not used (pass None if the code under test has none). The
block holds for every thread of the process, not only the test's own: a test
client that runs the application in a thread of its own (FastAPI's and
Starlette's TestClient) enqueues eagerly too. A thread (or greenlet) that opens
a block of its own sees only its own. The
same checks as a real enqueue come first (the signature, what JSON can carry,
names, priorities, times), the arguments make the same JSON round trip a worker's
would, and the return value must be JSON too. `taskworker.result` and
`taskworker.wait` then answer from what ran: the value, or TaskFailed with the
error and traceback. `taskworker.current_task()` works inside the task.

With `eager(defer=True)`, enqueued calls wait until the test calls `.run()`
(in enqueue order; tasks a task enqueues run in the same call), which is how a
test checks what happens between the enqueue and the run. Delays and run_at
are not waited for, and unique keys are not enforced. There are no retries: a
failure ends the task in error (a test wants to see it), and `Snooze` ends it
pending, shown by NotFinished.
"""
from __future__ import annotations

import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from . import registry
from .endings import Cancel, Fail, Snooze
from .handlers import HandlerSettings, TaskContext, _running
from .store.admin import Outcome

_local = threading.local()  # (greenlet-local under gevent's patching)
# The open eager() blocks of the process, innermost last: what a thread that
# opened none of its own sees (a test client's server thread).
_everywhere: list[EagerRunner] = []


@dataclass
class _Queued:
    id: int
    name: str
    arguments: str | None  # a call (JSON), or
    payload: str | None  # a text payload


class EagerRunner:
    """What `eager()` yields: the tasks run (or queued) in this block."""

    def __init__(self, defer: bool, connection: Any = None) -> None:
        self.defer = defer
        self.connection = connection  # what taskworker.transaction() gives a task
        self.outcomes: dict[int, Outcome] = {}
        self.queued: list[_Queued] = []
        self._next_id = 1
        self._ids = threading.Lock()  # (enqueues may come from several threads)

    def enqueued(self, name: str, arguments: str | None, placement: Any,
                 unique_key: str | None = None, payload: str | None = None) -> int:
        """A checked enqueue of task `name`: run now, or queue it (defer)."""
        if registry.get(name) is None:
            raise LookupError(f"eager mode runs registered tasks; no task {name!r} is "
                              "registered in this process")
        with self._ids:
            task_id = self._next_id
            self._next_id += 1
        entry = _Queued(task_id, name, arguments, payload)
        self.outcomes[task_id] = Outcome(task_id, "pending", 1 if arguments is None else 2,
                                         None, None, None, None)
        if self.defer:
            self.queued.append(entry)
        else:
            self._run(entry)
        return task_id

    def run(self) -> int:
        """Run every queued task, and those they enqueue, in order; how many ran."""
        ran = 0
        while self.queued:
            self._run(self.queued.pop(0))
            ran += 1
        return ran

    def result(self, task_id: int) -> Any:
        from .results import value_of

        return value_of(task_id, self.outcomes.get(task_id))

    def _run(self, entry: _Queued) -> None:
        definition = registry.get(entry.name)
        assert definition is not None
        fmt = 1 if entry.arguments is None else 2
        settings = HandlerSettings(definition.timeout or 0.0, definition.max_retries or 0,
                                   0.0, 0.0, 0.0)
        run = _EagerRun(TaskContext(entry.id, 1, 0, settings, entry.name,
                                    definition.queue or "default"), self.connection)
        running = _running.set(run)
        status, value, error, tb = "done", None, None, None
        try:
            if fmt == 2:  # (as a worker calls it)
                value, problem = registry.call(definition.fn, definition.signature,
                                               entry.name, entry.arguments or "")
                if problem is not None:
                    status, error = "error", problem
            elif definition.takes_task:
                value = definition.fn(entry.payload, task=run.context())
            else:
                value = definition.fn(entry.payload)
        except Snooze:
            status = "pending"
        except Cancel as exc:
            status, error = "cancelled", f"cancelled: {exc or 'by its handler'}"
        except Fail as exc:
            status, error, tb = "error", f"{exc}" or "failed", traceback.format_exc()
        except Exception as exc:
            status, error, tb = "error", f"{type(exc).__name__}: {exc}", traceback.format_exc()
        finally:
            _running.reset(running)
            run.end(keep=status == "done")
        self.outcomes[entry.id] = Outcome(
            entry.id, status, fmt, value if fmt == 1 else None,
            value if fmt == 2 and status == "done" else None, error, tb)


class _EagerRun:
    """A task run here, as it sees itself (handlers.Running): its context, and
    as its bound transaction a savepoint on the test's connection, released if
    the task ends done, rolled back otherwise."""

    def __init__(self, context: TaskContext, connection: Any) -> None:
        self._context = context
        self._connection = connection
        self._open = False

    def context(self) -> TaskContext:
        return self._context

    def transaction(self) -> Any:
        if self._connection is None:
            raise RuntimeError("taskworker.transaction() in eager mode needs a connection: "
                               "taskworker.testing.eager(connection=conn)")
        if not self._open:
            with self._connection.cursor() as cur:
                cur.execute("SAVEPOINT taskworker_task")
            self._open = True
        return self._connection

    def rollback(self) -> None:
        self.end(keep=False)

    def end(self, keep: bool) -> None:
        if self._open:
            with self._connection.cursor() as cur:
                cur.execute("RELEASE SAVEPOINT taskworker_task" if keep
                            else "ROLLBACK TO SAVEPOINT taskworker_task")
            self._open = False


def active() -> EagerRunner | None:
    """The runner of the innermost `eager()` block of this thread; in a thread
    that opened none, that of the process's innermost block; else None."""
    runner: EagerRunner | None = getattr(_local, "runner", None)
    if runner is None and _everywhere:
        return _everywhere[-1]
    return runner


@contextmanager
def eager(defer: bool = False, connection: Any = None) -> Iterator[EagerRunner]:
    """Run enqueued tasks here instead of in the database (see the module's
    docstring); `defer`: only when the test calls `.run()`. `connection`: what
    `taskworker.transaction()` gives a task (a savepoint on it, released when
    the task ends done, rolled back otherwise); without one it raises."""
    was = getattr(_local, "runner", None)
    runner = EagerRunner(defer, connection)
    _local.runner = runner
    _everywhere.append(runner)
    try:
        yield runner
    finally:
        _local.runner = was
        _everywhere.remove(runner)

