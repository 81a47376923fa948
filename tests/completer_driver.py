"""Runs taskworker's completer on given outcomes, for test_completions.py.

    python completer_driver.py URL HOLDER '[[task_id, fence, rescues, worker, result], ...]'

Patched as `taskworker serve` is, it makes a Completer for HOLDER, writes all the
outcomes (kind done) in one batch, and prints the completer's counters as JSON
on its last line; the completer's log lines come before it.
"""
from __future__ import annotations

import json
import sys


def main(url: str, holder: str, spec: str) -> None:
    from gevent import monkey

    monkey.patch_all()
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()
    from taskworker import logs
    from taskworker.processor.completer import Completer
    from taskworker.processor.dispatch import Dispatch
    from taskworker.processor.outcomes import DONE, Outcome
    from taskworker.settings import load
    from taskworker.store.tasks import ClaimedTask

    settings = load({"DATABASE_URL": url})
    logs.setup("INFO")
    dispatch = Dispatch(worker_count=2, lease=30)
    completer = Completer(settings, holder, dispatch, lambda: False)
    batch = [Outcome(ClaimedTask(task_id, "payload", fence, rescues, fence=fence), worker, DONE,
                     result=result)
             for task_id, fence, rescues, worker, result in json.loads(spec)]
    for outcome in batch:
        completer.put(outcome)
    completer.write(batch)
    print(json.dumps(completer.stats()), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
