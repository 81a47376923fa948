"""Workflows: tasks that run one after another (a chain), side by side (a
group), and a callback that runs once a group is done, all in the tasks table.

    import taskworker

    flow = taskworker.chain(fetch.s(url), parse.s(), store.s(bucket="b"))
    fan = taskworker.group(*(count.s(part) for part in parts)).then(total.s())
    with conn:                                  # the application's transaction
        run = flow.enqueue(conn)                # every row, or none
    taskworker.wait(conn, run.last)             # store's return value

    async with pool.acquire() as c, c.transaction():   # asyncpg, say
        run = await fan.enqueue_async(c)

`conn` is any connection the enqueue API takes (drivers/): the same steps run
on it, sync or awaited, in its transaction, never committed here.

A signature (`task.s(*args, **kwargs)`) is a call not made yet. In a chain,
each step is called with the previous step's return value put first in its
positional arguments; a group's callback, and a step after a group, with the
list of the group's return values, in the order the members were given.

The whole workflow is inserted by one `enqueue` in the caller's transaction:
one statement draws the ids (the rows name each other), one more inserts them
per 5,000 tasks. The tasks that wait for others are in status 'waiting', which
no claim takes; the transaction that ends a task moves its workflow on (the
trigger of migration 015): nothing runs outside the database, and a process
killed at any moment leaves a workflow as consistent as its tasks' rows.

With OpenTelemetry, the enqueue is one PRODUCER span whose context every row of
the workflow keeps: its members' runs are CONSUMER spans of one trace.

This module imports neither gevent nor the database driver at import.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from . import codec, registry

if TYPE_CHECKING:
    from .store.database import Steps

BATCH_SIZE = 5000  # tasks per INSERT statement
_INPUT = object()  # stands for the result a step receives, when its call is checked


@dataclass(frozen=True)
class Signature:
    """A call of a registered task, not made yet: `task.s(*args, **kwargs)`,
    with the options of `task.options(...)`. Checked when a workflow is
    enqueued, where it is known whether it receives a result first."""

    task_name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: registry.Options = registry.NO_OPTIONS


Step = Union[Signature, "Chain", "Group"]


@dataclass(frozen=True)
class Chain:
    """Steps run one after another, each called with the previous one's result
    first (after a group: the list of its results)."""

    steps: tuple[Step, ...]

    def enqueue(self, conn: Any, /) -> Workflow:
        """Insert every task of the chain in the transaction of `conn` (any
        connection `taskworker.enqueue` takes); see `Workflow`."""
        return enqueue(conn, self)

    async def enqueue_async(self, conn: Any, /) -> Workflow:
        """`enqueue` on an asynchronous connection (as `taskworker.enqueue_async`)."""
        return await enqueue_async(conn, self)


@dataclass(frozen=True)
class Group:
    """Members run side by side; with a callback (`.then(sig)`), the callback
    runs once every member is done, called with the list of their results."""

    members: tuple[Step, ...]
    callback: Signature | None = None

    def then(self, callback: Signature) -> Group:
        """This group with `callback`, called with every member's result once
        all are done (exactly once; not at all if a member ends in error or is
        cancelled: it then ends cancelled, its error saying which member)."""
        if not isinstance(callback, Signature):
            raise TypeError(f"then() takes a signature (task.s(...)), not "
                            f"{type(callback).__name__}")
        if self.callback is not None:
            raise TypeError("this group has a callback already: chain a step after it")
        return Group(self.members, callback)

    def enqueue(self, conn: Any, /) -> Workflow:
        """Insert every task of the group in the transaction of `conn`."""
        return enqueue(conn, self)

    async def enqueue_async(self, conn: Any, /) -> Workflow:
        """`enqueue` on an asynchronous connection (as `taskworker.enqueue_async`)."""
        return await enqueue_async(conn, self)


def chain(*steps: Step) -> Chain:
    """Steps (signatures, groups, chains) that run one after another."""
    _check_steps(steps, "chain")
    return Chain(tuple(steps))


def group(*members: Step) -> Group:
    """Signatures (or chains) that run side by side; `.then(sig)` adds a callback."""
    _check_steps(members, "group")
    return Group(tuple(members))


def _check_steps(steps: Sequence[object], what: str) -> None:
    if not steps:
        raise TypeError(f"{what}() needs at least one signature")
    for step in steps:
        if not isinstance(step, (Signature, Chain, Group)):
            raise TypeError(f"{what}() takes signatures (task.s(...)), groups and chains, "
                            f"not {type(step).__name__}")


@dataclass(frozen=True)
class Workflow:
    """What `enqueue` inserted: the workflow's id (the tasks' workflow_id, to
    filter by in `status --workflow` and the dashboard), its task ids in the
    order of the signatures given (a callback after its group's members), and
    `last`: the tasks whose results are the workflow's (a chain's last step, a
    group's callback; a group without one: its members)."""

    id: int
    task_ids: list[int]
    last: list[int]


@dataclass
class _Node:
    sig: Signature
    parents: list[int]  # indexes of the nodes it waits for
    joins: bool  # receives the list of its parents' results
    children: list[int] = field(default_factory=list)


def plan(flow: Step) -> tuple[list[_Node], list[int]]:
    """The tasks of a workflow, parents before children, and the indexes of the
    last ones."""
    nodes: list[_Node] = []

    def build(step: Step, inputs: list[int], joins: bool) -> tuple[list[int], bool]:
        if isinstance(step, Signature):
            nodes.append(_Node(step, list(inputs), joins and bool(inputs)))
            for i in inputs:
                nodes[i].children.append(len(nodes) - 1)
            return [len(nodes) - 1], False
        if isinstance(step, Chain):
            out, many = inputs, joins
            for each in step.steps:
                out, many = build(each, out, many)
            return out, many
        ends: list[int] = []
        for member in step.members:
            ends += build(member, inputs, joins)[0]
        if step.callback is None:
            return ends, True
        return build(step.callback, ends, True)

    last, _ = build(flow, [], False)
    return nodes, last


def rows(nodes: list[_Node], ids: list[int], max_bytes: int) -> list[dict[str, Any]]:
    """The checked columns of each node's task (TypeError, ValueError before
    anything is sent)."""
    from .client import place

    out = []
    for node, task_id in zip(nodes, ids, strict=True):
        sig = node.sig
        if sig.options.unique_key is not None:
            raise ValueError(f"{sig.task_name}(): a workflow's tasks cannot have a unique_key")
        args = ((_INPUT,) if node.parents else ()) + tuple(sig.args)
        known = registry.get(sig.task_name)
        if known is not None:
            registry.check_call(known, args, sig.kwargs)
        arguments = codec.encode_call(sig.args, sig.kwargs, f"{sig.task_name}()")
        if len(arguments) > max_bytes // 4 and (size := len(arguments.encode())) > max_bytes:
            raise ValueError(f"{sig.task_name}(): arguments are {size} bytes of JSON, over "
                             f"MAX_PAYLOAD_BYTES={max_bytes}")
        placement = place(sig.task_name, sig.options.queue, sig.options.priority,
                          sig.options.run_at, sig.options.delay)
        next_ids = [ids[c] for c in node.children]
        out.append({
            "id": task_id, "task": sig.task_name, "queue": placement.queue,
            "priority": placement.priority, "arguments": arguments,
            "parents": len(node.parents),
            "next_ids": "{" + ",".join(map(str, next_ids)) + "}" if next_ids else None,
            "next_joins": any(nodes[c].joins for c in node.children) or None,
            "delay": None if placement.delay is None else placement.delay.total_seconds(),
            "run_at": placement.run_at})
    return out


def enqueue(conn: Any, flow: Step, max_bytes: int | None = None) -> Workflow:
    """Insert the workflow's tasks in the transaction of `conn` (any connection
    `taskworker.enqueue` takes: see drivers/): every row, or (the transaction
    rolled back) none. Never commits."""
    from . import drivers

    return drivers.run(conn, _steps(flow, max_bytes))


async def enqueue_async(conn: Any, flow: Step, max_bytes: int | None = None) -> Workflow:
    """`enqueue` on an asynchronous connection (any that `taskworker.enqueue_async`
    takes): the same checks and statements."""
    from . import drivers

    return await drivers.run_async(conn, _steps(flow, max_bytes))


def _steps(flow: Step, max_bytes: int | None) -> Steps[Workflow]:
    """What `enqueue` and `enqueue_async` send (see store.database.Steps): the
    ids, then the rows, inside one PRODUCER span (with OpenTelemetry) whose
    context every row keeps."""
    from . import tracing
    from .client import _eager
    from .settings import DEFAULT_MAX_PAYLOAD_BYTES
    from .store import admin

    if isinstance(flow, Signature):
        flow = Chain((flow,))
    nodes, last = plan(flow)
    limit = DEFAULT_MAX_PAYLOAD_BYTES if max_bytes is None else max_bytes
    # Checked before anything is sent (the ids are not drawn yet: stand-ins).
    queues = [row["queue"] for row in rows(nodes, list(range(len(nodes))), limit)]
    if _eager() is not None:
        raise TypeError("workflows do not run under taskworker.testing.eager() yet")
    with tracing.producing_workflow(type(flow).__name__.lower(), queues) as span:
        workflow_id, ids = yield from admin.workflow_ids(len(nodes))
        checked = rows(nodes, ids, limit)
        for start in range(0, len(checked), BATCH_SIZE):
            yield from admin.enqueue_workflow(workflow_id, checked[start:start + BATCH_SIZE],
                                              span.placement.trace)
        span.sent(ids, workflow_id)
    return Workflow(workflow_id, ids, [ids[i] for i in last])


def cancel_workflow(conn: Any, workflow_id: int) -> tuple[list[int], list[int]]:
    """Cancel workflow `workflow_id` in the transaction of `conn` (any
    connection the synchronous enqueue takes): its tasks
    that have not started (pending, or waiting for others) end cancelled; the
    ones in progress are asked to stop, as `taskworker cancel` asks. Returns
    (the ids cancelled, the ids asked to stop)."""
    from . import drivers
    from .store import admin

    done = admin.cancel_workflow(drivers.database(conn), workflow_id,
                                 source="taskworker.cancel_workflow")
    return done.cancelled, done.requested
