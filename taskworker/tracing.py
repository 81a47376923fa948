"""OpenTelemetry traces across the queue, when OpenTelemetry is installed
(`pip install 'taskworker[otel]'`).

    enqueue (any process)                       serve (a worker)
    PRODUCER span `enqueue send_email`  ──row──▶ CONSUMER span `send_email`
      its context -> tasks.trace_context          parent: that context

An enqueue opens a PRODUCER span and stores its context on the row it inserts
(`trace_context`, migration 014, as the global propagator writes it: W3C
`traceparent` by default). The worker runs the task's function inside a
CONSUMER span named after the task whose parent is that context, with the
task's id, queue, attempt and outcome as attributes and the failure recorded as
an exception event. A task enqueued by a running task is enqueued inside its
CONSUMER span: follow-ups share the trace. While the span is current, the JSON
log lines of the task (and the handler's own) carry `trace_id` and `span_id`;
the lines written after it ended (`processed with status`) carry the ids the
outcome kept.

Spans go wherever the application's tracer provider sends them: configure the
SDK in a module `serve` imports (TASK_MODULES), or run under
`opentelemetry-instrument`. Without OpenTelemetry installed this module imports
nothing of it: `enabled()` is false, an enqueue leaves `trace_context` NULL, and
a worker has no tracer, so it does nothing more per task than before.
"""
from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from . import __version__

if TYPE_CHECKING:
    from .processor.outcomes import Outcome
    from .store.admin import Placement
    from .store.tasks import ClaimedTask

SYSTEM = "taskworker"  # messaging.system
DEFAULT_NAME = "taskworker.default"  # the span name of a task without a name (TASK_HANDLER)

_enabled: bool | None = None  # decided on first use (see enabled)
ASK_EVERY = 1.0  # seconds between a worker's asks whether a tracer provider is set


def enabled() -> bool:
    """Is OpenTelemetry's API installed? Decided once per process, without
    importing it when it is not there (a namespace package found without its
    `trace` module counts as not installed)."""
    global _enabled
    if _enabled is None:
        _enabled = False
        try:
            if importlib.util.find_spec("opentelemetry") is not None:
                import opentelemetry.propagate  # noqa: F401
                import opentelemetry.trace  # noqa: F401

                _enabled = True
        except (ImportError, ValueError):  # (ValueError: sys.modules holds a None)
            pass
    return _enabled


def _tracer() -> Any:
    from opentelemetry import trace

    return trace.get_tracer("taskworker", __version__)


class Producing:
    """One enqueue's span: `placement` carries its context to the rows; `sent`
    names the tasks inserted (and the workflow they make up, if any)."""

    def __init__(self, placement: Placement, span: Any = None) -> None:
        self.placement = placement
        self.span = span

    def sent(self, ids: Sequence[int], workflow_id: int | None = None) -> None:
        if self.span is not None and ids:
            if len(ids) == 1:
                self.span.set_attribute("messaging.message.id", str(ids[0]))
            else:
                self.span.set_attribute("messaging.batch.message_count", len(ids))
            if workflow_id is not None:
                self.span.set_attribute("taskworker.workflow.id", workflow_id)


@contextmanager
def _producing(placement: Placement, name: str,
               attributes: dict[str, str]) -> Iterator[Producing]:
    """The PRODUCER span `enqueue <name>`, its context put on `placement`."""
    from opentelemetry import propagate, trace

    with _tracer().start_as_current_span(
            f"enqueue {name}", kind=trace.SpanKind.PRODUCER,
            attributes={"messaging.system": SYSTEM, "messaging.operation.type": "send",
                        **attributes}) as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        trace_context = json.dumps(carrier, separators=(",", ":")) if carrier else None
        yield Producing(placement._replace(trace=trace_context), span)


class _Untraced:
    """What `producing` gives without OpenTelemetry: the placement as it is."""

    def __init__(self, placement: Placement) -> None:
        self.produced = Producing(placement)

    def __enter__(self) -> Producing:
        return self.produced

    def __exit__(self, *exc: object) -> None:
        return None


def producing(placement: Placement) -> Any:
    """A context manager around an enqueue's inserts: a PRODUCER span (with
    OpenTelemetry and a tracer provider set) whose context the yielded
    `Producing.placement` carries to the rows; else the placement unchanged."""
    if not enabled() or not provided():
        return _Untraced(placement)
    name = placement.task or DEFAULT_NAME
    return _producing(placement, name, {"messaging.destination.name": placement.queue,
                                        "taskworker.task.name": name})


