"""The task the soak phase runs (TASK_MODULES=benchmarks.soak_tasks): a no-op
called with about 1 KB of JSON arguments, as benchmarks/soak_feeder.py and the
soak's probes write them (format 2). `probe` marks the pickup probes, whose claim
a row trigger of the soak's own database records."""
import taskworker


@taskworker.task("soak")
def soak(n, order, probe=False):
    return None
