"""The dashboard against what an attacker sends, over real HTTP to a real
`taskworker dashboard`: a Host it does not serve (DNS rebinding), ids that are
no task ids, redirect targets of another site; and a database that refuses,
whose 503 page names nothing of the connection.

Requests go through http.client with the Host header or the path given
verbatim, or a socket where http.client would add a header."""
from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import psycopg2
from dashboard_client import CSRF_FIELD, running_dashboard
from invariants import query, wait_until
from proc import run_cli
from test_dashboard import add
from test_dashboard_actions import statuses

from taskworker.settings import load

MAX_ID = 2**63 - 1


def raw_get(port: int, request: bytes) -> tuple[int, str]:
    """Send `request` as it is; the status and the body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode("utf-8", "replace")


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


def test_a_host_it_does_not_serve_is_refused_dns_rebinding(db_url: str, db: Any,
                                                           tmp_path: Path) -> None:
    """With the defaults (loopback, no authentication), a browser whose page of
    rebind.attacker.example was pointed at 127.0.0.1 sends that name as Host, and
    as Origin when it POSTs: refused (421, a plain line, logged), and the task it
    tried to retry is not retried. The loopback names, on any port, are served."""
    [task_id] = add(db, 1, status="error", error="boom")
    with running_dashboard(db_url, tmp_path) as d:
        c = d.client()
        attacker = f"rebind.attacker.example:{d.port}"
        page = c.get(f"/actions/retry?id={task_id}")  # a valid token, as a page would have
        token = CSRF_FIELD.search(page.body)
        assert page.status == 200 and token
        form = {"id": task_id, "csrf": token.group(1)}
        rebound = c.post("/actions/retry", form,
                         headers={"Host": attacker, "Origin": f"http://{attacker}"})
        assert statuses(db, [task_id]) == ["error"], rebound
        assert rebound.status == 421, rebound
        cross = c.post("/actions/retry", form,
                       headers={"Origin": f"http://{attacker}"})  # Host: 127.0.0.1:port
        assert cross.status == 403, cross
        assert statuses(db, [task_id]) == ["error"]
        d.wait_for(r"Dashboard: refused a POST from 127\.0\.0\.1 for host "
                   rf"'rebind\.attacker\.example:{d.port}': not a name this dashboard serves")
        for path in ("/", "/tasks", f"/tasks/{task_id}", f"/actions/retry?id={task_id}",
                     "/static/dashboard.js"):
            refused = c.get(path, headers={"Host": attacker})
            assert refused.status == 421, (path, refused)
            assert refused.headers["content-type"].startswith("text/plain")
            assert "<" not in refused.body and "boom" not in refused.body
            assert "does not answer for host 'rebind.attacker.example" in refused.body

        for served in (f"localhost:{d.port}", f"LOCALHOST:{d.port}", f"[::1]:{d.port}",
                       "127.0.0.1", "localhost:1234"):
            assert c.get("/tasks", headers={"Host": served}).status == 200, served
        for other in ("127.0.0.1.attacker.example", f"localhost.attacker.example:{d.port}",
                      "localhost:80:80", f"[localhost]:{d.port}", "0.0.0.0", "10.0.0.5"):
            assert c.get("/tasks", headers={"Host": other}).status == 421, other
        assert raw_get(d.port, b"GET /tasks HTTP/1.0\r\n\r\n")[0] == 421  # no Host
        done = c.post("/actions/retry", form, headers={"Host": f"localhost:{d.port}",
                                                       "Origin": f"http://localhost:{d.port}"})
        assert done.status == 303 and statuses(db, [task_id]) == ["pending"]
        assert d.output().count("retried task") == 1


def test_dashboard_hosts_adds_names_and_all_addresses_serve_any_address(
        db_url: str, db: Any, tmp_path: Path) -> None:
    """DASHBOARD_HOSTS names the dashboard behind a proxy or a DNS name; listening
    on 0.0.0.0, any IP address is served too (rebinding needs a name)."""
    [task_id] = add(db, 1, status="error", error="boom")
    env = {"DASHBOARD_HOSTS": "tasks.example.com, 10.0.0.5", "DASHBOARD_HOST": "0.0.0.0",
           "DASHBOARD_PASSWORD": "pa55word"}
    with running_dashboard(db_url, tmp_path, env) as d:
        c = d.client(auth=("admin", "pa55word"))
        for served in ("tasks.example.com", f"Tasks.Example.Com:{d.port}", "10.0.0.5:443",
                       f"192.0.2.7:{d.port}", f"[2001:db8::1]:{d.port}", "localhost"):
            assert c.get("/tasks", headers={"Host": served}).status == 200, served
        for other in ("example.com", f"www.tasks.example.com:{d.port}", "tasks.example.co"):
            assert c.get("/tasks", headers={"Host": other}).status == 421, other
        site = f"tasks.example.com:{d.port}"
        token = CSRF_FIELD.search(c.get(f"/actions/retry?id={task_id}",
                                        headers={"Host": site}).body)
        assert token
        form = {"id": task_id, "csrf": token.group(1)}
        elsewhere = c.post("/actions/retry", form, headers={
            "Host": site, "Origin": f"http://evil.example:{d.port}"})
        assert elsewhere.status == 403 and statuses(db, [task_id]) == ["error"]
        done = c.post("/actions/retry", form, headers={"Host": site,
                                                       "Origin": f"http://{site}"})
        assert done.status == 303 and statuses(db, [task_id]) == ["pending"]


def test_dashboard_hosts_takes_names_and_addresses_without_ports(db_url: str) -> None:
    code, out, err = run_cli(["dashboard"], env={
        "DATABASE_URL": db_url, "DASHBOARD_HOSTS": "tasks.example.com:8080"})
    assert code == 2, (out, err)
    assert err == ("Error: invalid DASHBOARD_HOSTS='tasks.example.com:8080': "
                   "'tasks.example.com:8080' is not a host name or an IP address "
                   "(without a port)\n")
    hosts = load({"DASHBOARD_HOSTS": " Tasks.Example.com., [::1],10.0.0.5,,"}).dashboard_hosts
    assert hosts == ("tasks.example.com", "::1", "10.0.0.5")


def test_ids_are_ascii_digits_within_bigint(db_url: str, db: Any, tmp_path: Path) -> None:
    """'²' (a digit to str.isdigit, not to int), '٣' (3 to int), 23 digits (past
    bigint), 0 and -1 are no task ids: 404 for a page or an action, GET or POST,
    400 with the problem shown on the list's id filter; the task whose id '٣'
    would spell is not touched. The largest bigint is an id like any other."""
    query(db, "INSERT INTO tasks (id, payload, status, error) VALUES "
              "(3, 'three', 'error', 'boom'), (%s, 'last', 'error', 'boom')", (MAX_ID,))
    bad = ("%C2%B2", "%D9%A3", "1" * 23, str(MAX_ID + 1), "0", "-1", "%2B3", "3.0")
    with running_dashboard(db_url, tmp_path) as d:
        c = d.client()
        token = CSRF_FIELD.search(c.get("/actions/retry?id=3").body)
        assert token
        for raw in bad:
            for path in (f"/tasks/{raw}", f"/tasks/{raw}/raw/error",
                         f"/actions/retry?id={raw}", f"/actions/delete?id={raw}",
                         f"/actions/cancel?id={raw}"):
                reply = c.get(path)
                assert reply.status == 404, (path, reply)
            posted = c.request("POST", "/actions/retry", f"id={raw}&csrf={token.group(1)}")
            assert posted.status == 404, (raw, posted)
            listing = c.get(f"/tasks?id={raw}")
            assert listing.status == 400 and "a whole number from 1 to" in listing.text, raw
            assert 'data-id="3"' not in listing.body
            assert c.get(f"/tasks?before={raw}").status == 400, raw
        assert statuses(db, [3, MAX_ID]) == ["error", "error"]
        assert "retried" not in d.output() and "failed" not in d.output()
        assert c.get(f"/tasks/{MAX_ID}").status == 200
        assert c.get(f"/tasks/{MAX_ID}/raw/error").body == "boom"
        assert f'data-id="{MAX_ID}"' in c.get(f"/tasks?id={MAX_ID}").body
        assert f'data-id="{MAX_ID}"' not in c.get(f"/tasks?before={MAX_ID}").body
        assert c.confirm(f"/actions/retry?id={MAX_ID}").status == 303
        assert statuses(db, [3, MAX_ID]) == ["error", "pending"]


def test_redirects_stay_on_this_site(db_url: str, tmp_path: Path) -> None:
    """`?token=` redirects to the page it was opened on, without the token: only
    when that is a path of this site; `//evil.example/x`, `/\\evil.example`, a
    path with CR/LF go home ("/"). The error pages' "Try again" link likewise."""
    with running_dashboard(db_url, tmp_path, {"DASHBOARD_TOKEN": "t0ken-xyz"}) as d:
        c = d.client()
        for path, home in (("//evil.example/x", "/"), ("/%2F%2Fevil.example/x", "/"),
                           ("/%5Cevil.example/x", "/"), ("/%5C%5Cevil.example", "/"),
                           ("///evil.example", "/"), ("/tasks%0D%0ASet-Cookie:%20a=b", "/"),
                           ("/%09/evil.example", "/"), ("/tasks", "/tasks"),
                           ("/t%C3%A4sks/a%25b", "/t%C3%A4sks/a%25b")):
            login = c.get(f"{path}?token=t0ken-xyz&status=done")
            assert login.status == 303, (path, login)
            assert login.headers["location"] == f"{home}?status=done", (path, login.headers)
            assert "a=b" not in login.headers.get("set-cookie", "")
            assert "tw_session=" in login.headers["set-cookie"]
            anonymous = d.client().get(path)
            assert anonymous.status == 401
            link = re.search(r'href="([^"]*)" id="retry-page"', anonymous.body)
            assert link and link.group(1) == home, (path, anonymous.body)
        assert "failed" not in d.output()