def producing_workflow(kind: str, queues: Sequence[str]) -> Any:
    """`producing` for a workflow's inserts: one PRODUCER span, `enqueue chain`
    (or `group`), whose context every row of the workflow carries, so that its
    members' runs share one trace. Its destination is the tasks' queue when they
    share one (the span has none otherwise)."""
    from .store.admin import Placement

    if not enabled() or not provided():
        return _Untraced(Placement())
    destination = {"messaging.destination.name": queues[0]} if len(set(queues)) == 1 else {}
    return _producing(Placement(), kind, {**destination, "taskworker.workflow.kind": kind})


_provided = False  # a tracer provider was seen set (it can be set once only)


def provided() -> bool:
    """Has the application set a tracer provider (the SDK's, configured by
    itself or by `opentelemetry-instrument`)? Until it does, the API's spans
    record nothing and propagate nothing, yet opening one costs about as much
    as running a no-op task: with OpenTelemetry merely installed (a dependency
    of a dependency), every task and every enqueue would pay for nothing.
    Asked at each use until the answer is yes, so a provider set later is
    still used (a worker asks at most once a second: see Consumer)."""
    global _provided
    if not _provided:
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        _provided = not isinstance(provider, (trace.ProxyTracerProvider,
                                              trace.NoOpTracerProvider))
    return _provided


def consumer() -> Consumer | None:
    """What a worker runs its tasks through (None without OpenTelemetry: the
    worker then runs them as before, with nothing added)."""
    if not enabled():
        return None
    from . import logs

    logs.span_fields = current_ids
    return Consumer()


class Consumer:
    """Runs each task in a CONSUMER span, child of its enqueue's context."""

    def __init__(self) -> None:
        from opentelemetry import propagate, trace

        self.tracer = _tracer()
        self.kind = trace.SpanKind.CONSUMER
        self.extract = propagate.extract
        self.status, self.error = trace.Status, trace.StatusCode.ERROR
        self.traced = provided()
        self.ask_after = time.monotonic() + ASK_EVERY  # (while not traced)

    def consume(self, task: ClaimedTask, n: int,
                run: Callable[[ClaimedTask, int], Outcome]) -> Outcome:
        """`run(task, n)` inside the task's span; its outcome, which keeps the
        span's ids for the lines logged after the span ended. No span while no
        tracer provider is set (see `provided`)."""
        if not self.traced:
            if time.monotonic() < self.ask_after:
                return run(task, n)
            self.traced, self.ask_after = provided(), time.monotonic() + ASK_EVERY
            if not self.traced:
                return run(task, n)
        parent = None
        if task.trace is not None:
            try:
                parent = self.extract(json.loads(task.trace))
            except ValueError:  # (written by hand, say): a root span instead
                parent = None
        with self.tracer.start_as_current_span(
                task.name or DEFAULT_NAME, context=parent, kind=self.kind,
                attributes={"messaging.system": SYSTEM, "messaging.operation.type": "process",
                            "messaging.destination.name": task.queue,
                            "messaging.message.id": str(task.id),
                            "taskworker.task.id": task.id,
                            "taskworker.task.name": task.name or DEFAULT_NAME,
                            "taskworker.queue": task.queue,
                            "taskworker.attempt": task.attempt,
                            "taskworker.worker": n}) as span:
            outcome = run(task, n)
            span.set_attribute("taskworker.outcome", outcome.kind)
            if outcome.error is not None and outcome.kind in ("error", "retry"):
                span.add_event("exception", exception_attributes(outcome.error,
                                                                 outcome.traceback))
                if outcome.kind == "error":
                    span.set_status(self.status(self.error, outcome.error[:1000]))
            outcome.trace = ids_of(span)
            return outcome


def exception_attributes(error: str, traceback: str | None) -> dict[str, str]:
    """The attributes of an `exception` event (as Span.record_exception writes
    them) from a stored failure: `Type: message` and its traceback, whose last
    line names the exception's class with its module (`myapp.tasks.Refused:
    ...`; a builtin's without one)."""
    from .results import exception_type

    message = error.partition(": ")[2]
    attributes = {"exception.type": exception_type(error, traceback),
                  "exception.message": message or error}
    if traceback:
        attributes["exception.stacktrace"] = traceback
    return attributes


def ids_of(span: Any) -> dict[str, str] | None:
    """A span's trace and span ids as the log lines carry them (hex), or None
    for a span that records nothing (no SDK configured)."""
    from opentelemetry.trace import format_span_id, format_trace_id

    context = span.get_span_context()
    if not context.is_valid:
        return None
    return {"trace_id": format_trace_id(context.trace_id),
            "span_id": format_span_id(context.span_id)}


def current_ids() -> Mapping[str, str] | None:
    """The current span's ids (see ids_of): what a log line written inside a
    task's span carries (logs.JsonFormatter)."""
    from opentelemetry import trace

    return ids_of(trace.get_current_span())

