"""The dashboard against what an attacker sends, over real HTTP to a real
`taskworker dashboard`: a database that refuses, whose 503 page names nothing
of the connection."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg2
from dashboard_client import running_dashboard
from invariants import query, wait_until
from test_dashboard import add


def test_no_page_names_the_connection_when_the_database_refuses(
        db_url: str, db: Any, pg_base_url: str, tmp_path: Path) -> None:
    """The test's own database stops taking connections (ALLOW_CONNECTIONS false,
    and the dashboard's sessions in it ended): every page is a 503 saying the
    database cannot be reached, without its URL, host, port, user, database name
    or password; the log says what happened, once."""
    m = re.fullmatch(r"postgresql://([^@:]+)@([^:/]+):(\d+)/(\w+)", db_url)
    assert m, db_url
    user, host, port, name = m.groups()
    secret_url = f"postgresql://{user}:Sup3rSecretPw@{host}:{port}/{name}"
    [task_id] = add(db, 1, status="error", error="boom")
    with running_dashboard(secret_url, tmp_path, {"CONNECT_TIMEOUT": "2"}) as d:
        c = d.client()
        wait_until(lambda: "counted" in c.get("/overview/live").text, 20, "a sample")
        admin = psycopg2.connect(pg_base_url)  # (a database cannot refuse its own sessions)
        admin.autocommit = True
        query(admin, f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        try:
            others = "FROM pg_stat_activity WHERE datname = %s AND pid <> %s"
            keep = (name, db.get_backend_pid())  # this test's own session stays
            query(admin, f"SELECT pg_terminate_backend(pid) {others}", keep)
            wait_until(lambda: query(admin, f"SELECT count(*) {others}", keep) == [(0,)],
                       10, "the dashboard's sessions to end")
            for path in ("/", "/overview/live", "/tasks", f"/tasks/{task_id}",
                         f"/tasks/{task_id}/raw/error", "/schedules"):
                down = c.get(path)
                for shown in (secret_url, "postgresql:", "Sup3rSecretPw", name, f":{port}",
                              host, f"user {user}", f'"{user}"', "FATAL"):
                    assert shown not in down.body, (path, shown, down.text)
                assert down.status == 503, (path, down)
                assert "cannot connect to the database" in down.text, (path, down.text)
            posted = c.confirm(f"/actions/retry?id={task_id}")
            assert posted.status == 503 and "cannot connect to the database" in posted.text
            assert name not in posted.body and f":{port}" not in posted.body
        finally:
            query(admin, f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
            admin.close()
        assert wait_until(lambda: c.get("/tasks").status == 200, 20, "the pages to recover")
        out = d.output()
    refused = re.findall(r"Dashboard: cannot connect to database (\S+): (.*)$", out, re.M)
    assert len(refused) == 1, out
    assert name in refused[0][0] and "not currently accepting connections" in refused[0][1]
    assert "Sup3rSecretPw" not in out and "Traceback" not in out
