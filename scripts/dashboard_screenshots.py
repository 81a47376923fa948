"""Take the documentation's screenshots of the dashboard (docs/dashboard/*.png).

    python scripts/dashboard_screenshots.py postgresql://postgres@127.0.0.1:5432/postgres

Needs a superuser URL (it creates and drops the database `twshots`), the
playwright package and a Chromium (`apt-get install chromium`, or $CHROMIUM).
It migrates, writes a small application of three named tasks in two queues (one
periodic), enqueues work for it, adds an hour of finished tasks for the chart,
starts two `serve` processes and the dashboard, and photographs every page on a
laptop-sized and a phone-sized screen while the queue moves.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "dashboard"
sys.path.insert(0, str(ROOT / "tests"))
from browser import chromium_path  # noqa: E402

APP = '''
import random
import gevent
import taskworker


@taskworker.task("images.resize", queue="images", max_retries=2, retry_backoff="5s")
def resize(payload):
    gevent.sleep(random.uniform(0.5, 3.0))
    if random.random() < 0.1:
        raise OSError("cannot identify image file " + payload)
    return "resized " + payload


@taskworker.task("emails.send", queue="emails", max_running=3)
def send(payload):
    gevent.sleep(random.uniform(0.2, 1.0))
    return "sent"


@taskworker.task("reports.nightly", queue="emails", every="30s")
def nightly(payload):
    return "report written"
'''

HISTORY = """
INSERT INTO tasks (payload, task, queue, status, result, error, attempts, created_at, updated_at)
SELECT CASE WHEN n % 3 = 0 THEN 'welcome-' || n || '@example.com' ELSE 'photo-' || n || '.jpg' END,
       CASE WHEN n % 3 = 0 THEN 'emails.send' ELSE 'images.resize' END,
       CASE WHEN n % 3 = 0 THEN 'emails' ELSE 'images' END,
       CASE WHEN n % 23 = 0 THEN 'error' ELSE 'done' END,
       CASE WHEN n % 23 = 0 THEN NULL ELSE 'ok' END,
       CASE WHEN n % 23 = 0 THEN 'OSError: cannot identify image file photo-' || n || '.jpg' END,
       1, now() - (3600 - n * 3600.0 / 6000) * interval '1 second',
       now() - (3600 - n * 3600.0 / 6000) * interval '1 second'
           + (20 + 40 * sin(n / 400.0)) * interval '1 second'
FROM generate_series(1, 6000) AS n
"""
WORK = """
INSERT INTO tasks (payload, task, queue, priority)
SELECT CASE WHEN n % 3 = 0 THEN 'user-' || n || '@example.com' ELSE 'upload-' || n || '.png' END,
       CASE WHEN n % 3 = 0 THEN 'emails.send' ELSE 'images.resize' END,
       CASE WHEN n % 3 = 0 THEN 'emails' ELSE 'images' END,
       n % 2
FROM generate_series(1, 400) AS n
"""


def main(admin_url: str) -> None:
    if chromium_path() is None:
        sys.exit("no Chromium found: apt-get install chromium, or set CHROMIUM")
    from playwright.sync_api import sync_playwright

    url = admin_url.rsplit("/", 1)[0] + "/twshots"
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS twshots WITH (FORCE)")
        cur.execute("CREATE DATABASE twshots")
    work = Path(tempfile.mkdtemp(prefix="twshots-"))
    (work / "shop_tasks.py").write_text(APP)
    env = {**os.environ, "DATABASE_URL": url, "TASK_MODULES": "shop_tasks",
           "PYTHONPATH": str(work), "WORKER_COUNT": "8", "LOG_LEVEL": "WARNING"}
    taskworker = [sys.executable, "-m", "taskworker"]
    subprocess.run([*taskworker, "migrate"], env=env, cwd=work, check=True)
    db = psycopg2.connect(url)
    db.autocommit = True
    with db.cursor() as cur:
        cur.execute(HISTORY)
        cur.execute(WORK)
    procs = [subprocess.Popen([*taskworker, "serve"], env=env, cwd=work) for _ in range(2)]
    port = "8089"
    procs.append(subprocess.Popen([*taskworker, "dashboard", "--port", port], env=env,
                                  cwd=work))
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        time.sleep(12)  # work under way; the sampler has counted
        with db.cursor() as cur:
            cur.execute("SELECT id FROM tasks WHERE status = 'error' ORDER BY id DESC LIMIT 1")
            (failed,) = cur.fetchone()
        base = f"http://127.0.0.1:{port}"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(),
                                        args=["--no-sandbox", "--disable-gpu"])
            laptop = browser.new_page(viewport={"width": 1280, "height": 900})
            shots = (("overview", "/"), ("tasks", "/tasks?queue=images"),
                     ("task", f"/tasks/{failed}"), ("schedules", "/schedules"),
                     ("confirm", f"/actions/retry?id={failed}"))
            for name, path in shots:
                laptop.goto(base + path)
                laptop.wait_for_load_state("networkidle")
                laptop.screenshot(path=str(OUT / f"{name}.png"),
                                  full_page=name not in ("tasks",))
            phone = browser.new_page(viewport={"width": 390, "height": 844},
                                     device_scale_factor=2)
            phone.goto(base + "/")
            phone.wait_for_load_state("networkidle")
            phone.screenshot(path=str(OUT / "overview-phone.png"))
            browser.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        db.close()
        with admin.cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS twshots WITH (FORCE)")
        admin.close()
    print("\n".join(str(p.relative_to(ROOT)) for p in sorted(OUT.glob("*.png"))))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
