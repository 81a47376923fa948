"""Through PgBouncer in transaction mode, with its stock settings: serve, every
admin command and the enqueue API work; LISTEN through the pooler is detected
and said in one line; LISTEN_DATABASE_URL gives the listener a direct
connection. (`migrate` goes direct: see docs/how-to/pgbouncer.md.)
"""
from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from invariants import (
    FAST,
    assert_all_done_once,
    completions,
    insert_tasks,
    install_completion_audit,
    query,
    stop_all,
    tasks,
    wait_finished,
    wait_until,
)
from pgbouncer import available, bouncer
from pgserver import free_port
from proc import ServeFactory, cli
from scrapes import scrape, value

import taskworker

pytestmark = pytest.mark.skipif(not available(), reason="pgbouncer is not installed "
                                "(.ci/run installs it: apt-get install pgbouncer)")

LISTEN_WARNING = ("LISTEN goes through a connection pooler (the server's backend pid is not "
                  "the one announced): in transaction mode (PgBouncer's usual) notifications "
                  "never arrive; set LISTEN_DATABASE_URL to a direct connection, or "
                  "LISTEN=false")


@pytest.fixture
def pooled(db_url: str) -> Iterator[str]:
    """`db_url` through a PgBouncer in transaction mode."""
    with bouncer(db_url) as via:
        yield via(db_url)


def test_serve_and_every_command_through_pgbouncer(pooled: str, db_url: str, db: Any,
                                                   serve: ServeFactory) -> None:
    install_completion_audit(db)
    # The enqueue API on the application's own connection through the pooler.
    app = psycopg2.connect(pooled)
    with app, app.cursor() as cur:
        api_ids = taskworker.enqueue_many(cur, [f"api {n}" for n in range(5)])
    app.close()
    code, out, err = cli(pooled, "enqueue", "cli 1", "cli 2")
    assert code == 0, err
    cli_ids = [int(i) for i in out.split()]
    code, out, err = cli(pooled, "cancel", str(cli_ids[1]))
    assert (code, out.strip()) == (0, f"Task {cli_ids[1]}: cancelled"), err

    # LISTEN=false: the fetcher polls; the statements carry their own timeout.
    p = serve(pooled, env={**FAST, "LISTEN": "false", "FETCH_INTERVAL": "0.2",
                           "STATEMENT_TIMEOUT": "5"})
    wait_finished(db, 30, [p])
    stop_all([p], signal.SIGINT)
    assert "unsupported startup parameter" not in p.output()
    done = [*api_ids, cli_ids[0]]
    assert completions(db) == dict.fromkeys(done, 1)  # each completed exactly once
    rows = tasks(db)
    assert {i: rows[i]["status"] for i in done} == dict.fromkeys(done, "done")
    assert rows[cli_ids[1]]["status"] == "cancelled"

    code, out, err = cli(pooled, "status", "--json")
    assert code == 0, err
    assert '"done": 6' in out and '"cancelled": 1' in out
    code, out, err = cli(pooled, "show", str(api_ids[0]))
    assert code == 0 and re.search(r"^status\s+done$", out, re.MULTILINE), out
    query(db, "UPDATE tasks SET status = 'error' WHERE id = %s", (api_ids[0],))
    assert cli(pooled, "retry", str(api_ids[0]))[1].strip() == "Retried 1 task"
    query(db, "UPDATE tasks SET status = 'done', updated_at = now() - interval '2 days'")
    code, out, err = cli(pooled, "prune", "--older-than", "1d")
    assert (code, out.strip()) == (0, "Deleted 7 tasks"), err
    code, out, err = cli(pooled, "seed", "--count", "3")
    assert code == 0 and "Inserted 3 pending tasks" in out, out + err
    assert query(db, "SELECT count(*) FROM tasks WHERE status = 'pending'") == [(3,)]
    # No session state was left on the pooled server connections.
    settings = query(db, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                         "current_database() AND state = 'idle in transaction'")
    assert settings == [(0,)]


def test_listen_through_the_pooler_is_detected(pooled: str, db: Any,
                                               serve: ServeFactory) -> None:
    p = serve(pooled, env={**FAST, "FETCH_INTERVAL": "0.5"})
    p.wait_for(re.escape(LISTEN_WARNING), timeout=15)
    ids = insert_tasks(db, ["found by polling"])
    wait_finished(db, 15, [p])  # the fetcher's polling still finds the work
    stop_all([p], signal.SIGINT)
    assert tasks(db)[ids[0]]["status"] == "done"
    assert p.output().count(LISTEN_WARNING) == 1


def test_listen_database_url_gives_the_listener_a_direct_connection(
        pooled: str, db_url: str, db: Any, serve: ServeFactory) -> None:
    """Everything else through the pooler, LISTEN direct: no warning, and a task
    inserted while the fetcher sleeps a long FETCH_INTERVAL is picked up at once."""
    install_completion_audit(db)
    port = free_port()
    p = serve(pooled, env={**FAST, "FETCH_INTERVAL": "60", "LISTEN_DATABASE_URL": db_url,
                           "METRICS_PORT": str(port)})
    p.wait_for(r"Serving metrics on ")
    # The listener's own check passed: its test notification came back (counted),
    # so no warning can follow, and it listens.
    wait_until(lambda: value(scrape(port), "taskworker_notifications_total") >= 1, 20,
               "the listener's test notification to come back", [p], fail_on_exit=True)
    ids = insert_tasks(db, ["woken by NOTIFY"])
    wait_finished(db, 30, [p])  # (without a NOTIFY: the next poll, 60 s away)
    stop_all([p], signal.SIGINT)
    assert LISTEN_WARNING not in p.output()
    assert_all_done_once(db, ids)
