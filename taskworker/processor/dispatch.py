"""What the fetcher, the listener, the workers, the heartbeat and the completer
share: the queue of claimed tasks, the fetcher's wake-up, and which tasks this
process holds and runs, with the time each one's lease is known to last.

The processor owns one `Dispatch`; the others reach it only through the methods
below, each named for the event it records, so a reader can see who changes
what: the fetcher hands tasks out, workers take, start and finish them, the
heartbeat renews their leases or marks the ones taken away, the completer
settles them once their outcome is written, and shutdown closes it.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.queue import Queue

from ..store.tasks import ClaimedTask

# FETCH_LIMIT unset: each claim is sized here (free_slots).
AUTO_LIMIT = 1000  # most tasks an automatic claim takes
PREFETCH_SECONDS = 0.05  # an automatic claim queues what the workers finish in this long,
PREFETCH_CLAIMS = 2  # or while this many claims take their measured time, if longer
RATE_EVERY = 0.5  # seconds over which the task rate is measured
RATE_FIRST = 0.02  # seconds of work at least before the first measure


class Dispatch:
    def __init__(self, worker_count: int, lease: float) -> None:
        self.worker_count = worker_count
        self.lease = lease
        self._queue: Queue = Queue()  # claimed tasks waiting for a worker; None: stop
        # How many are in _queue: idle workers wait on this, not in _queue.get()
        # (see take).
        self._ready = Semaphore(0)
        self._wake = Event()  # the fetcher sleeps on it
        self._held: dict[int, ClaimedTask] = {}  # claimed, outcome not yet written
        self._lease_ends: dict[int, float] = {}  # held: when its lease runs out (monotonic)
        self._lost: set[int] = set()  # held, but the heartbeat found the lease gone
        self._cancel: set[int] = set()  # held, and `taskworker cancel` asked to stop it
        self._starts: dict[int, float] = {}  # running, start not yet written: when (monotonic)
        # worker number -> its task and its greenlet
        self._running: dict[int, tuple[ClaimedTask, gevent.Greenlet]] = {}
        self._rate: float | None = None  # tasks finished per second; None: none yet
        self._finished = 0  # tasks finished since _rate_since
        self._rate_since: float | None = None  # the first finish, then the last measure
        self._claim_seconds = 0.0  # how long a claim takes (moving average)
        self._on_the_wire = 0  # tasks asked for by the claims sent and not yet answered
        # Rate-limited task names -> seconds after its claim was sent within which
        # a task's handler must start (catalog.py); and held tasks of those names
        # -> when that is (monotonic).
        self.start_guards: dict[str, float] = {}
        self._start_by: dict[int, float] = {}
        # Keyed tasks may have become claimable: one of ours ended (its key has
        # room) or tasks were inserted (exchange.py: claim_keyed).
        self._keyed_news = False

    # --- the fetcher

    def free_slots(self, fetch_limit: int | None) -> int:
        """How many tasks to claim now: 0 while the workers have enough.

        Idle workers plus a prefetch, at most `fetch_limit` (FETCH_LIMIT); and no
        claim for only a slot or two while the queue still feeds every worker, so
        a busy process claims in batches instead of one by one.

        Unset (None), the prefetch is what the workers will start, at the task
        rate measured, while PREFETCH_CLAIMS claims take their measured time (at
        least PREFETCH_SECONDS; none until a rate is measured, and none for tasks
        slower than that), and a claim takes at most AUTO_LIMIT: fast tasks get
        large claims and few round trips (a hundred workers of tasks that take
        microseconds claim hundreds ahead), and the next tasks are there before
        the workers run dry; slow ones are not hoarded by one process, their
        leases running, while other processes' workers sit idle.

        With FETCH_LIMIT set, the prefetch is one round (WORKER_COUNT more tasks
        queued than the workers run), as in the original; or, when the workers
        finish more than that while PREFETCH_CLAIMS claims take their time, that
        much, at most PREFETCH_CLAIMS full claims. Without it, FETCH_LIMIT=100
        at 20 workers claimed 40 tasks at a time, one claim after the other:
        half the speed of the same setting in part 6's code (issue 21)."""
        queued = self._queue.qsize() + self._on_the_wire  # (two claims: see on_the_wire)
        idle = self.worker_count - len(self._running)
        rate = self._task_rate()
        ahead = max(PREFETCH_SECONDS, PREFETCH_CLAIMS * self._claim_seconds)
        prefetch = 0 if rate is None else min(AUTO_LIMIT, math.floor(rate * ahead))
        if fetch_limit is None:
            limit = AUTO_LIMIT
        else:
            prefetch = max(self.worker_count, min(prefetch, PREFETCH_CLAIMS * fetch_limit))
            limit = fetch_limit
        free = idle + prefetch - queued
        batch = min(limit, self.worker_count)
        if fetch_limit is None:  # half the window per claim: two claims can be in flight
            limit = min(limit, max(batch, (idle + prefetch + 1) // 2))
        if idle > queued or free >= max(1, batch // 2):
            return min(free, limit)
        return 0

    @contextmanager
    def on_the_wire(self, limit: int) -> Iterator[None]:
        """A claim of up to `limit` tasks is on its way: counted as queued, so
        that a claim sent meanwhile (a busy process has two, see
        Exchange._along) asks only for what this one will not bring."""
        self._on_the_wire += limit
        try:
            yield
        finally:
            self._on_the_wire -= limit

    def claim_on_the_wire(self) -> bool:
        return self._on_the_wire > 0  # (every claim asks for one task at least)

    def claimed_in(self, seconds: float) -> None:
        """A claim took `seconds`, sent to answered (for the automatic prefetch)."""
        self._claim_seconds = (self._claim_seconds + seconds) / 2 if self._claim_seconds \
            else seconds

    def _task_rate(self) -> float | None:
        """Tasks finished per second, measured over RATE_EVERY at least from the
        first finish (each new measure weighs three times the last, so the rate
        follows a change within a second, and one idle spell does not zero it)."""
        if self._rate_since is None:
            return None
        now = time.monotonic()
        elapsed = now - self._rate_since
        # The first measure as soon as a few rounds finished (fast tasks need
        # large claims from the start), then every RATE_EVERY.
        first = self._rate is None and self._finished >= 2 * self.worker_count \
            and elapsed >= RATE_FIRST
        if elapsed >= RATE_EVERY or first:
            measured = self._finished / elapsed
            self._rate = measured if self._rate is None else (self._rate + 3 * measured) / 4
            self._finished, self._rate_since = 0, now
        return self._rate

    def hand_out(self, tasks: list[ClaimedTask], claimed_at: float) -> None:
        """Queue claimed tasks for the workers, in this order. `claimed_at`: the
        monotonic time the claim was sent (its lease counts from then at most)."""
        for task in tasks:
            if task.cancel_requested:
                self._cancel.add(task.id)
            self._held[task.id] = task
            self._lease_ends[task.id] = claimed_at + self.lease
            if self.start_guards and task.name is not None \
                    and (guard := self.start_guards.get(task.name)) is not None:
                self._start_by[task.id] = claimed_at + guard
            self._queue.put(task)
            self._ready.release()

    def held_by_queue(self) -> Counter[str]:
        """Tasks held per queue (for the caps of QUEUES=images:5)."""
        return Counter(task.queue for task in self._held.values())

    def sleep(self, timeout: float) -> None:
        """The fetcher waits until woken, or `timeout` seconds."""
        self._wake.wait(timeout)
        self._wake.clear()

    def wake(self) -> None:
        """Make the fetcher look again now: tasks may be claimable, or due."""
        self._wake.set()

    def inserted(self) -> None:
        """Tasks were inserted (a notification): look again now, keyed ones too."""
        self._keyed_news = True
        self._wake.set()

    def keyed_news(self) -> bool:
        """Have keyed tasks become claimable since the last ask? (Then cleared.)"""
        news, self._keyed_news = self._keyed_news, False
        return news

    # --- the workers

    def take(self) -> ClaimedTask | None:
        """The next task for a worker; None once the processor is stopping.

        An idle worker waits on the semaphore that counts the queue's items, not
        in the queue's get(): gevent's Queue wakes its waiting getters one after
        the other inside a single hub callback, and with thousands of workers
        waiting that cost about 60 us per task woken, against 5 us through the
        semaphore (10,000 workers; 12 against 5 us with 1,000). A backlog started
        by 10,000 workers spent most of its first second there."""
        self._ready.acquire()
        return self._queue.get_nowait()

    def is_lost(self, task: ClaimedTask) -> bool:
        return task.id in self._lost

    def lease_ending(self, task: ClaimedTask, margin: float) -> bool:
        """Will the task's lease run out within `margin` seconds, unrenewed?"""
        return self._lease_ends.get(task.id, 0.0) - time.monotonic() < margin

    def too_late_to_start(self, task: ClaimedTask) -> bool:
        """Is a rate-limited task past the time its handler had to start by?"""
        by = self._start_by.pop(task.id, None)
        return by is not None and time.monotonic() > by

    def started(self, worker: int, task: ClaimedTask) -> None:
        self._running[worker] = (task, gevent.getcurrent())
        self._starts[task.id] = time.monotonic()

    def finished(self, worker: int) -> None:
        """A worker is idle again: the fetcher may claim for it."""
        ran = self._running.pop(worker, None)
        if ran is not None and ran[0].keyed:
            self._keyed_news = True
        self._finished += 1
        if self._rate_since is None:
            self._rate_since = time.monotonic()
        self._wake.set()

    # --- the heartbeat and the completer

    def held_ids(self) -> list[int]:
        return list(self._held)

    def holds(self) -> list[tuple[int, int]]:
        """(id, fence) of every task held: what the heartbeat renews, and what
        the orphan check knows of."""
        return [task.hold for task in self._held.values()]

    def started_ago(self, task_ids: list[int]) -> list[float | None]:
        """Seconds since each task's handler started, for the ones whose start
        is not written yet (None for the others: not started, or written)."""
        now = time.monotonic()
        return [None if (at := self._starts.get(i)) is None else now - at for i in task_ids]

    def starts_written(self, task_ids: list[int]) -> None:
        """The heartbeat wrote these starts (or their tasks are no longer ours)."""
        for task_id in task_ids:
            self._starts.pop(task_id, None)

    def renewed(self, task_ids: set[int], until: float) -> None:
        """The heartbeat extended these leases to `until` (monotonic)."""
        for task_id in task_ids:
            if task_id in self._lease_ends:
                self._lease_ends[task_id] = until

    def mark_lost(self, task_ids: list[int]) -> None:
        """These leases were taken away: a worker skips them if not yet started."""
        self._lost.update(i for i in task_ids if i in self._held)

    def running_with_lease_ending(self, margin: float,
                                  ) -> list[tuple[int, ClaimedTask, gevent.Greenlet]]:
        """(worker, task, greenlet) of each running task whose lease runs out
        within `margin` seconds, unrenewed."""
        return [(worker, task, greenlet) for worker, (task, greenlet) in self._running.items()
                if self.lease_ending(task, margin)]

    def cancel_requested(self, task_ids: list[int],
                         ) -> list[tuple[int, ClaimedTask, gevent.Greenlet]]:
        """`taskworker cancel` asked to stop these tasks: remember it for the
        ones held, and return (worker, task, greenlet) of those running now."""
        new = {i for i in task_ids if i in self._held and i not in self._cancel}
        self._cancel.update(new)
        return [(worker, task, greenlet) for worker, (task, greenlet) in self._running.items()
                if task.id in new]

    def is_cancelled(self, task_id: int) -> bool:
        return task_id in self._cancel

    def settle(self, task: ClaimedTask) -> None:
        """The claim's outcome is written (or fenced off): no longer held. (A
        later claim of the same task, made since, stays held.)"""
        if self._held.get(task.id) is task:
            del self._held[task.id]
            self._starts.pop(task.id, None)
            self._lease_ends.pop(task.id, None)
            self._start_by.pop(task.id, None)
            self._lost.discard(task.id)
            self._cancel.discard(task.id)

    # --- shutdown

    def close(self) -> list[ClaimedTask]:
        """Stop every worker once it is done with its task; return the tasks still
        queued, which no worker will start (the caller gives them back)."""
        queued = []
        while not self._queue.empty():
            task = self._queue.get_nowait()
            self._ready.acquire(blocking=False)
            if task is not None:
                queued.append(task)
        for _ in range(self.worker_count):
            self._queue.put(None)
            self._ready.release()
        self._wake.set()
        return queued

    # --- what others may read

    def held_count(self) -> int:
        return len(self._held)

    def running_count(self) -> int:
        return len(self._running)

    def idle_count(self) -> int:
        """Workers with nothing to run: none running, none queued or on its way."""
        return max(self.worker_count - len(self._running) - self._queue.qsize()
                   - self._on_the_wire, 0)

    def stats(self) -> dict[str, int]:
        return {"held": len(self._held), "busy": len(self._running),
                "workers": self.worker_count}
