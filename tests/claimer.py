"""A claimer for the claim race in test_claim.py.

`claim_all()` runs the claim (taskworker.store.tasks.claim) under one holder name
until a claim comes back empty, and returns the ids it got. The test runs it in
threads of the pytest process, and this file as a script in child processes:

    python claimer.py plain URL HOLDER LIMIT     # one connection, plain psycopg2
    python claimer.py green URL PREFIX COUNT     # COUNT greenlets, one connection each

The script prints "ready", waits for a line on stdin (so every claimer starts at
the same moment), then prints {holder: [ids]} as JSON.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable


def claim_all(url: str, holder: str, limit: int,
              start: Callable[[], object] | None = None) -> list[int]:
    import psycopg2

    from taskworker.store import tasks
    from taskworker.store.database import Direct

    conn = psycopg2.connect(url, connect_timeout=10, application_name=holder)
    conn.autocommit = True
    ids: list[int] = []
    if start is not None:
        start()
    try:
        while True:
            rows = tasks.claim(Direct(conn), holder=holder, limit=limit, lease=300).rows
            claimed = [row.task for row in rows]
            if not claimed:
                return ids
            ids.extend(task.id for task in claimed)
    finally:
        conn.close()


def main(mode: str, url: str, name: str, number: str) -> None:
    if mode == "green":  # patch before psycopg2 connects, as taskworker.cooperative does
        from gevent import monkey

        monkey.patch_all()
        import gevent
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()
    print("ready", flush=True)
    sys.stdin.readline()  # go
    if mode == "plain":
        claimed = {name: claim_all(url, name, int(number))}
    else:
        jobs = {f"{name}-{n}": gevent.spawn(claim_all, url, f"{name}-{n}", 1 + n % 4)
                for n in range(int(number))}
        gevent.joinall(list(jobs.values()), raise_error=True)
        claimed = {holder: job.value for holder, job in jobs.items()}
    print(json.dumps(claimed), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
