"""The tasks of the workflow benchmark (TASK_MODULES=benchmarks.workflow_tasks)."""
import taskworker


@taskworker.task("bench_member")
def member(n):
    return n


@taskworker.task("bench_total")
def total(values):
    return sum(values)


@taskworker.task("bench_step")
def step(x, lone=None):  # lone: the lone tasks' count (the harness enqueues the next)
    return x + 1
