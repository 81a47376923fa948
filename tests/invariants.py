"""What the tests check afterwards, and how they set up for it: tasks rows in a
chosen state, polling until something holds, the fault-injection tests' audits.

Plain blocking psycopg2 against the test database, and regexes over the serve
logs: no gevent, no taskworker import. The `completions` audit table is filled by
a trigger, so "a task was marked done at most once" is checked by the database
itself, not inferred from log lines a killed process may never have printed.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from proc import ServeProcess, importable
from waiting import tail, wait_until  # (imported from here by the tests too)

TESTS_DIR = Path(__file__).resolve().parent

# Settings for fast, deterministic runs; a test overrides what it exercises.
FAST = {
    "TASK_MIN_SECONDS": "0",
    "TASK_MAX_SECONDS": "0",
    "TASK_FAILURE_RATE": "0",
    "FETCH_INTERVAL": "0.3",
    "LEASE_SECONDS": "3",
    "LOG_LEVEL": "INFO",
}

DONE_LINE = r"Task ID: (\d+) processed with status: done"
LEASE_LOST_LINE = r"Task ID: (\d+) lease lost, result discarded"
# A trigger that refuses one result: the statement that writes it fails whole.
REFUSED_RESULT = "a result the table refuses"
REFUSE_RESULT = f"""
CREATE FUNCTION refuse_result() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'results like this are not allowed';
END $$;
CREATE TRIGGER refuse_result BEFORE UPDATE ON tasks FOR EACH ROW
    WHEN (NEW.result = '{REFUSED_RESULT}') EXECUTE FUNCTION refuse_result();
"""
RESCUED_LINE = r"Rescued \d+ tasks whose worker stopped responding: ([\d, ]+)"


def handler_env(name: str, **env: str) -> dict[str, str]:
    """Environment that makes serve run handlers_for_tests:<name>."""
    return {**importable(TESTS_DIR), "TASK_HANDLER": f"handlers_for_tests:{name}", **env}


def insert_tasks(db: Any, payloads: Sequence[str | None]) -> list[int]:
    """Insert pending tasks in this order in one statement; return their ids."""
    with db.cursor() as cur:
        cur.execute("INSERT INTO tasks (payload) SELECT p FROM unnest(%s::text[]) "
                    "WITH ORDINALITY AS u(p, n) ORDER BY n RETURNING id", (list(payloads),))
        return sorted(row[0] for row in cur.fetchall())


def query(db: Any, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run `statement`; return its rows ([] for a statement that returns none)."""
    with db.cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchall() if cur.description is not None else []


def add_task(db: Any, payload: str = "p", status: str = "pending", age: str = "0s",
             **columns: Any) -> int:
    """Insert one task in `status`, last changed `age` ago (a Postgres interval); return its id."""
    columns = {"payload": payload, "status": status, **columns}
    names = ", ".join(columns)
    marks = ", ".join(["%s"] * len(columns))
    (task_id,) = query(db, f"INSERT INTO tasks ({names}, updated_at) "
                           f"VALUES ({marks}, now() - %s::interval) RETURNING id",
                       [*columns.values(), age])[0]
    return task_id


def running_task(db: Any, holder: str = "host-a:101:abcd1234", lease: str = "20 seconds",
                 started: bool = True) -> int:
    """Insert one task in progress, claimed by `holder`, its lease ending in `lease`;
    its handler started a second ago, or (`started` False) not yet: started_at
    NULL, as a claim leaves it while it waits in its process's local queue."""
    return add_task(db, "running", "in_progress", attempts=1, locked_by=holder,
                    locked_until=query(db, f"SELECT now() + interval '{lease}'")[0][0],
                    started_at=query(db, "SELECT now() - interval '1 second'")[0][0]
                    if started else None)


