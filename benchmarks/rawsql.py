"""The raw SQL ceiling: pgbench running taskworker's own claim (SKIP LOCKED) and
completion statements, in batches, against a tasks table made by `taskworker
migrate`.

The pgbench script is built at run time from taskworker.store.sql.QUERIES, so it
is always the SQL that taskworker sends (no hand copy to drift). Each psycopg2
parameter `%(name)s` of the two statements is replaced by its entry in VALUES.
`python -m benchmarks.rawsql` prints the script.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from psycopg2.extensions import cursor

from taskworker.store.sql import QUERIES

from .databases import connect
from .processes import BenchError, run, workdir


@dataclass(frozen=True)
class PerTask:
    """An array parameter of the completion, one element per claimed task: `expr`
    over the claim's RETURNING columns (id, payload, attempts, rescues, fence, ...). The script
    aggregates it into an array literal right after the claim, \\gset stores that
    in a pgbench variable of the parameter's name, and the completion uses it."""

    expr: str


# The value of every parameter of the claim and complete statements, in one place:
# SQL text put in the statement (a literal, or the pgbench variable :batch, set by
# `pgbench -D batch=N`), or a PerTask array. A parameter not listed here stops the
# run with a message naming it.
VALUES: dict[str, str | PerTask] = {
    "limit": ":batch",  # claim size
    # claim_shares, as a busy process sends it: the one queue, its share the batch,
    # tasks without a name (the default handler).
    "queues": "ARRAY['default']",
    "shares": "ARRAY[:batch]",
    "names": "ARRAY['']",
    # No bound (a busy process's first claim_shares of a queue reads it from its
    # start; pgbench keeps no state from one claim to the next).
    "from_priorities": "ARRAY[NULL::int]",
    "from_run_ats": "ARRAY[NULL::timestamptz]",
    "from_ids": "ARRAY[NULL::bigint]",
    "holder": "'pgbench'",  # locked_by, and the completion's fence on it
    "lease": "30",  # seconds
    "inline_bytes": "41943",  # payloads loaded with the claim, as serve's at FETCH_LIMIT 100
    # The completion: every claimed task done, with its payload as the result.
    "ids": PerTask("id"),
    "fences": PerTask("fence"),
    "statuses": PerTask("'done'::text"),
    "results": PerTask("payload"),
    "errors": PerTask("NULL::text"),
    "delays": PerTask("NULL::float8"),
    "given_back": PerTask("false"),
    "losses": PerTask("rescues + unstarted_rescues"),
    "tracebacks": PerTask("NULL::text"),
}

# -M prepared saves parsing, but after five runs the server may switch a prepared
# statement to a generic plan, made without the parameters' values. taskworker
# sends its statements with the values in (psycopg2), planned for them each time;
# for the completion the generic plan (unnest() guessed at 10 rows: a nested loop
# over the batch) took about 15 ms for 100 tasks, the custom one (hash join) 1 ms.
# The claim is sent behind the planner settings of ordered_plans (only ordered
# index scans, no JIT), as taskworker sends it: here they hold for the session.
PGOPTIONS = " ".join(
    ["-c plan_cache_mode=force_custom_plan"]
    + [f"-c {name}={value}" for name, value in
       re.findall(r"SET LOCAL (\w+) = (\w+);", QUERIES["ordered_plans"])])

_PARAM = re.compile(r"%\((\w+)\)s|%%")


def to_pgbench(name: str) -> tuple[str, dict[str, PerTask]]:
    """QUERIES[name] with each `%(param)s` replaced by its VALUES entry (`%%` becomes
    `%`), and the PerTask parameters it uses, in order of first use; those become the
    pgbench variable of their name."""
    per_task: dict[str, PerTask] = {}
    missing: list[str] = []

    def replace(m: re.Match[str]) -> str:
        param = m.group(1)
        if param is None:
            return "%"
        value = VALUES.get(param)
        if value is None:
            if param not in missing:
                missing.append(param)
            return m.group(0)
        if isinstance(value, PerTask):
            per_task[param] = value
            return f":{param}"
        return value

    text = _PARAM.sub(replace, QUERIES[name]).strip().rstrip(";").rstrip()
    if missing:
        raise BenchError(
            f"taskworker's {name!r} statement (taskworker/store/queries.sql) has "
            f"parameter(s) {', '.join(f'%({p})s' for p in missing)} that the raw SQL "
            "benchmark has no value for: add them to VALUES in benchmarks/rawsql.py")
    return text, per_task


