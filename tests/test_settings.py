"""Configuration: defaults, accepted forms, every bad value, .env, CLI overrides,
and the password in DATABASE_URL never shown.

Bad values are checked the way a user meets them: `taskworker serve` run as a
subprocess must exit 2 with one line on stderr naming the variable and the value.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from urllib.parse import quote, urlsplit

import psycopg2
import pytest
from pgserver import UNREACHABLE_URL
from proc import ServeFactory, importable, run_cli

from taskworker import settings as tw_settings

# --- parsing, in process (pure: no database, no gevent)


def test_defaults() -> None:
    s = tw_settings.load({})
    assert s.database_url == "postgres://postgres@127.0.0.1:5432/taskprocessor?sslmode=disable"
    assert s.worker_count == 5
    assert s.fetch_interval == 5.0
    assert s.fetch_limit is None  # sized per claim (Dispatch.free_slots)
    assert (s.task_min_seconds, s.task_max_seconds, s.task_failure_rate) == (1.0, 4.0, 0.1)
    assert s.log_level == "INFO"


def test_settings_are_immutable() -> None:
    s = tw_settings.load({})
    with pytest.raises(AttributeError):
        s.worker_count = 7  # type: ignore[misc]


@pytest.mark.parametrize(("raw", "seconds"), [
    ("5", 5.0), ("5s", 5.0), ("1.5", 1.5), ("500ms", 0.5), (" 2s ", 2.0),
])
def test_fetch_interval_forms(raw: str, seconds: float) -> None:
    assert tw_settings.load({"FETCH_INTERVAL": raw}).fetch_interval == pytest.approx(seconds)


def test_empty_value_means_default() -> None:
    assert tw_settings.load({"WORKER_COUNT": "", "FETCH_INTERVAL": " "}).worker_count == 5


def test_overrides_win_and_none_is_ignored() -> None:
    s = tw_settings.load({"WORKER_COUNT": "4", "FETCH_LIMIT": "7"},
                         {"WORKER_COUNT": "3", "FETCH_LIMIT": None})
    assert (s.worker_count, s.fetch_limit) == (3, 7)


@pytest.mark.parametrize(("var", "raw"), [
    ("WORKER_COUNT", "abc"), ("WORKER_COUNT", "0"), ("WORKER_COUNT", "-3"),
    ("WORKER_COUNT", "2.5"), ("FETCH_INTERVAL", "soon"), ("FETCH_INTERVAL", "0"),
    ("FETCH_INTERVAL", "-1s"), ("FETCH_LIMIT", "0"), ("TASK_FAILURE_RATE", "2"),
    ("TASK_FAILURE_RATE", "-0.1"), ("TASK_MIN_SECONDS", "-1"), ("LOG_LEVEL", "loud"),
    ("DATABASE_URL", "not-a-url"),
])
def test_bad_values_raise_settings_error_naming_them(var: str, raw: str) -> None:
    with pytest.raises(tw_settings.SettingsError) as info:
        tw_settings.load({var: raw})
    message = str(info.value)
    assert var in message and raw in message
    assert "\n" not in message


def test_min_above_max_is_refused() -> None:
    with pytest.raises(tw_settings.SettingsError, match="TASK_MIN_SECONDS"):
        tw_settings.load({"TASK_MIN_SECONDS": "5", "TASK_MAX_SECONDS": "1"})


@pytest.mark.parametrize(("url", "masked"), [
    ("postgres://u:hunter2@127.0.0.1:5432/db", "postgres://u:****@127.0.0.1:5432/db"),
    ("postgresql://u@h/d?password=hunter2&sslmode=disable",
     "postgresql://u@h/d?password=****&sslmode=disable"),
    ("host=h password=hunter2 dbname=d", "host=h password=**** dbname=d"),
    ("host=h password='hunter 2' dbname=d", "host=h password=**** dbname=d"),
    ("postgres://u@h/d", "postgres://u@h/d"),
])
def test_mask_password(url: str, masked: str) -> None:
    assert tw_settings.mask_password(url) == masked


# --- the command a user runs


@pytest.mark.parametrize(("var", "raw"), [
    ("WORKER_COUNT", "abc"), ("WORKER_COUNT", "0"), ("WORKER_COUNT", "-3"),
    ("FETCH_INTERVAL", "soon"), ("TASK_FAILURE_RATE", "2"), ("DATABASE_URL", "not-a-url"),
])
def test_serve_with_a_bad_value_exits_2_with_one_line(var: str, raw: str) -> None:
    env = {"DATABASE_URL": UNREACHABLE_URL, var: raw}
    code, out, err = run_cli(["serve"], env=env, timeout=30)
    assert code == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert var in lines[0] and raw in lines[0]
    assert "Traceback" not in out + err


@pytest.mark.parametrize(("args", "var", "raw"), [
    (["--workers", "0"], "WORKER_COUNT", "0"),
    (["--fetch-interval", "soon"], "FETCH_INTERVAL", "soon"),
    (["--fetch-limit", "none"], "FETCH_LIMIT", "none"),
])
def test_bad_option_names_its_variable(args: list[str], var: str, raw: str) -> None:
    env = {"DATABASE_URL": UNREACHABLE_URL, "WORKER_COUNT": "4"}
    code, out, err = run_cli(["serve", *args], env=env, timeout=30)
    assert code == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert var in lines[0] and raw in lines[0]
    assert "Traceback" not in out + err


def test_bad_value_in_dotenv_is_reported(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"DATABASE_URL={UNREACHABLE_URL}\nFETCH_INTERVAL=soon\n")
    code, out, err = run_cli(["serve"], cwd=str(tmp_path), timeout=30)
    assert code == 2, (out, err)
    assert len(err.splitlines()) == 1 and "FETCH_INTERVAL" in err and "soon" in err


def test_options_override_environment(db_url: str, serve: ServeFactory) -> None:
    p = serve(db_url, env={"WORKER_COUNT": "7", "FETCH_INTERVAL": "9s"},
              args=["--workers", "3", "--fetch-interval", "500ms"])
    p.wait_for(r"^\S+ \S+ Starting task processor with 3 workers, fetching every 500ms$")
    p.wait_for(r"Starting worker 3$")
    p.signal(signal.SIGINT)
    assert p.wait() == 0, p.output()
    assert "Starting worker 4" not in p.output()


def test_dotenv_is_read_and_environment_wins(db_url: str, serve: ServeFactory,
                                             tmp_path: Path) -> None:
    # serve's cwd is tmp_path/"cwd": .env there is the user's .env.
    (tmp_path / "cwd" / ".env").write_text(
        "# a comment\nWORKER_COUNT=3\nFETCH_INTERVAL=2s\nDATABASE_URL=not-a-url\n")
    p = serve(db_url, env={"WORKER_COUNT": "4"})  # DATABASE_URL comes from the environment
    p.wait_for(r"Starting task processor with 4 workers, fetching every 2s$")
    p.signal(signal.SIGINT)
    assert p.wait() == 0, p.output()


def test_dotenv_alone_configures_a_command(db_url: str, db: psycopg2.extensions.connection,
                                           tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f'DATABASE_URL="{db_url}"\n')
    code, out, err = run_cli(["seed", "--count", "3"], cwd=str(tmp_path))
    assert code == 0, (out, err)
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM tasks")
        assert cur.fetchone() == (3,)


def _with_password(url: str) -> tuple[str, str]:
    """`url` with a password in it (trust auth ignores it); return (url, password)."""
    parts = urlsplit(url)
    if parts.password:
        return url, parts.password
    secret = "Sup3rSecretPw"
    netloc = f"{quote(parts.username or 'postgres')}:{secret}@{parts.netloc.rsplit('@', 1)[-1]}"
    return parts._replace(netloc=netloc).geturl(), secret


def test_password_never_printed(db_url: str, serve: ServeFactory,
                                db: psycopg2.extensions.connection) -> None:
    url, secret = _with_password(db_url)
    seen = []
    for args in (["migrate"], ["seed", "--count", "2"]):
        code, out, err = run_cli(args, env={"DATABASE_URL": url})
        assert code == 0, (out, err)
        assert "Connecting to database: " in out and "****" in out
        seen.append(out + err)

    p = serve(url, env={"TASK_MIN_SECONDS": "0", "TASK_MAX_SECONDS": "0",
                        "TASK_FAILURE_RATE": "0", "LOG_LEVEL": "debug"})
    p.wait_for(r"Task ID: \d+ processed with status: done(.|\n)*"
               r"Task ID: \d+ processed with status: done")
    p.signal(signal.SIGINT)
    assert p.wait() == 0, p.output()
    seen.append(p.output())

    # Errors that print the URL: unreachable, and a string libpq cannot parse.
    unreachable = urlsplit(url)._replace(netloc=f"postgres:{secret}@127.0.0.1:1").geturl()
    bad = [unreachable,
           f"postgres://u:{secret}@[::1/db",  # libpq quotes the whole URI in its message
           f"postgres://u:{secret}%zz@127.0.0.1:5432/db",  # ... or the bad token
           f"postgres://u@127.0.0.1:5432/db?password={secret}%zz",
           f"host=127.0.0.1 port=1 password={secret} dbname=x"]
    for bad_url in bad:
        for command in (["serve"], ["migrate"]):
            code, out, err = run_cli(command, env={"DATABASE_URL": bad_url}, timeout=30)
            assert code in (1, 2), (bad_url, out, err)
            assert len(err.splitlines()) == 1, err
            seen.append(out + err)

    for text in seen:
        assert secret not in text, text


def test_help_mentions_every_option_and_variable() -> None:
    code, top, err = run_cli(["--help"])
    assert code == 0, err
    code, serve_help, err = run_cli(["serve", "--help"])
    assert code == 0, err
    code, dashboard_help, err = run_cli(["dashboard", "--help"])
    assert code == 0, err
    top, serve_help = " ".join(top.split()), " ".join(serve_help.split())  # undo wrapping
    dashboard_help = " ".join(dashboard_help.split())

    for command in ("migrate", "seed", "serve"):
        assert command in top
    assert "DATABASE_URL" in top
    for option, var in [("--workers", "WORKER_COUNT"), ("--fetch-interval", "FETCH_INTERVAL"),
                        ("--fetch-limit", "FETCH_LIMIT"), ("--handler", "TASK_HANDLER")]:
        assert option in serve_help
        assert f"env {var}" in serve_help
    for option, var in [("--host", "DASHBOARD_HOST"), ("--port", "DASHBOARD_PORT")]:
        assert option in dashboard_help
        assert f"env {var}" in dashboard_help
    for var in tw_settings.FIELDS:  # every variable is explained somewhere
        assert var in top or var in serve_help or var in dashboard_help, var


def test_env_example_is_valid_configuration() -> None:
    """.env.example, copied to .env as the tutorial says, loads; it names only real
    settings."""
    from dotenv import dotenv_values

    example = Path(__file__).resolve().parent.parent / ".env.example"
    values = {k: v for k, v in dotenv_values(example).items() if v is not None}
    assert set(values) <= set(tw_settings.FIELDS), set(values) - set(tw_settings.FIELDS)
    settings = tw_settings.load(values)
    assert settings.max_payload_bytes == 1024 * 1024


# --- variables that look like settings but are not: a typo was silently ignored

STAMP = r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d "


def warnings_in(text: str) -> list[str]:
    """The lines about variables that are not settings."""
    return [line for line in text.splitlines() if "is not a setting" in line
            or "which taskworker ignores" in line or "is ignored: libpq" in line]


def test_a_misspelled_setting_in_the_environment_is_named(db_url: str, serve: ServeFactory,
                                                          ) -> None:
    """`WORKER_CONT=10 taskworker serve` ran 5 workers without a word."""
    p = serve(db_url, env={"WORKER_CONT": "10"})
    p.wait_for(rf"^{STAMP}WORKER_CONT in the environment is not a setting, ignored: did you "
               r"mean WORKER_COUNT\?$")
    p.wait_for(r"Starting task processor with 5 workers(.|\n)*Starting worker 5$")
    p.signal(signal.SIGINT)
    assert p.wait() == 0, p.output()
    assert len(warnings_in(p.output())) == 1, p.output()


def test_a_misspelled_task_handler_in_dotenv_is_named_and_serve_says_the_demo_runs(
        db_url: str, db: psycopg2.extensions.connection, serve: ServeFactory,
        tmp_path: Path) -> None:
    """`TASK_HANDLR=myapp.tasks:shout` in .env: a real task went to the demo
    handler, stored done with its payload reversed, and nothing said so."""
    (tmp_path / "cwd" / ".env").write_text("TASK_HANDLR=myapp.tasks:shout\n")
    with db.cursor() as cur:
        cur.execute("INSERT INTO tasks (payload) VALUES ('charge customer 42 for 99.50 EUR')")
    p = serve(db_url, env={"TASK_MIN_SECONDS": "0", "TASK_MAX_SECONDS": "0",
                           "TASK_FAILURE_RATE": "0"})
    p.wait_for(r"Task ID: \d+ processed with status: done")
    p.signal(signal.SIGINT)
    assert p.wait() == 0, p.output()
    lines = p.output().splitlines()
    warning = next(i for i, line in enumerate(lines) if re.fullmatch(
        STAMP + r"TASK_HANDLR in \.env is not a setting, ignored: did you mean TASK_HANDLER\?",
        line))
    demo = next(i for i, line in enumerate(lines) if re.fullmatch(
        STAMP + r"Tasks without a name run with the demo handler taskworker\.handlers:demo: it "
        r"returns the payload reversed and fails 0% of tasks \(TASK_HANDLER names your own\)",
        line))
    processing = next(i for i, line in enumerate(lines) if "Processing task ID" in line)
    assert warning < demo < processing, lines
    # The original's start-up lines are still there, unchanged.
    assert re.search(r"Connecting to database: .*\n.*\n.*Starting task processor with 5 "
                     r"workers, fetching every 5s\n", p.output()), p.output()


@pytest.mark.parametrize(("env", "line"), [
    ({"TASK_MIN_SECONDS": "0.5", "TASK_MAX_SECONDS": "2", "TASK_FAILURE_RATE": "0.25"},
     "Tasks without a name run with the demo handler taskworker.handlers:demo: it sleeps 500ms "
     "to 2s, returns the payload reversed and fails 25% of tasks (TASK_HANDLER names your own)"),
    ({"TASK_HANDLER": "json:dumps"},
     "Tasks without a name run with the default handler json:dumps"),
    ({"TASK_MODULES": "tw_one_task"}, "Tasks without a name are left pending for another "
     "process: TASK_MODULES is set and TASK_HANDLER is not"),
])
def test_serve_says_what_runs_tasks_without_a_name(db_url: str, serve: ServeFactory,
                                                   tmp_path: Path, env: dict[str, str],
                                                   line: str) -> None:
    mods = importable(tmp_path / "mods", {"tw_one_task": "import taskworker\n\n\n"
                                          "@taskworker.task('one')\ndef one(payload):\n"
                                          "    return payload\n"})
    p = serve(db_url, env={**mods, **env})
    p.wait_for(rf"^{STAMP}{re.escape(line)}$")
    p.wait_for(r"Starting worker 5$")
    p.signal(signal.SIGINT)
    assert p.wait() == 0, p.output()


@pytest.mark.parametrize(("where", "name", "meant"), [
    ("env", "WORKER_CONT", "WORKER_COUNT"),
    ("env", "LOGLEVEL", "LOG_LEVEL"),
    ("env", "STATMENT_TIMEOUT", "STATEMENT_TIMEOUT"),
    ("env", "worker_count", "WORKER_COUNT"),
    ("env", "DASHBOARD_PASS", "DASHBOARD_PASSWORD"),  # one of our prefixes: like which?
    ("env", "TASK_FOO", None),
    (".env", "TASK_HANDLR", "TASK_HANDLER"),
    (".env", "DATABSE_URL", "DATABASE_URL"),
    (".env", "MAX_PAYLOAD_SIZE", "MAX_PAYLOAD_BYTES"),
    (".env", "WORKERS", None),
])
def test_misspelled_settings_are_named(tmp_path: Path, where: str, name: str,
                                       meant: str | None) -> None:
    value = "postgresql://u:Sup3rS3cret@127.0.0.1:1/x"  # never shown: it may be a secret
    env = {"DATABASE_URL": UNREACHABLE_URL}
    if where == "env":
        env[name] = value
    else:
        (tmp_path / ".env").write_text(f"{name}={value}\n")
    code, out, err = run_cli(["serve"], env=env, cwd=str(tmp_path), timeout=30)
    assert code == 1 and "cannot connect" in err, (out, err)
    assert "Traceback" not in out + err and "Sup3rS3cret" not in out + err
    where_said = "the environment" if where == "env" else r"\.env"
    if meant:
        expected = rf"{name} in {where_said} is not a setting, ignored: did you mean {meant}\?"
    elif where == "env":
        expected = rf"{name} in the environment is not a setting, ignored"
    else:
        expected = rf"\.env sets {name}, which taskworker ignores: it reads \.env for its own " \
                   r"settings alone"
    assert [re.fullmatch(STAMP + expected, line) is not None
            for line in warnings_in(err)] == [True], err


def test_variables_of_other_programs_draw_no_warning(tmp_path: Path) -> None:
    """Only what looks like ours: libpq's PG* variables, systemd's LISTEN_FDS,
    the tests' own TEST_DATABASE_URL, an application's DATABASE_USER are not."""
    env = {"DATABASE_URL": UNREACHABLE_URL, "PGCONNECT_TIMEOUT": "5", "PGAPPNAME": "x",
           "TEST_DATABASE_URL": "x", "BENCH_DATABASE_URL": "x", "LISTEN_FDS": "1",
           "LISTEN_PID": "1", "DATABASE_USER": "x", "DATABASE_PASSWORD": "x",
           "CONNECT_TIMEOUT_MS": "1", "SECRET_KEY": "x", "LOG_DIR": "/x", "MAX_CONNECTIONS": "9"}
    (tmp_path / ".env").write_text("WORKER_COUNT=3\napp_secret=x\n")
    code, out, err = run_cli(["serve"], env=env, cwd=str(tmp_path), timeout=30)
    assert code == 1 and len(err.splitlines()) == 1, (out, err)
    assert warnings_in(out + err) == [], out + err


def test_dotenv_names_others_in_one_line_and_pg_variables_apart(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"DATABASE_URL={UNREACHABLE_URL}\nSECRET_KEY=Sup3rS3cret\n"
                                   "API_URL=x\nPGPASSWORD=Sup3rS3cret\n")
    code, out, err = run_cli(["migrate"], cwd=str(tmp_path), timeout=30)
    assert code == 1 and "Sup3rS3cret" not in out + err, (out, err)
    assert [line[20:] for line in warnings_in(err)] == [
        "PGPASSWORD in .env is ignored: libpq reads PG variables from the environment only",
        ".env sets SECRET_KEY, API_URL, which taskworker ignores: it reads .env for its own "
        "settings alone"], err


def test_misspelled_settings_follow_log_format_and_level() -> None:
    """A warning is a log record: JSON with LOG_FORMAT=json, none at LOG_LEVEL=ERROR.
    On stderr, as the Error line: the stdout of enqueue and status is data."""
    env = {"DATABASE_URL": UNREACHABLE_URL, "WORKER_CONT": "10", "LOG_FORMAT": "json"}
    code, out, err = run_cli(["status", "--json"], env=env, timeout=30)
    assert code == 1 and out == "", (out, err)
    records = [json.loads(line) for line in err.splitlines()]
    assert records[0]["level"] == "warning" and "did you mean WORKER_COUNT?" in \
        records[0]["message"], records
    code, out, err = run_cli(["serve"], env={**env, "LOG_LEVEL": "ERROR"}, timeout=30)
    assert code == 1 and "WORKER_CONT" not in out + err, (out, err)


# --- resource bounds: an absurd value is refused in one line, before it crashes


@pytest.mark.parametrize(("var", "raw", "limit"), [
    ("WORKER_COUNT", "99999999999", "must be between 1 and 100,000"),  # was OverflowError
    ("WORKER_COUNT", "10000000", "must be between 1 and 100,000"),  # was MemoryError
    ("WORKER_COUNT", "100001", "must be between 1 and 100,000"),
    ("QUEUES", "default:99999999999",  # was integer out of range
     "the cap of queue 'default' must be a whole number between 1 and 100,000"),
    ("LEASE_SECONDS", "99999999999d", "must be at most 3650d"),  # was interval out of range
    ("PRUNE_AFTER", "99999999999d", "must be at most 3650d"),
    ("STATEMENT_TIMEOUT", "25d", "must be at most 24d"),  # was libpq's invalid integer
    ("FETCH_INTERVAL", "9" * 400, "must be at most 3650d"),  # was "fetching every infs"
    ("TASK_MAX_SECONDS", "9" * 400, "must be at most 3650d"),  # was a hub stuck for ever
    ("TASK_TIMEOUT", "3651d", "must be at most 3650d"),
])
def test_absurd_values_are_refused_in_one_line(var: str, raw: str, limit: str) -> None:
    code, out, err = run_cli(["serve"], env={"DATABASE_URL": UNREACHABLE_URL, var: raw},
                             timeout=30)
    assert code == 2, (out, err)
    assert err.splitlines() == [f"Error: invalid {var}={raw!r}: {limit}"
                                + (" (10 years)" if "3650d" in limit else "")], err
    assert "Traceback" not in out + err


def test_worker_count_past_the_maximum_leaves_nothing_behind(
        db_url: str, db: psycopg2.extensions.connection) -> None:
    """Against a real database, as the user ran it: no traceback, no process row."""
    code, out, err = run_cli(["serve"], env={"DATABASE_URL": db_url,
                                             "WORKER_COUNT": "99999999999"}, timeout=60)
    assert (code, err) == (2, "Error: invalid WORKER_COUNT='99999999999': must be between 1 "
                              "and 100,000\n"), (out, err)
    assert "Traceback" not in out + err
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM taskworker_processes")
        assert cur.fetchone() == (0,)


def test_a_delay_past_the_maximum_is_refused_in_one_line() -> None:
    code, out, err = run_cli(["enqueue", "--delay", "99999999999d", "x"],
                             env={"DATABASE_URL": UNREACHABLE_URL}, timeout=30)
    assert (code, out) == (2, ""), err
    assert err == "Error: invalid --delay='99999999999d': must be at most 3650d (10 years)\n"


def test_the_maxima_themselves_are_accepted() -> None:
    s = tw_settings.load({"WORKER_COUNT": "100000", "QUEUES": "a:100000",
                          "STATEMENT_TIMEOUT": "24d", "PRUNE_AFTER": "3650d",
                          "LEASE_SECONDS": "3650d"})
    assert (s.worker_count, s.queues, s.statement_timeout) == (100000, (("a", 100000),),
                                                               24 * 86400.0)
    assert s.prune_after == s.lease_seconds == 3650 * 86400.0
