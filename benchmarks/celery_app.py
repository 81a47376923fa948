"""Celery as the rivals phase drives it (the only module that imports celery):

    celery -A benchmarks.celery_app worker -P gevent -c C     # the worker
    python -m benchmarks.celery_app enqueue COUNT             # COUNT tasks, then exit
    python -m benchmarks.celery_app clean                     # delete this run's keys/queue

Configured from the environment, so the worker and the harness's steps agree:
BENCH_BROKER (amqp://... or redis://...), BENCH_BACKEND (redis://..., or empty for
no result backend, Celery's default), BENCH_PREFIX (this run's queue name and Redis
key prefix, so that nothing another user keeps in the same broker is touched).
Everything else is Celery's default (prefetch multiplier 4, early ack, the
worker's events and heartbeats as they come).
"""
from __future__ import annotations

import os
import sys
import time

import gevent
from celery import Celery

from . import task_clock

PREFIX = os.environ.get("BENCH_PREFIX", "twbench_")
BROKER = os.environ.get("BENCH_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
BACKEND = os.environ.get("BENCH_BACKEND") or None
QUEUE = f"{PREFIX}celery"

app = Celery("twbench", broker=BROKER, backend=BACKEND)
app.conf.task_default_queue = QUEUE
if BROKER.startswith("redis"):
    app.conf.broker_transport_options = {"global_keyprefix": PREFIX}
if BACKEND:
    app.conf.result_backend_transport_options = {"global_keyprefix": PREFIX}
    app.conf.result_expires = 3600  # (a killed run's results do not stay for a day)


@app.task(name="twbench.sleep")
def sleep(payload: str) -> str:
    start = time.time()
    gevent.sleep(task_clock.SLEEP)
    task_clock.record(start)
    return payload


def enqueue(count: int) -> None:
    with app.producer_or_acquire() as producer:
        for i in range(count):
            sleep.apply_async((f"task {i + 1}",), producer=producer)


def clean() -> None:
    """Delete the queue and its exchange (RabbitMQ) or every key of this run's prefix
    (Redis). Celery's own shared exchanges (celeryev, celery.pidbox) stay."""
    if BROKER.startswith("amqp"):
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(QUEUE)
            conn.default_channel.exchange_delete(QUEUE)
    for url in {u for u in (BROKER, BACKEND) if u and u.startswith("redis")}:
        import redis

        client = redis.Redis.from_url(url)
        for key in client.scan_iter(match=f"{PREFIX}*", count=1000):
            client.delete(key)
        client.close()


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "enqueue":
        enqueue(int(rest[0]))
    elif command == "clean":
        clean()
    else:
        raise SystemExit(f"unknown command {command!r}")