CLAIM = "claim_shares"  # the claim a busy process sends (see queries.sql)
_FINAL = re.compile(r"^\(?SELECT\b", re.MULTILINE)  # a statement's last part, unindented


def pgbench_script() -> str:
    """One worker round in batches of :batch tasks: the claim, then, in a second
    transaction, the completion of every task it returned.

    The claim is a WITH of data-modifying parts, which may not be nested in
    another WITH: its final SELECT becomes one more part, `result`, and the
    script's own SELECT aggregates that."""
    claim, in_claim = to_pgbench(CLAIM)
    if in_claim:
        raise BenchError(
            f"taskworker's {CLAIM!r} statement has parameter(s) {', '.join(in_claim)}, "
            "which VALUES in benchmarks/rawsql.py gives per claimed task: the claim "
            "needs plain values")
    final = _FINAL.search(claim)
    if not claim.startswith("WITH") or final is None:
        raise BenchError(f"taskworker's {CLAIM!r} statement is not a WITH ... SELECT: "
                         "benchmarks/rawsql.py cannot wrap it")
    complete, arrays = to_pgbench("complete")
    # One row of aggregates over the claimed rows: the aggregates of one SELECT see
    # the rows in the same order, so the arrays line up element by element.
    # coalesce: an empty claim gives '{}', not NULL.
    columns = ",\n       ".join(
        f"coalesce(array_agg({v.expr})::text, '{{}}') AS {p}" for p, v in arrays.items())
    return (
        "-- pgbench script built by benchmarks/rawsql.py from taskworker's claim and\n"
        "-- complete statements (taskworker/store/queries.sql); run with -D batch=N.\n"
        f"{claim[:final.start()].rstrip()},\nresult AS (\n{claim[final.start():]}\n)\n"
        f"SELECT {columns or 'count(*) AS claimed'}\nFROM result\n\\gset\n"
        f"{complete};\n")


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


def fill(cur: cursor, table: str, n: int, analyze: bool = True, truncate: bool = True) -> None:
    """`table` emptied (unless not `truncate`: rows kept), then n pending rows
    ('task 1', ...), analyzed."""
    if truncate:
        cur.execute(f"TRUNCATE {table}")
    cur.execute(f"INSERT INTO {table} (payload) "
                "SELECT 'task ' || n FROM generate_series(1, %s) AS n", (n,))
    if analyze:
        cur.execute(f"ANALYZE {table}")


def script_file(name: str, text: str) -> str:
    """The path of a pgbench script `name` written with `text` in the run's
    work folder."""
    path = os.path.join(workdir(), name)
    with open(path, "w") as fh:
        fh.write(text)
    return path


def run_script(pgbench: str, script: str, db_url: str, batch: int, clients: int,
               transactions: int, pgoptions: str, notes: list[str],
               name: str = "twbench pgbench") -> float:
    """pgbench running `script` (-M prepared, -D batch=N) from `clients` clients,
    `transactions` each, with `pgoptions` added to PGOPTIONS: its tps (without
    the initial connection time); failed transactions are noted."""
    env = dict(os.environ, PGAPPNAME=name,
               PGOPTIONS=f"{os.environ.get('PGOPTIONS', '')} {pgoptions}".strip())
    code, out = run("pgbench", [pgbench, "-n", "-M", "prepared", "-f", script,
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
        notes.append(f"pgbench: {failed.group(1)} failed transactions")
    return float(m.group(1))


def claim_complete(pgbench: str, db_url: str, batch: int, transactions: int,
                   clients: int = 2) -> Raw:
    """Exactly clients x transactions x batch pending tasks, all claimed and done."""
    result = Raw(batch, clients, transactions)
    script = script_file("claim_complete.sql", pgbench_script())
    conn = connect(db_url)
    try:
        with conn.cursor() as cur:
            fill(cur, "tasks", result.n)
        result.tps = run_script(pgbench, script, db_url, batch, clients, transactions,
                                PGOPTIONS, result.notes)
        result.rate = result.tps * batch
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM tasks WHERE status = 'done'")
            result.done = cur.fetchone()[0]
    finally:
        conn.close()
    if result.done != result.n:
        result.notes.append(f"{result.done} of {result.n} done (claims came back short)")
    return result


if __name__ == "__main__":
    print(pgbench_script(), end="")
