"""What a type checker sees of a task called with arguments (checked by
`tox -e typecheck`, with --warn-unused-ignores: each `type: ignore` below must
match an error mypy reports, so a `.enqueue` that stopped carrying the
function's parameters fails the check)."""
from __future__ import annotations

from typing import Any

import taskworker
from taskworker import Task


@taskworker.task("send_email")
def send_email(to: str, subject: str = "", *, cc: list[str] | None = None) -> dict[str, str]:
    return {"to": to}


def calls(conn: Any) -> None:
    task_id: int = send_email.enqueue(conn, "ann@example.com", subject="Hi", cc=["b"])
    send_email.options(priority=5, delay=60).enqueue(conn, "ann@example.com")
    value: dict[str, str] = send_email("ann@example.com")  # a plain call, typed too
    send_email.enqueue(conn)  # type: ignore[call-arg]
    send_email.enqueue(conn, 42)  # type: ignore[arg-type]
    send_email.enqueue(conn, "a", bcc="x")  # type: ignore[call-arg]
    send_email.options(priority="high")  # type: ignore[arg-type]
    reveal: Task = send_email  # a Task, whatever the function
    print(task_id, value, reveal)


async def awaited(conn: Any) -> None:
    """A workflow and the results, on an asynchronous connection."""
    flow = taskworker.group(send_email.s("a@example.com"), send_email.s("b@example.com"))
    run: taskworker.Workflow = await flow.enqueue_async(conn)
    values: Any = await taskworker.wait_async(conn, run.last, timeout=30)
    first: Any = await taskworker.result_async(conn, run.task_ids[0])
    await flow.enqueue(conn)  # type: ignore[misc]
    print(values, first)
