"""The no-op handler the throughput runs use: TASK_HANDLER=benchmarks.noop:noop."""


def noop(payload):
    return payload
