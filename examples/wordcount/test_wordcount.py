"""The wordcount example end to end, as its README runs it: create its table,
enqueue files from code, run `taskworker serve` with its handler, and find the
counts in word_counts and the results in tasks.

Fixtures (db_url, db, serve, and the autouse clean_env) come from the main suite:
tests/suite_fixtures.py, loaded by the root conftest.py.
"""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from invariants import query, stray_traceback, wait_until
from proc import child_env

HERE = Path(__file__).resolve().parent
HANDLER = "wordcount.handlers:count_words"
TEXTS = {
    "empty.txt": "",
    "one.txt": "hello",
    "poem.txt": "The fog comes\non little cat feet.\n\n  It sits looking\tover harbor\n",
    "unicode.txt": "Größe ändern — naïve café 東京 ok",
}


def example(db_url: str, *args: str) -> str:
    """Run `python -m wordcount.<args>` as the README does; return its stdout."""
    done = subprocess.run([sys.executable, "-m", *args], cwd=HERE, capture_output=True,
                          text=True, timeout=60, check=False,
                          env=child_env({"DATABASE_URL": db_url, "PYTHONPATH": str(HERE)}))
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done.stdout


def stop_cleanly(p: Any) -> None:
    """Ctrl+C: serve exits 0, with no traceback in its log but the failed tasks'."""
    p.signal(signal.SIGINT)
    assert p.wait() == 0, p.output()
    assert not stray_traceback(p.output()), p.output()  # (a task's own is marked)


def test_wordcount_example(db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    assert "word_counts is ready" in example(db_url, "wordcount.migrate")
    example(db_url, "wordcount.migrate")  # safe to run again

    for name, text in TEXTS.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    out = example(db_url, "wordcount.submit", *(str(tmp_path / n) for n in TEXTS))
    ids = {Path(path).name: int(task_id)
           for task_id, path in (line.split("\t") for line in out.splitlines())}
    assert sorted(ids) == sorted(TEXTS)
    null_id = query(db, "INSERT INTO tasks (payload) VALUES (NULL) RETURNING id")[0][0]

    p = serve(db_url, env={"TASK_HANDLER": HANDLER, "PYTHONPATH": str(HERE)})
    wait_until(lambda: not query(db, "SELECT count(*) FROM tasks WHERE status IN "
                                     "('pending', 'in_progress')")[0][0],
               30, "every task to finish", [p], fail_on_exit=True)
    stop_cleanly(p)

    expected = {ids[name]: len(text.split()) for name, text in TEXTS.items()}
    assert expected[ids["poem.txt"]] == 12 and expected[ids["unicode.txt"]] == 7
    assert dict(query(db, "SELECT task_id, words FROM word_counts")) == expected
    tasks = {row[0]: row[1:] for row in query(db, "SELECT id, status, result, error FROM tasks")}
    for task_id, words in expected.items():
        assert tasks[task_id] == ("done", str(words), None)
    assert tasks[null_id][:2] == ("error", None)
    assert tasks[null_id][2] == "ValueError: no text to count (the payload is NULL)"


def test_wordcount_named_tasks(db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    """The README's application: three named tasks in two queues (count: unique per
    file; add: max_running=1; report: periodic), started with one serve command."""
    example(db_url, "wordcount.migrate")
    for name, text in TEXTS.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    files = [str(tmp_path / n) for n in TEXTS]
    first = example(db_url, "wordcount.submit", "--named", *files)
    again = example(db_url, "wordcount.submit", "--named", files[0])  # still pending
    assert again.splitlines() == first.splitlines()[:1]
    assert query(db, "SELECT DISTINCT task, queue FROM tasks") == [("wordcount.count", "texts")]

    p = serve(db_url, env={"PYTHONPATH": str(HERE), "REPORT_EVERY": "1s",
                           "FETCH_INTERVAL": "0.3"},
              args=["--tasks", "wordcount.tasks"])
    total = sum(len(text.split()) for text in TEXTS.values())
    wait_until(lambda: query(db, "SELECT words FROM word_totals")[0][0] == total and query(
                   db, "SELECT count(*) FROM word_reports WHERE words = %s", (total,))[0][0],
               30, "the total counted and reported", [p], fail_on_exit=True)
    stop_cleanly(p)
    by_task = dict(query(db, "SELECT task, count(*) FROM tasks WHERE status = 'done' "
                             "GROUP BY task"))
    assert by_task["wordcount.count"] == by_task["wordcount.add"] == len(TEXTS)
    assert by_task["wordcount.report"] >= 1
    # Called with arguments, their return values are JSON in the rows.
    assert sorted(v for (v,) in query(db, "SELECT return_value FROM tasks WHERE task = "
                                          "'wordcount.count'")) == sorted(
        len(text.split()) for text in TEXTS.values())
    assert query(db, "SELECT return_value FROM tasks WHERE task = 'wordcount.report' AND "
                     "status = 'done' ORDER BY id DESC LIMIT 1") == [({"total_words": total},)]
    assert query(db, "SELECT DISTINCT queue FROM tasks WHERE task <> 'wordcount.count'") == [
        ("totals",)]
    assert query(db, "SELECT count(*) FROM taskworker_slots WHERE task = 'wordcount.add'") == [
        (1,)]


def test_wordcount_workflow(db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    """submit --workflow: per file a chain (normalize, words), the chains in a
    group whose callback (summary) runs once, with every file's count."""
    example(db_url, "wordcount.migrate")
    for name, text in TEXTS.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    out = example(db_url, "wordcount.submit", "--workflow",
                  *(str(tmp_path / n) for n in TEXTS))
    said = dict(line.split("\t") for line in out.splitlines())
    workflow, callback = int(said["workflow"]), int(said["summary"])
    assert query(db, "SELECT count(*) FROM tasks WHERE workflow_id = %s",
                 (workflow,)) == [(2 * len(TEXTS) + 1,)]
    p = serve(db_url, env={"PYTHONPATH": str(HERE), "FETCH_INTERVAL": "0.3"},
              args=["--tasks", "wordcount.tasks"])
    wait_until(lambda: query(db, "SELECT status FROM tasks WHERE id = %s",
                             (callback,)) == [("done",)],
               30, "the workflow's summary", [p], fail_on_exit=True)
    stop_cleanly(p)
    counts = [len("".join(c if c.isalnum() or c.isspace() else " "
                          for c in text.lower()).split()) for text in TEXTS.values()]
    assert counts == [0, 1, 12, 6]  # (the dash is punctuation)
    assert query(db, "SELECT return_value, arguments->'args'->0 FROM tasks WHERE id = %s",
                 (callback,)) == [({"files": 4, "words": sum(counts), "largest": 12}, counts)]