def task_row(db: Any, task_id: int) -> dict[str, Any] | None:
    """Every column of one task, or None when there is no such task."""
    with db.cursor() as cur:
        cur.execute("SELECT * FROM tasks WHERE id = %s", (task_id,))
        found = cur.fetchone()
        names = [d[0] for d in cur.description]
        return None if found is None else dict(zip(names, found, strict=True))


def tasks(db: Any) -> dict[int, dict[str, Any]]:
    """Every task row by id, as dicts."""
    with db.cursor() as cur:
        cur.execute("SELECT id, payload, status, result, error, attempts, rescues, "
                    "unstarted_rescues, locked_by, locked_until FROM tasks ORDER BY id")
        names = [d[0] for d in cur.description]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}


def limit(db: Any, role: str, connections: int) -> None:
    """Set `role`'s CONNECTION LIMIT (the `role` fixture's role, say)."""
    query(db, f"ALTER ROLE {role} CONNECTION LIMIT {connections}")


def connections_of(db: Any, role: str) -> list[str]:
    """The application_name of each connection `role` has open now."""
    return [r[0] for r in query(db, "SELECT application_name FROM pg_stat_activity "
                                    "WHERE usename = %s", (role,))]


def status_counts(db: Any) -> dict[str, int]:
    return dict(query(db, "SELECT status, count(*) FROM tasks GROUP BY status"))


def wait_finished(db: Any, timeout: float, procs: Iterable[ServeProcess] = ()) -> None:
    """Wait until no task is pending or in progress."""
    procs = list(procs)
    wait_until(lambda: not ({"pending", "in_progress"} & status_counts(db).keys()), timeout,
               lambda: f"every task to finish (now {status_counts(db)})", procs)


def wait_lines(proc: ServeProcess, pattern: str, count: int, timeout: float = 30) -> list[str]:
    """Wait until `pattern` matches at least `count` times in the log; return the matches."""
    return wait_until(lambda: (found := re.findall(pattern, proc.output()))[count - 1:] and found,
                      timeout, f"{count} x {pattern!r}", [proc])


def ids_in(text: str, pattern: str) -> list[int]:
    """Task ids captured by `pattern` (group 1), in log order, repeats kept."""
    found = []
    for m in re.finditer(pattern, text):
        found.extend(int(x) for x in re.findall(r"\d+", m.group(1)))
    return found


def assert_each_done_line_once(logs: Iterable[str]) -> Counter[int]:
    """No task is reported done more than once across all logs; return the counts."""
    counts: Counter[int] = Counter()
    for text in logs:
        counts.update(ids_in(text, DONE_LINE))
    twice = sorted(i for i, n in counts.items() if n > 1)
    assert not twice, f"tasks reported done more than once: {twice[:20]}"
    return counts


