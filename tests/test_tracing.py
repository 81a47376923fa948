"""Traces across the queue (tracing.py, migration 014): a PRODUCER span at
enqueue whose context the row keeps, a CONSUMER span per run whose parent it is,
the JSON log lines of a task carrying its ids, and nothing of OpenTelemetry
without it.

Producers and workers are separate processes, as in production: a producer
script enqueues inside a span of its own and prints its spans; `serve` runs a
tasks module that configures the SDK (the in-memory exporter, whose spans a task
returns as its return value; or the OTLP/HTTP exporter, to a receiver this test
runs on loopback).
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from invariants import query, stray_traceback, wait_until
from proc import ServeProcess, child_env, importable

pytest.importorskip("opentelemetry.sdk")

TASKS = '''
import logging
import os

import psycopg2
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import taskworker

if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    exporter = OTLPSpanExporter()
else:
    exporter = InMemorySpanExporter()
provider = TracerProvider(resource=Resource.create())
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)


class Refused(Exception):
    pass


@taskworker.task("traced.ok")
def ok(x):
    logging.getLogger("traced").warning("inside ok(%s)", x)
    return x * 2


@taskworker.task("traced.fails")
def fails():
    raise Refused("no way")


@taskworker.task("traced.follow")
def follow():
    conn = psycopg2.connect(os.environ["DATABASE_URL"])
    with conn:
        ok.enqueue(conn, 5)
    conn.close()


@taskworker.task("traced.spans")
def spans():
    return [spanned(s) for s in exporter.get_finished_spans()]


def spanned(s):
    return {"name": s.name, "kind": s.kind.name, "trace_id": format(s.context.trace_id, "032x"),
            "span_id": format(s.context.span_id, "016x"),
            "parent": s.parent and format(s.parent.span_id, "016x"),
            "attributes": dict(s.attributes), "status": s.status.status_code.name,
            "events": [{"name": e.name, **dict(e.attributes)} for e in s.events]}
'''

# Enqueues as an application does, inside a span of its own; prints its spans.
PRODUCER = '''
import json, os, sys
import psycopg2
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider(resource=Resource.create())
provider.add_span_processor(SimpleSpanProcessor(exporter))
if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(provider)

import traced_tasks
import taskworker

conn = psycopg2.connect(os.environ["DATABASE_URL"])
with trace.get_tracer("app").start_as_current_span("request"):
    with conn:
        ids = {"ok": traced_tasks.ok.enqueue(conn, 21), "fails": traced_tasks.fails.enqueue(conn),
               "follow": traced_tasks.follow.enqueue(conn),
               "many": taskworker.enqueue_many(conn, ["a", "b"], task="traced.ok"),
               "chain": taskworker.chain(traced_tasks.ok.s(1), traced_tasks.ok.s(),
                                         traced_tasks.ok.s()).enqueue(conn).task_ids}
provider.shutdown()
print(json.dumps({"ids": ids, "spans": [
    {"name": s.name, "kind": s.kind.name, "trace_id": format(s.context.trace_id, "032x"),
     "span_id": format(s.context.span_id, "016x"), "attributes": dict(s.attributes)}
    for s in exporter.get_finished_spans()]}))
'''


def produce(db_url: str, path: dict[str, str], env: dict[str, str] | None = None) -> Any:
    done = subprocess.run([sys.executable, "-c", PRODUCER], capture_output=True, text=True,
                          timeout=60, check=False,
                          env=child_env({"DATABASE_URL": db_url, **path, **(env or {})}))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def finished(db: Any, ids: list[int]) -> bool:
    return query(db, "SELECT count(*) FROM tasks WHERE id = ANY(%s) AND status IN "
                     "('done', 'error')", (ids,))[0][0] == len(ids)


def test_spans_link_producer_and_worker(db_url: str, db: Any, serve: Any,
                                        tmp_path: Path) -> None:
    path = importable(tmp_path / "mods", {"traced_tasks": TASKS})
    made = produce(db_url, path)
    ids, producer = made["ids"], {s["name"]: s for s in made["spans"]}
    request = producer["request"]
    [sent] = [s for s in made["spans"] if s["name"] == "enqueue traced.ok"
              and "messaging.message.id" in s["attributes"]]
    assert sent["kind"] == "PRODUCER" and sent["trace_id"] == request["trace_id"]
    assert sent["attributes"]["messaging.destination.name"] == "default"
    assert sent["attributes"]["messaging.message.id"] == str(ids["ok"])
    batch = [s for s in made["spans"] if s["attributes"].get("messaging.batch.message_count")
             and s["name"] == "enqueue traced.ok"]
    assert len(batch) == 1 and batch[0]["attributes"]["messaging.batch.message_count"] == 2
    # The row keeps the producer span's context, as W3C traceparent.
    stored = dict(query(db, "SELECT id, trace_context->>'traceparent' FROM tasks"))
    assert stored[ids["ok"]].startswith(f"00-{sent['trace_id']}-{sent['span_id']}-")
    assert stored[ids["many"][0]] == stored[ids["many"][1]]

    p = serve(db_url, env={**path, "LOG_FORMAT": "json", "WORKER_COUNT": "1",
                           "FETCH_INTERVAL": "0.2"}, args=["--tasks", "traced_tasks"])
    every = [ids["ok"], ids["fails"], ids["follow"], *ids["many"], *ids["chain"]]
    wait_until(lambda: finished(db, every) and query(
        db, "SELECT count(*) FROM tasks WHERE task = 'traced.ok' AND status = 'done'")[0][0] == 7,
               30, "the tasks and the follow-up to finish", [p], fail_on_exit=True)
    import taskworker  # (no SDK here: OpenTelemetry's no-op API; nothing is stored)

    spans_id = taskworker.enqueue(db, task="traced.spans", args=[], force=True)
    assert query(db, "SELECT trace_context FROM tasks WHERE id = %s", (spans_id,)) == [(None,)]
    got = wait_until(lambda: query(db, "SELECT return_value FROM tasks WHERE id = %s AND "
                                       "status = 'done'", (spans_id,)), 30, "the spans", [p])
    consumed = {s["attributes"]["taskworker.task.id"]: s for s in got[0][0]
                if s["kind"] == "CONSUMER"}

    ran = consumed[ids["ok"]]
    assert ran["name"] == "traced.ok" and ran["kind"] == "CONSUMER"
    assert (ran["trace_id"], ran["parent"]) == (sent["trace_id"], sent["span_id"])
    assert ran["attributes"] == {
        "messaging.system": "taskworker", "messaging.operation.type": "process",
        "messaging.destination.name": "default", "messaging.message.id": str(ids["ok"]),
        "taskworker.task.id": ids["ok"], "taskworker.task.name": "traced.ok",
        "taskworker.queue": "default", "taskworker.attempt": 1, "taskworker.worker": 1,
        "taskworker.outcome": "done"}
    failed = consumed[ids["fails"]]
    assert failed["status"] == "ERROR" and failed["attributes"]["taskworker.outcome"] == "error"
    [event] = failed["events"]
    assert event["name"] == "exception"
    assert event["exception.type"] == "traced_tasks.Refused"
    assert event["exception.message"] == "no way"
    assert 'raise Refused("no way")' in event["exception.stacktrace"]
    # A task enqueued by a running task: its PRODUCER span is a child of the
    # running task's CONSUMER span, and the follow-up's run continues the trace.
    follow = consumed[ids["follow"]]
    [then] = [s for s in got[0][0] if s["kind"] == "PRODUCER"]
    assert (then["trace_id"], then["parent"]) == (follow["trace_id"], follow["span_id"])
    [followed] = [s for s in consumed.values() if s["parent"] == then["span_id"]]
    assert followed["trace_id"] == request["trace_id"] and followed["name"] == "traced.ok"
    # A chain: one PRODUCER span, child of the request, whose context every row of
    # the chain keeps; its members run (one after another, in this worker and as
    # the trigger releases them) as CONSUMER spans of that span, in its trace.
    [chained] = [s for s in made["spans"] if s["name"] == "enqueue chain"]
    assert chained["kind"] == "PRODUCER" and chained["trace_id"] == request["trace_id"]
    assert chained["attributes"]["messaging.batch.message_count"] == 3
    assert chained["attributes"]["taskworker.workflow.kind"] == "chain"
    assert {tuple(stored[i].split("-")[1:3]) for i in ids["chain"]} == {
        (chained["trace_id"], chained["span_id"])}
    members = [consumed[i] for i in ids["chain"]]
    assert [(m["trace_id"], m["parent"], m["name"]) for m in members] == [
        (request["trace_id"], chained["span_id"], "traced.ok")] * 3
    assert query(db, "SELECT return_value FROM tasks WHERE id = %s",
                 (ids["chain"][-1],)) == [(8,)]

    # Every JSON line about the task carries its span's ids, the handler's own
    # line and `processed with status` (logged after the span ended) included.
    lines = [json.loads(line) for line in p.output().splitlines()]
    about = [r for r in lines if r.get("task_id") == ids["ok"] or "inside ok(21)" in r["message"]]
    said = " | ".join(r["message"] for r in about)
    for line in ("Processing task ID", "Finished task ID", "inside ok(21)",
                 "processed with status: done"):
        assert line in said, said
    for r in about:
        assert (r["trace_id"], r["span_id"]) == (ran["trace_id"], ran["span_id"]), r
    assert not any("trace_id" in r for r in lines if "task_id" not in r
                   and "inside" not in r["message"])  # (the process's own lines: none)
    assert not [r for r in lines if r["level"] == "error"]
    p.signal(2)
    assert p.wait() == 0


class Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver: keeps each export request's body."""

    bodies: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            self.bodies.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[bytes]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    Receiver.bodies = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", Receiver.bodies
    server.shutdown()
    server.server_close()


