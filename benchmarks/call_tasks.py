"""The no-op task the calls phase runs with JSON arguments
(TASK_MODULES=benchmarks.call_tasks): the rows it inserts are what
`bench_call.enqueue(conn, n, key="k")` writes (format 2)."""
import taskworker


@taskworker.task("bench_call")
def bench_call(n, key=""):
    return {"n": n, "key": key}
