#!/usr/bin/env bash
# The README's first command: bring the demo up from a fresh clone.
#   1. install taskworker into .venv
#   2. use the PostgreSQL that DATABASE_URL (environment or .env) names if it
#      answers (creating its database if the server answers but the database is
#      missing), else start a throwaway cluster from the installed server binaries
#   3. migrate, seed 20 tasks, serve; Ctrl+C stops it (and the throwaway cluster)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/taskworker ]; then
    echo "demo: installing taskworker into .venv ..."
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e .
fi
PY=.venv/bin/python
TW=.venv/bin/taskworker

# DATABASE_URL as taskworker sees it (environment, then .env, then the default).
url=$("$PY" - <<'PY'
from taskworker.cli import load_settings
print(load_settings().database_url)
PY
)

# Does the server answer? Create the database if only it is missing.
state=$("$PY" - "$url" <<'PY'
import sys, psycopg2
from psycopg2 import sql
from psycopg2.extensions import parse_dsn, make_dsn
url = sys.argv[1]
try:
    psycopg2.connect(url, connect_timeout=3).close()
    print("ok")
except psycopg2.OperationalError as exc:
    dbname = parse_dsn(url).get("dbname")
    if dbname and f'"{dbname}" does not exist' in str(exc):
        conn = psycopg2.connect(make_dsn(url, dbname="postgres"), connect_timeout=3)
        conn.autocommit = True
        conn.cursor().execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        conn.close()
        print("created")
    else:
        print("down")
PY
)

cluster_pid=""
cleanup() { [ -n "$cluster_pid" ] && kill -TERM "$cluster_pid" 2>/dev/null && wait "$cluster_pid" 2>/dev/null; true; }
trap cleanup EXIT
if [ "$state" = down ]; then
    echo "demo: no PostgreSQL answers at DATABASE_URL; starting a throwaway cluster ..."
    out=$(mktemp)
    "$PY" tests/pgserver.py >"$out" &
    cluster_pid=$!
    for _ in $(seq 1 300); do [ -s "$out" ] && break; sleep 0.1; done
    url=$(head -n 1 "$out")
    [ -n "$url" ] || { echo "demo: could not start a PostgreSQL cluster" >&2; exit 1; }
fi
export DATABASE_URL=$url

"$TW" migrate
"$TW" seed --count 20
echo "demo: serving; press Ctrl+C to stop"
# serve ignores nothing: Ctrl+C reaches it directly and it shuts down gracefully.
set +e
"$TW" serve "$@"
code=$?
set -e
exit $code
