"""The soak of issue 27 in short (benchmarks/soak.py): two `taskworker serve`
processes (WORKER_COUNT=100, PRUNE_AFTER=10s) on a throwaway cluster with
autovacuum on at PostgreSQL's defaults, fed calls with 1 KB of JSON arguments in
commits of 100 for two minutes, with a row trigger counting every claim and
completion per task. What a user would see: every task fed ran and finished once,
the backlog stayed small, and the table stayed the size of what PRUNE_AFTER keeps.

The bounds are loose on purpose (the speed of the soak is the benchmark's, in
benchmarks/RESULTS.md): 500 tasks/s is a tenth of the full soak's feed, and a few
percent of what two serve processes drain on this machine.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks import processes, soak

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]  # (slow: see tox.ini)

RATE = 500.0  # tasks per second
PRUNE_AFTER = 10.0  # seconds
TASK_BYTES = 10 * 1024  # generous bound on the disk one task ever takes (row versions, indexes)


@pytest.fixture(scope="module")
def result() -> Iterator[soak.Result]:
    # Four "minutes" of 30 s: two minutes of feed.
    options = soak.Options(minutes=4, rate=RATE, batch=100, prune_after=f"{PRUNE_AFTER:g}s",
                           audit=True, minute=30.0)
    try:
        yield soak.run(options, lambda message: None)
    finally:
        processes.remove_workdir()  # (the children's logs)


def test_every_task_fed_finished_once_and_none_is_left(result: soak.Result) -> None:
    a = result.audit
    assert a is not None
    assert a.fed == result.fed > RATE * 60  # (the feed ran: two minutes of it)
    assert (a.completed, a.completed_twice, a.claimed_twice, a.errors, a.left_open) == \
        (a.fed, 0, 0, 0, 0), a
    assert result.probes_missing == 0


def test_the_backlog_stays_within_a_few_seconds_of_feed(result: soak.Result) -> None:
    assert len(result.minutes) == 4
    assert max(m.backlog_max for m in result.minutes) <= RATE * 30, soak.report(result)


def test_pruning_keeps_the_table_to_what_prune_after_keeps(result: soak.Result) -> None:
    # Rows alive (n_live_tup) once the first PRUNE_AFTER has passed: what the feed of
    # PRUNE_AFTER plus a minute of slack leaves, far below the 60,000 fed since the
    # start; the whole relation no bigger than TASK_BYTES a task ever fed.
    lines = soak.report(result)
    for m in result.minutes[1:]:
        assert m.live <= RATE * (PRUNE_AFTER + 60), lines
    last = result.minutes[-1]
    size = (last.heap_mb + last.toast_mb + last.index_total_mb) * 2**20
    assert size <= result.fed * TASK_BYTES, lines


def test_the_report_and_plot_have_every_minute(result: soak.Result) -> None:
    lines = soak.report(result)
    assert sum(1 for ln in lines if ln.startswith("| ") and ln[2:3].isdigit()) >= 4
    assert soak.svg(result).count("<polyline") == 12
