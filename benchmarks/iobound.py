"""The I/O-bound handler of the hosts phase: TASK_HANDLER=benchmarks.iobound:sleep.

A cooperative 50 ms wait (gevent.sleep, as a call to a slow service would be under
gevent's monkey patching): a worker greenlet spends it waiting, not on the CPU, so
one process of WORKER_COUNT workers can finish at most WORKER_COUNT / 0.05 s tasks
a second, and every added host adds that much capacity.
"""
import time

import gevent

from . import task_clock

SECONDS = 0.05


def sleep(payload):
    gevent.sleep(SECONDS)
    return payload


def sleep_1s(payload):
    """The defaults phase's long I/O task: 1 s, for WORKER_COUNT=10000."""
    gevent.sleep(1.0)
    return payload


def timed_sleep(payload):
    """The rivals phase's task (benchmarks/task_clock.py): BENCH_SLEEP seconds,
    cooperative, its start and end recorded as every other system's task does."""
    start = time.time()
    gevent.sleep(task_clock.SLEEP)
    task_clock.record(start)
    return payload
