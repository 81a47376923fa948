"""Pickup latency, the same way for every queue: an inserter adds one row at a
time and notes when each insert's commit returned; a row trigger (added to the
benchmark's own database only) notes clock_timestamp() when the row is claimed.
Latency = claim time - insert commit time, both from this machine's clock.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from psycopg2.extensions import connection

from .processes import BenchError


def install_claim_clock(conn: connection, table: str, claimed_from: str,
                        claimed_to: str) -> None:
    """Record when each row of `table` first goes from `claimed_from` to `claimed_to`."""
    with conn.cursor() as cur:
        cur.execute("""
            CREATE TABLE bench_claims (id bigint PRIMARY KEY, claimed_at timestamptz NOT NULL);
            CREATE FUNCTION bench_record_claim() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO bench_claims VALUES (NEW.id, clock_timestamp())
                ON CONFLICT DO NOTHING;
                RETURN NULL;
            END $$;""")
        cur.execute(f"""
            CREATE TRIGGER bench_record_claim AFTER UPDATE ON {table} FOR EACH ROW
            WHEN (OLD.status::text = '{claimed_from}' AND NEW.status::text = '{claimed_to}')
            EXECUTE FUNCTION bench_record_claim()""")


@dataclass
class Latency:
    """Milliseconds from an insert's commit to the row's claim."""
    rate: float  # inserts per second asked for (0: single tasks into an idle worker)
    achieved: float = 0.0  # inserts per second achieved
    values: list[float] = field(default_factory=list)
    missing: int = 0  # rows never claimed within the wait

    def pct(self, p: float) -> float | None:
        if not self.values:
            return None
        ordered = sorted(self.values)  # nearest rank
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _insert(cur, insert_sql: str) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    cur.execute(insert_sql)  # autocommit: returns after the commit
    t = time.time()
    return cur.fetchone()[0], t


def steady(conn: connection, insert_sql: str, rate: float, seconds: float) -> Latency:
    """Insert one row at a time at `rate` per second (on a fixed schedule)."""
    result = Latency(rate)
    inserted: list[tuple[int, float]] = []
    count = int(rate * seconds)
    with conn.cursor() as cur:
        start = time.monotonic()
        for i in range(count):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            inserted.append(_insert(cur, insert_sql))
        result.achieved = count / (time.monotonic() - start)
    _collect(conn, inserted, result)
    return result


def singles(conn: connection, insert_sql: str, repeats: int, pause: float) -> Latency:
    """One row into an idle worker, `repeats` times, `pause` s apart once claimed."""
    result = Latency(0)
    inserted: list[tuple[int, float]] = []
    with conn.cursor() as cur:
        for _ in range(repeats):
            time.sleep(pause)
            task_id, t = _insert(cur, insert_sql)
            inserted.append((task_id, t))
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                cur.execute("SELECT 1 FROM bench_claims WHERE id = %s", (task_id,))
                if cur.fetchone():
                    break
                time.sleep(0.002)
    _collect(conn, inserted, result)
    return result


def measure(conn: connection, insert_sql: str, rate: float, seconds: float, repeats: int,
            pause: float) -> tuple[Latency, Latency]:
    """Pickup latency into a consumer that is up and idle: (steady at `rate` per
    second for `seconds`, `repeats` single tasks), after two warm-up tasks."""
    singles(conn, insert_sql, 2, pause)  # warm-up, not counted
    single = singles(conn, insert_sql, repeats, pause)
    time.sleep(pause)
    return steady(conn, insert_sql, rate, seconds), single


def _collect(conn: connection, inserted: list[tuple[int, float]], result: Latency,
             wait: float = 10.0) -> None:
    ids = [i for i, _ in inserted]
    deadline = time.monotonic() + wait
    with conn.cursor() as cur:
        while True:
            cur.execute("SELECT id, extract(epoch FROM claimed_at) FROM bench_claims "
                        "WHERE id = ANY(%s)", (ids,))
            claimed = {i: float(t) for i, t in cur.fetchall()}
            if len(claimed) == len(ids) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    if not claimed:
        raise BenchError("no inserted row was claimed")
    result.values = [(claimed[i] - t) * 1000 for i, t in inserted if i in claimed]
    result.missing = len(ids) - len(claimed)
