"""The I/O-bound handler of the hosts phase: TASK_HANDLER=benchmarks.iobound:sleep.

A cooperative 50 ms wait (gevent.sleep, as a call to a slow service would be under
gevent's monkey patching): a worker greenlet spends it waiting, not on the CPU, so
one process of WORKER_COUNT workers can finish at most WORKER_COUNT / 0.05 s tasks
a second, and every added host adds that much capacity.
"""
import gevent

SECONDS = 0.05


def sleep(payload):
    gevent.sleep(SECONDS)
    return payload


def sleep_1s(payload):
    """The defaults phase's long I/O task: 1 s, for WORKER_COUNT=10000."""
    gevent.sleep(1.0)
    return payload
