"""What a handler raises to choose how its task ends, besides returning (done)
or raising anything else (a failure, retried per MAX_RETRIES / max_retries):

    raise taskworker.Fail("invoice is void")   # error now, no retry
    raise taskworker.Snooze(60)                # pending again in 60 s, attempt not counted
    raise taskworker.Cancel("customer left")   # cancelled, not retried

No gevent here: application code imports these wherever it runs.
"""
from __future__ import annotations


class Fail(Exception):
    """Raise to end the task in error now, without a retry."""


class Snooze(Exception):  # noqa: N818 (named for what it does, as River's JobSnooze)
    """Raise to put the task back to pending for `delay` seconds; the run does not
    count as an attempt (nor against MAX_RETRIES)."""

    def __init__(self, delay: float) -> None:
        if not isinstance(delay, (int, float)) or delay < 0:
            raise ValueError("Snooze(delay): delay must be a number of seconds >= 0")
        super().__init__(f"snoozed for {delay:g}s")
        self.delay = float(delay)


class Cancel(Exception):  # noqa: N818
    """Raise to end the task as cancelled (not error, not retried)."""
