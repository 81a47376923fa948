"""The raw SQL ceiling: pgbench running claim_complete.sql (claim with
SKIP LOCKED, then complete) against a tasks table made by `taskworker migrate`.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .databases import connect
from .processes import BenchError, run

HERE = Path(__file__).resolve().parent


def find_pgbench(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    found = shutil.which("pgbench")
    if found:
        return found
    candidates = glob.glob("/usr/lib/postgresql/*/bin/pgbench")
    newest = sorted(candidates, key=lambda p: int(re.sub(r"\D", "", p.split("/")[4]) or 0))
    return newest[-1] if newest else None


def pgbench_version(pgbench: str) -> str:
    out = subprocess.run([pgbench, "--version"], check=False, capture_output=True,
                         text=True).stdout
    return out.strip()


@dataclass
class Raw:
    batch: int
    clients: int
    transactions: int  # per client
    tps: float | None = None  # pgbench script runs per second
    rate: float | None = None  # tasks/s = tps x batch
    done: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.batch * self.clients * self.transactions


def claim_complete(pgbench: str, db_url: str, batch: int, transactions: int,
                   clients: int = 2) -> Raw:
    """Exactly clients x transactions x batch pending tasks, all claimed and done."""
    result = Raw(batch, clients, transactions)
    script = HERE / "claim_complete.sql"
    conn = connect(db_url)
    try:
        with conn.cursor() as cur:
            cur.execute("TRUNCATE tasks")
            cur.execute("INSERT INTO tasks (payload) "
                        "SELECT 'task ' || n FROM generate_series(1, %s) AS n", (result.n,))
            cur.execute("ANALYZE tasks")
        env = dict(os.environ, PGAPPNAME="twbench pgbench")
        code, out = run("pgbench", [pgbench, "-n", "-M", "prepared", "-f", str(script),
                                    "-D", f"batch={batch}",
                                    "-c", str(clients), "-j", str(clients),
                                    "-t", str(transactions), db_url], env, timeout=300)
        if code != 0:
            raise BenchError(f"pgbench exited {code}: {out.strip()[-500:]}")
        m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
        if not m:
            raise BenchError(f"no tps in pgbench output: {out.strip()[-500:]}")
        failed = re.search(r"number of failed transactions: (\d+)", out)
        if failed and int(failed.group(1)):
            result.notes.append(f"pgbench: {failed.group(1)} failed transactions")
        result.tps = float(m.group(1))
        result.rate = result.tps * batch
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM tasks WHERE status = 'done'")
            result.done = cur.fetchone()[0]
    finally:
        conn.close()
    if result.done != result.n:
        result.notes.append(f"{result.done} of {result.n} done (claims came back short)")
    return result
