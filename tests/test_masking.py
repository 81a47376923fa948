"""The password of DATABASE_URL is never shown, however it is written: a table of
hostile connection strings (passwords with `#`, `?`, `@`, `/`, `:`, `%`-escapes,
spaces, quotes; URLs without a scheme, with several hosts, with `?password=`;
key=value strings, quoted or not), each given to `taskworker migrate` and `serve`
as a user would, in our lines and in libpq's and the server's messages we relay.
Non-secret words in those messages stay readable.

The server's own refusals come from a throwaway cluster with password
(scram-sha-256) auth: the local test server trusts everyone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg2
import pytest
from pgserver import Cluster, cluster
from proc import run_cli

from taskworker.masking import mask_password, mask_secrets

DOWN = "127.0.0.1:1"  # nothing listens: refused at once

# (connection string, the password as written, and as libpq reads it when it differs)
HOSTILE = [
    (f"postgresql://twh:Qm?Pw9x@{DOWN}/db", "Qm?Pw9x"),
    (f"postgresql://twh:Hash#Pw9@{DOWN}/db", "Hash#Pw9"),
    (f"postgresql://twh:Co:lon9Pw@{DOWN}/db", "Co:lon9Pw"),
    (f"postgresql://twh:At%40Pw9x@{DOWN}/db", "At%40Pw9x", "At@Pw9x"),
    (f"postgresql://twh:Sl%2FPw9x@{DOWN}/db", "Sl%2FPw9x", "Sl/Pw9x"),
    (f"postgresql://twh:Pct%25Pw9@{DOWN}/db", "Pct%25Pw9", "Pct%Pw9"),
    (f"postgresql://twh:Spa ce Pw9@{DOWN}/db", "Spa ce Pw9"),
    (f"postgresql://twh:Quo'te\"Pw9@{DOWN}/db", "Quo'te\"Pw9"),
    # A raw '@' or '/': libpq reads another host (`Rest9x@127.0.0.1`) or port (`Slash`).
    (f"postgresql://twh:Hash@Rest9x@{DOWN}/db", "Hash@Rest9x"),
    (f"postgresql://twh:Slash/Rest9x@{DOWN}/db", "Slash/Rest9x"),
    (f"twh:Sch3meless@{DOWN}", "Sch3meless"),  # no scheme: libpq echoes it all
    (f"twh:Sch3me/less@{DOWN}/db", "Sch3me/less"),
    (f"postgres://twh:Mu1tiHost@{DOWN},127.0.0.1:2/db", "Mu1tiHost"),
    (f"postgresql://twh@{DOWN}/db?sslmode=disable&password=Qu3ryPw9", "Qu3ryPw9"),
    (f"postgresql://twh@{DOWN}/db?password=Qu3ry%26Pw9&sslmode=disable", "Qu3ry%26Pw9",
     "Qu3ry&Pw9"),
    ("host=127.0.0.1 port=1 user=twh password=Unqu0tedPw dbname=db", "Unqu0tedPw"),
    ("host=127.0.0.1 port=1 user=twh password='Qu0ted Pw\\'9' dbname=db", "Qu0ted Pw\\'9",
     "Qu0ted Pw'9"),
    ("host=127.0.0.1 port=1 user=twh password = Esc\\ aped9 dbname=db", "Esc\\ aped9",
     "Esc aped9"),
    # Strings libpq refuses, quoting a piece of them (or all) in its message.
    ("host=127.0.0.1 port=1 user=twh password=Two W0rds dbname=db", "Two W0rds"),
    ("host=127.0.0.1 port=1 user=twh password='Unterm1nated dbname=db", "Unterm1nated"),
    (f"postgresql://twh:Bad%zzPw9@{DOWN}/db", "Bad%zzPw9"),
    ("postgresql://twh:Br4cketPw@[::1/db", "Br4cketPw"),
    (f"postgresql://twh@{DOWN}/db?password=Pw9%zzQ", "Pw9%zzQ"),
]


def forms(case: tuple[str, ...]) -> list[str]:
    """Every form of the password that must not show, and its pieces of 4
    characters or more (where libpq splits a mistyped password)."""
    whole = list(case[1:])
    return whole + [p for w in whole for p in re.split(r"[^A-Za-z0-9]+", w) if len(p) >= 4]


@pytest.mark.parametrize("case", HOSTILE, ids=[c[1] for c in HOSTILE])
def test_mask_password_hides_exactly_the_password(case: tuple[str, ...]) -> None:
    url = case[0]
    masked = mask_password(url)
    assert "****" in masked
    for secret in forms(case):
        assert secret not in masked, masked
    # Only the password: what comes before it is left as it is (but a quote).
    assert masked.startswith(url[:url.index(case[1]) - 1])
    assert "twh" in masked and ("127.0.0.1" in masked or "[::1" in masked)


@pytest.mark.parametrize(("url", "masked"), [
    ("postgresql://twh:Qm?Pw9x@127.0.0.1:5432/db?sslmode=disable",
     "postgresql://twh:****@127.0.0.1:5432/db?sslmode=disable"),
    ("postgresql://u:pw@h1:5432,h2:5433/db", "postgresql://u:****@h1:5432,h2:5433/db"),
    ("postgresql://u:p@ss@h/db", "postgresql://u:****@h/db"),
    ("postgresql://u:Us3r@h/db?password=Qu3ry&sslmode=disable",
     "postgresql://u:****@h/db?password=****&sslmode=disable"),
    ("tw:PW@127.0.0.1", "tw:****@127.0.0.1"),
    ("host=h password='a b\\'c' dbname=d", "host=h password=**** dbname=d"),
    ("postgresql://u@h:5432/db?application_name=a@b:c",
     "postgresql://u@h:5432/db?application_name=a@b:c"),
    ("postgresql://h/db", "postgresql://h/db"),
])
def test_mask_password_exact(url: str, masked: str) -> None:
    assert mask_password(url) == masked


def test_mask_secrets_in_any_text() -> None:
    """A later part stores tracebacks: any text is masked given the URL."""
    url = "postgresql://twh:Hash#Pw9@127.0.0.1/db"
    text = ('Traceback (most recent call last):\n  File "x.py", line 1\n'
            'psycopg2.OperationalError: connect("postgresql://twh:Hash#Pw9@127.0.0.1/db")')
    masked = mask_secrets(text, url)
    assert "Hash#Pw9" not in masked and masked.count("****") == 1
    assert masked.startswith("Traceback") and "twh:****@127.0.0.1/db" in masked
    # A short piece of a misread password is masked where it stands alone only.
    assert mask_secrets('invalid integer value "p" for connection option "port"',
                        "postgresql://u:p/ss@h/db") == \
        'invalid integer value "****" for connection option "port"'


# --- the commands a user runs


def shown(command: str, url: str) -> tuple[int, str, str]:
    return run_cli([command], env={"DATABASE_URL": url}, timeout=30)


@pytest.mark.parametrize("case", HOSTILE, ids=[c[1] for c in HOSTILE])
def test_no_command_shows_the_password(case: tuple[str, ...]) -> None:
    for command in ("migrate", "serve"):
        code, out, err = shown(command, case[0])
        assert code in (1, 2), (command, out, err)
        assert len(err.splitlines()) == 1 and err.startswith("Error: "), err
        assert "Traceback" not in out + err
        assert "****" in err and ("127.0.0.1" in err or "[::1" in err), err
        for secret in forms(case):
            assert secret not in out + err, (command, secret, out + err)


@pytest.mark.parametrize(("url", "reason"), [
    (f"postgresql://twh:Pw9secret@{DOWN}/db?passwrd=x", 'invalid URI query parameter: "passwrd"'),
    ("host=127.0.0.1 password=Pw9secret dbnam=x", 'invalid connection option "dbnam"'),
    (f"postgresql://twh:Pw9secret@{DOWN}/db?sslmode=sometimes",
     'invalid sslmode value: "sometimes"'),
])
def test_real_mistakes_stay_readable(url: str, reason: str) -> None:
    """Masking the password leaves the rest of libpq's message: the mistake."""
    code, out, err = shown("migrate", url)
    assert code in (1, 2), (out, err)
    assert reason in err and "Pw9secret" not in out + err, err


