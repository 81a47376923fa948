#!/usr/bin/env bash
# The README's first command ("Two commands"): bring the demo up from a fresh clone.
#   1. install taskworker into .venv
#   2. use the PostgreSQL that DATABASE_URL (environment or .env) names if it
#      answers (creating its database if the server answers but the database is
#      missing); if nothing listens there, start a throwaway cluster from the
#      installed server binaries on DATABASE_URL's port, with its database; stop
#      on any other connection error (wrong role or password, ...)
#   3. migrate, seed 20 tasks, serve; Ctrl+C stops it (and the throwaway cluster,
#      leaving nothing in the temp folder)
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

# Use the PostgreSQL that DATABASE_URL (environment, then .env, then the default)
# names, creating its database if only that is missing; if nothing listens there,
# start a throwaway cluster on its port with its database. Any other error (a wrong
# role or password, say) is printed by demo_database.py and stops the demo here.
probe=$("$PY" scripts/demo_database.py)
{ read -r state; read -r arg1; read -r arg2; } <<<"$probe" || true

cluster_pid="" out=""
cleanup() {
    if [ -n "$cluster_pid" ]; then  # pgserver stops the cluster and removes its folder
        kill -TERM "$cluster_pid" 2>/dev/null && wait "$cluster_pid" 2>/dev/null
    fi
    [ -z "$out" ] || rm -f "$out"
    true
}
trap cleanup EXIT
if [ "$state" = absent ]; then
    echo "demo: nothing listens at DATABASE_URL; starting a throwaway cluster on port $arg1 ..."
    out=$(mktemp)
    # SIGINT ignored: on Ctrl+C serve shuts down first, then cleanup stops the cluster.
    (trap '' INT; exec "$PY" tests/pgserver.py --port "$arg1" --dbname "$arg2") >"$out" &
    cluster_pid=$!
    while [ ! -s "$out" ] && kill -0 "$cluster_pid" 2>/dev/null; do sleep 0.1; done
    url=$(head -n 1 "$out")
    rm -f "$out"
    [ -n "$url" ] || { echo "demo: could not start a PostgreSQL cluster" >&2; exit 1; }
else
    url=$arg1
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
