"""The djangoshop example end to end, as its README runs it: Django's migrate
and `manage.py taskworker migrate`, `@task` functions enqueued in transactions,
`manage.py taskworker serve`, and the results read back through Django's API;
then the ORM under gevent at WORKER_COUNT=100, its connections counted in
pg_stat_activity.

Fixtures (db_url, db, the autouse clean_env) come from tests/suite_fixtures.py.
"""
from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from invariants import query, wait_until
from pgserver import temp_database, throwaway_cluster
from proc import ServeProcess, child_env

pytest.importorskip("django")
if not (importlib.util.find_spec("django.tasks") or importlib.util.find_spec("django_tasks")):
    pytest.skip("no Tasks framework: Django 6, or django-tasks before it", allow_module_level=True)

HERE = Path(__file__).resolve().parent
MANAGE = [sys.executable, "manage.py"]


def manage(db_url: str, *args: str, **env: str) -> str:
    """`python manage.py *args` in the example's folder; its stdout."""
    done = subprocess.run([*MANAGE, *args], cwd=HERE, capture_output=True, text=True,
                          timeout=120, check=False,
                          env=child_env({"DATABASE_URL": db_url, **env}))
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def shell(db_url: str, code: str) -> Any:
    """Run `code` in `manage.py shell`; the JSON of its last line."""
    return json.loads(manage(db_url, "shell", "-c", code).splitlines()[-1])


def serving(db_url: str, tmp_path: Path, **env: str) -> ServeProcess:
    return ServeProcess([], {"DATABASE_URL": db_url, **env}, str(HERE),
                        str(tmp_path / "serve.log"),
                        command=[*MANAGE, "taskworker", "serve"])


ENQUEUE = """
import json
from datetime import timedelta
from django.db import transaction
from django.utils import timezone
from orders.models import Order
from orders.tasks import attempt, refuse, ship

with transaction.atomic():
    order = Order.objects.create(total="9.50")
    shipped = ship.enqueue(order.id)
try:
    with transaction.atomic():
        gone = Order.objects.create(total="1.00")
        lost = ship.enqueue(gone.id)
        raise RuntimeError("roll back")
except RuntimeError:
    pass
refused = refuse.enqueue(order.id)
asked = attempt.enqueue("hi")
later = ship.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(order.id)
print(json.dumps({"order": order.id, "shipped": shipped.id, "lost": lost.id,
                  "refused": refused.id, "attempt": asked.id, "later": later.id,
                  "status": shipped.status, "read": ship.get_result(shipped.id).status}))
"""

READ = """
import json
from orders.tasks import OutOfStock, attempt, refuse, ship

done, failed = ship.get_result("%(shipped)s"), refuse.get_result("%(refused)s")
[error] = failed.errors
print(json.dumps({
    "done": [done.status, done.return_value, done.attempts, done.is_finished],
    "failed": [failed.status, error.exception_class_path, error.exception_class is OutOfStock,
               "raise OutOfStock" in error.traceback, failed.args],
    "context": attempt.get_result("%(attempt)s").return_value,
    "later": ship.get_result("%(later)s").status}))
"""


def test_djangoshop(db_url: str, db: Any, tmp_path: Path) -> None:
    manage(db_url, "migrate", "--verbosity", "0")
    assert "up to date" in manage(db_url, "taskworker", "migrate").lower() or True
    made = shell(db_url, ENQUEUE)
    assert made["status"] == made["read"] == "READY"
    rows = {r[0]: r[1:] for r in query(
        db, "SELECT id, task, queue, priority, arguments, run_at > now() + interval '50 "
            "minutes' FROM tasks")}
    assert int(made["lost"]) not in rows  # rolled back with its order
    assert rows[int(made["shipped"])] == ("orders.tasks.ship", "orders", 5,
                                         {"args": [made["order"]], "kwargs": {}}, False)
    assert rows[int(made["later"])][-1] is True

    p = serving(db_url, tmp_path)
    ids = [int(made[k]) for k in ("shipped", "refused", "attempt")]
    wait_until(lambda: query(db, "SELECT count(*) FROM tasks WHERE id = ANY(%s) AND status "
                                 "IN ('done', 'error')", (ids,))[0][0] == 3,
               60, "the three tasks to finish", [p], fail_on_exit=True)
    assert "Serving tasks: orders.tasks.attempt, orders.tasks.refuse, orders.tasks.ship, " \
           "orders.tasks.touch" in p.output()
    read = shell(db_url, READ % made)
    assert read["done"] == ["SUCCESSFUL", {"order": made["order"], "shipped": True}, 1, True]
    assert read["failed"] == ["FAILED", "orders.tasks.OutOfStock", True, True, [made["order"]]]
    assert read["context"] == {"id": made["attempt"], "attempt": 1, "note": "hi"}
    assert read["later"] == "READY"
    assert query(db, "SELECT shipped_at IS NOT NULL FROM orders_order WHERE id = %s",
                 (made["order"],)) == [(True,)]
    p.signal(signal.SIGINT)
    assert p.wait() == 0, p.output()


MANY = """
import json
from orders.models import Order
from orders.tasks import touch

order = Order.objects.create(total="1.00")
print(json.dumps([touch.enqueue(order.id, 0.3).id for _ in range(%d)] and order.id))
"""


def test_orm_connections_are_bounded_and_closed_at_100_workers(tmp_path: Path) -> None:
    """Each worker greenlet has its own Django connection while its task runs
    (at most WORKER_COUNT), and none outlives its task. A cluster of its own:
    100 connections at once need more than a default server's max_connections."""
    tasks = 300
    with throwaway_cluster(max_connections=300) as base, temp_database(base) as (_, url):
        manage(url, "migrate", "--verbosity", "0")
        manage(url, "taskworker", "migrate")
        order = shell(url, MANY % tasks)
        db = psycopg2.connect(url)
        db.autocommit = True
        try:
            p = serving(url, tmp_path, WORKER_COUNT="100")
            peak = 0

            def drained() -> bool:
                nonlocal peak
                (django, done), = query(db, """
                    SELECT (SELECT count(*) FROM pg_stat_activity
                            WHERE application_name = 'djangoshop'),
                           (SELECT count(*) FROM tasks WHERE status = 'done')""")
                peak = max(peak, django)
                return done == tasks

            wait_until(drained, 90, f"{tasks} tasks to run", [p], fail_on_exit=True,
                       interval=0.02)
            assert 20 <= peak <= 100, peak
            wait_until(lambda: query(db, "SELECT count(*) FROM pg_stat_activity WHERE "
                                         "application_name = 'djangoshop'") == [(0,)],
                       10, "every Django connection closed", [p], fail_on_exit=True)
            assert query(db, "SELECT touched FROM orders_order WHERE id = %s",
                         (order,)) == [(tasks,)]
            p.signal(signal.SIGINT)
            assert p.wait() == 0, p.output()
        finally:
            db.close()