# --- the server's own messages, from a server that asks for a password

PASSWORDS = ["Qm?Pw9x#Hash", "Co:lon/At@Pct%Sp ace", "Quo'te\"Back\\slash9"]


@pytest.fixture(scope="module")
def password_server() -> Iterator[Cluster]:
    """A throwaway cluster whose TCP clients authenticate with scram-sha-256."""
    with cluster(max_connections=20) as running:
        conn = psycopg2.connect(running.local_url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SET password_encryption = 'scram-sha-256'")
            cur.execute("CREATE ROLE twh LOGIN SUPERUSER PASSWORD %s", (PASSWORDS[0],))
            Path(running.root, "data", "pg_hba.conf").write_text(
                "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
            cur.execute("SELECT pg_reload_conf()")
        conn.close()
        yield running


def _set_password(server: Cluster, password: str) -> None:
    conn = psycopg2.connect(server.local_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("ALTER ROLE twh PASSWORD %s", (password,))
    conn.close()


def _forms_of(url: str, password: str) -> list[str]:
    return [password, quote(password, safe="")] + [
        p for p in re.split(r"[^A-Za-z0-9]+", password) if len(p) >= 4]


@pytest.mark.parametrize("password", PASSWORDS)
def test_password_auth_with_hostile_passwords(password_server: Cluster, password: str) -> None:
    """The right password, written every way libpq takes it, connects, and is
    never shown; a wrong one gets the server's refusal, which names the user."""
    _set_password(password_server, password)
    port = password_server.port
    escaped = password.replace("\\", "\\\\").replace("'", "\\'")
    right = [
        f"postgresql://twh:{quote(password, safe='')}@127.0.0.1:{port}/postgres",
        *([f"postgresql://twh:{password}@127.0.0.1:{port}/postgres"]  # as typed: libpq takes it
          if not re.search(r"[@/%]", password) else []),
        f"postgres://twh@127.0.0.1:{port}/postgres?password={quote(password, safe='')}",
        f"host=127.0.0.1 port={port} user=twh dbname=postgres password='{escaped}'",
        f"postgresql://twh:{quote(password, safe='')}@{DOWN},127.0.0.1:{port}/postgres",
    ]
    for url in right:
        code, out, err = shown("migrate", url)
        assert code == 0, (url, out, err)
        assert "Connecting to database: " in out and "****" in out
        for secret in _forms_of(url, password):
            assert secret not in out + err, (secret, out + err)

    for wrong in (password[::-1], "Wr0ng?Pw#9"):
        url = f"postgresql://twh:{wrong}@127.0.0.1:{port}/postgres"
        if re.search(r"[@/%]", wrong):
            url = f"postgresql://twh:{quote(wrong, safe='')}@127.0.0.1:{port}/postgres"
        for command in ("migrate", "serve"):
            code, out, err = shown(command, url)
            assert code == 1, (out, err)
            assert 'password authentication failed for user "twh"' in err, err
            for secret in _forms_of(url, wrong) + _forms_of(url, password):
                assert secret not in out + err, (secret, out + err)