def received(bodies: list[bytes]) -> list[dict[str, Any]]:
    """The spans of every export request so far, with their service's name."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    spans = []
    for body in list(bodies):
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            service = {a.key: a.value.string_value
                       for a in resource.resource.attributes}.get("service.name")
            for scope in resource.scope_spans:
                for s in scope.spans:
                    spans.append({"service": service, "name": s.name, "kind": s.kind,
                                  "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                                  "parent": s.parent_span_id.hex()})
    return spans


def test_otlp_http_from_producer_process_to_worker_process(
        db_url: str, db: Any, serve: Any, tmp_path: Path,
        receiver: tuple[str, list[bytes]]) -> None:
    endpoint, bodies = receiver
    path = importable(tmp_path / "mods", {"traced_tasks": TASKS})
    otlp = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint}
    made = produce(db_url, path, {**otlp, "OTEL_SERVICE_NAME": "shop-web"})
    p = serve(db_url, env={**path, **otlp, "OTEL_SERVICE_NAME": "shop-worker",
                           "FETCH_INTERVAL": "0.2"}, args=["--tasks", "traced_tasks"])
    ok_id = made["ids"]["ok"]

    def linked() -> Any:
        spans = received(bodies)
        sent = [s for s in spans if s["service"] == "shop-web" and s["name"] == "enqueue traced.ok"
                and s["kind"] == 4]  # SPAN_KIND_PRODUCER
        runs = [s for s in spans if s["service"] == "shop-worker" and s["kind"] == 5]  # CONSUMER
        return [(a, b) for a in sent for b in runs if b["parent"] == a["span_id"]
                and b["trace_id"] == a["trace_id"]]

    pairs = wait_until(linked, 30, "a worker's CONSUMER span, child of the producer's span",
                       [p], fail_on_exit=True)
    stored = query(db, "SELECT trace_context->>'traceparent' FROM tasks WHERE id = %s",
                   (ok_id,))[0][0]
    assert any(stored.startswith(f"00-{a['trace_id']}-{a['span_id']}-") for a, _ in pairs)
    p.signal(2)
    assert p.wait() == 0 and not stray_traceback(p.output())


# Runs `taskworker` (or a producer) with OpenTelemetry made unimportable, as if
# it were not installed; says at exit which of its modules were imported.
WITHOUT = '''
import atexit, sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, NotInstalled())
atexit.register(lambda: print("opentelemetry modules:",
                              sorted(m for m in sys.modules if m.startswith("opentelemetry")),
                              flush=True))
if sys.argv[1] == "serve":
    import runpy
    sys.argv = ["taskworker", "serve"]
    runpy.run_module("taskworker", run_name="__main__")
else:
    import os, psycopg2, taskworker
    conn = psycopg2.connect(os.environ["DATABASE_URL"])
    with conn:
        print(taskworker.enqueue(conn, "plain"))
'''


def test_without_opentelemetry_nothing_is_imported_or_stored(
        db_url: str, db: Any, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", WITHOUT, "enqueue"], capture_output=True,
                          text=True, timeout=60, check=False,
                          env=child_env({"DATABASE_URL": db_url}))
    assert done.returncode == 0, done.stderr
    task_id = int(done.stdout.splitlines()[0])
    assert "opentelemetry modules: []" in done.stdout
    script = tmp_path / "without.py"
    script.write_text(WITHOUT)
    q = ServeProcess([], {"DATABASE_URL": db_url, "LOG_FORMAT": "json", "TASK_MIN_SECONDS": "0",
                          "TASK_MAX_SECONDS": "0", "TASK_FAILURE_RATE": "0"},
                     str(tmp_path), str(tmp_path / "without.log"),
                     command=[sys.executable, str(script), "serve"])
    try:
        wait_until(lambda: query(db, "SELECT status FROM tasks WHERE id = %s",
                                 (task_id,)) == [("done",)], 30, "the task to run", [q],
                   fail_on_exit=True)
        q.signal(2)
        assert q.wait() == 0
    finally:
        q.kill()
    assert "opentelemetry modules: []" in q.output()
    assert query(db, "SELECT trace_context FROM tasks WHERE id = %s", (task_id,)) == [(None,)]
    records = [json.loads(line) for line in q.output().splitlines() if line.startswith("{")]
    assert any(r.get("task_id") == task_id for r in records)
    assert not any("trace_id" in r for r in records)


# OpenTelemetry installed, no tracer provider set yet: an enqueue and a run open
# no span (they would record and propagate nothing, at a cost); once the
# application sets one, the next do.
LATE_PROVIDER = '''
import json, os, time, psycopg2, taskworker
from opentelemetry import trace
from taskworker import tracing
from taskworker.store.tasks import ClaimedTask

conn = psycopg2.connect(os.environ["DATABASE_URL"])
seen = []

def run(task, n):
    seen.append(trace.get_current_span().get_span_context().is_valid)
    from taskworker.processor.outcomes import Outcome
    return Outcome(task, n, "done")

consumer = tracing.consumer()
opened = []  # spans asked of the API, by an enqueue or a run
real_span, real_tracer = consumer.tracer.start_as_current_span, tracing._tracer
consumer.tracer.start_as_current_span = lambda *a, **k: (opened.append("run"),
                                                         real_span(*a, **k))[1]
tracing._tracer = lambda: (opened.append("enqueue"), real_tracer())[1]
with conn:
    before = taskworker.enqueue(conn, "before")
consumer.consume(ClaimedTask(1, "p", 1, 0), 1, run)

from opentelemetry.sdk.trace import TracerProvider
trace.set_tracer_provider(TracerProvider())
with conn:
    after = taskworker.enqueue(conn, "after")
while not seen[-1]:  # a worker asks again within tracing.ASK_EVERY
    consumer.consume(ClaimedTask(2, "p", 1, 0), 1, run)
    time.sleep(0.01)
print(json.dumps({"before": before, "after": after, "spans": seen, "opened": opened}))
'''


def test_no_span_until_a_tracer_provider_is_set(db_url: str, db: Any) -> None:
    done = subprocess.run([sys.executable, "-c", LATE_PROVIDER], capture_output=True,
                          text=True, timeout=60, check=False,
                          env=child_env({"DATABASE_URL": db_url}))
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout.splitlines()[-1])
    spans = made["spans"]  # the runs had a span only once a provider was set
    assert spans[0] is False and spans[-1] is True and spans.count(True) == 1
    assert made["opened"] == ["enqueue", "run"]  # none opened before: nothing paid for
    contexts = dict(query(db, "SELECT payload, trace_context FROM tasks"))
    assert contexts["before"] is None
    assert "traceparent" in contexts["after"]  # (jsonb: read as a dict)