def backends_of(db: Any, pid: int) -> list[int]:
    """Server pids of the connections process `pid` has open to this database,
    matched by the local address and port of its TCP sockets (read from /proc
    while it lives; in its own network namespace, where it has one)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[len("socket:["):-1])
    addresses, ports = [], []
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    address, port = fields[1].split(":")
                    addresses.append(_address(address))
                    ports.append(int(port, 16))
    return [r[0] for r in query(
        db, "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND "
            "(host(client_addr), client_port) IN (SELECT * FROM unnest(%s::text[], %s::int[]))",
        (addresses, ports))]


def _address(hex_address: str) -> str:
    """An address as /proc/net/tcp{,6} writes it (32-bit words in host order)."""
    words = b"".join(int(hex_address[i:i + 8], 16).to_bytes(4, sys.byteorder)
                     for i in range(0, len(hex_address), 8))
    if words[:12] == b"\0" * 10 + b"\xff" * 2:  # IPv4 mapped into IPv6
        words = words[12:]
    return socket.inet_ntop(socket.AF_INET if len(words) == 4 else socket.AF_INET6, words)


def wait_statements_ended(db: Any, backends: Iterable[int], what: str,
                          timeout: float = 30) -> None:
    """Wait until none of `backends` runs a statement any more: what their process
    sent before it died, froze or was cut off has landed (committed, or rolled
    back), so what the table says it holds no longer changes by its hand."""
    backends = list(backends)
    assert backends, f"no connection of {what} found"
    wait_until(lambda: not query(db, "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s) "
                                     "AND state NOT LIKE 'idle%%'", (backends,)),
               timeout, f"the statements {what} had sent to end")


def install_completion_audit(db: Any) -> None:
    """Record every write that sets a task's status to done or error.

    completions(task_id, status, holder): holder is the locked_by the row had just
    before the write, i.e. which process's claim was completed.
    """
    with db.cursor() as cur:
        cur.execute("""
            CREATE TABLE completions (
                task_id bigint NOT NULL,
                status  text NOT NULL,
                holder  text,
                at      timestamptz NOT NULL DEFAULT clock_timestamp()
            );
            CREATE FUNCTION audit_completion() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO completions (task_id, status, holder)
                VALUES (NEW.id, NEW.status, OLD.locked_by);
                RETURN NULL;
            END;
            $$;
            CREATE TRIGGER tasks_audit_completion
                AFTER UPDATE ON tasks FOR EACH ROW
                WHEN (NEW.status IN ('done', 'error'))
                EXECUTE FUNCTION audit_completion();
        """)


def completions(db: Any) -> Counter[int]:
    return Counter(row[0] for row in query(db, "SELECT task_id FROM completions"))


def create_runs_table(db: Any) -> None:
    """The side table handlers_for_tests writes to each time it runs a task."""
    query_free(db, """
        CREATE TABLE runs (
            task_id bigint NOT NULL,
            pid     integer NOT NULL,
            attempt integer NOT NULL,
            note    text NOT NULL DEFAULT '',
            at      timestamptz NOT NULL DEFAULT clock_timestamp()
        )""")


def query_free(db: Any, statement: str, params: Any = None) -> None:
    """Run a statement that returns no rows."""
    with db.cursor() as cur:
        cur.execute(statement, params)


def assert_all_done_once(db: Any, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """Every task is done, its result is its reversed payload, nothing holds a
    lease, and (with the audit installed) it was completed exactly once."""
    rows = tasks(db)
    ids = list(ids)
    assert sorted(rows) == sorted(ids)
    not_done = {i: (r["status"], r["error"]) for i, r in rows.items() if r["status"] != "done"}
    assert not not_done, f"{len(not_done)} tasks not done: {dict(list(not_done.items())[:10])}"
    wrong = [i for i, r in rows.items() if r["result"] != r["payload"][::-1]]
    assert not wrong, f"wrong results for tasks {wrong[:20]}"
    locked = [i for i, r in rows.items() if r["locked_by"] or r["locked_until"]]
    assert not locked, f"finished tasks still hold a lease: {locked[:20]}"
    counts = completions(db)
    not_once = {i: counts.get(i, 0) for i in ids if counts.get(i, 0) != 1}
    assert not not_once, f"tasks not completed exactly once: {dict(list(not_once.items())[:20])}"
    return rows


def stop_all(procs: Iterable[ServeProcess], sig: int, timeout: float = 20) -> None:
    """Send `sig` to every process, then each must exit 0."""
    procs = list(procs)
    for p in procs:
        p.signal(sig)
    for p in procs:
        code = p.wait(timeout)
        assert code == 0, f"serve pid {p.pid} exited {code}:\n{tail(p.output())}"


# A line of a task's traceback, as serve logs it after the task's `failed:` line.
TASK_TRACEBACK_LINE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d Task ID: \d+ \| ")


def stray_traceback(out: str) -> bool:
    """Does `out` hold a traceback other than a task's own, logged as its lines
    marked `Task ID: N |` (a crash of serve, an uncaught error)?"""
    return any("Traceback" in line and not TASK_TRACEBACK_LINE.match(line)
               for line in out.splitlines())
