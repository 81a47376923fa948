"""Three named no-op tasks for the baseline phase (TASK_MODULES=benchmarks.named_tasks):
the rows it inserts name them, in two queues, at priorities 0-4."""
import taskworker

NAMES = ("bench_a", "bench_b", "bench_c")


@taskworker.task("bench_a")
def bench_a(payload):
    return payload


@taskworker.task("bench_b")
def bench_b(payload):
    return payload


@taskworker.task("bench_c", queue="other")
def bench_c(payload):
    return payload
