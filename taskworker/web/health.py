"""What /healthz reports: whether this process can still do its work.

It fails (503) when a service died, when a handler blocked the whole process
for longer than SHUTDOWN_TIMEOUT within the last HEALTH_MAX_DOWNTIME (while it
blocks, nothing answers at all), when a connection has failed for longer than
HEALTH_MAX_DOWNTIME, when a connection was lost RECENT_LOSSES times within that
window (it keeps being dropped), or while the process shuts down. Every
connection the process has is watched, whichever service owns it.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Protocol

from ..store.connection import RECENT_LOSSES, ConnectionState


class Observed(Protocol):
    """What the web side may know of a running processor."""

    holder: str

    def failure(self) -> str | None:
        """Why a service died and stopped the process, if one did."""

    def stopping(self) -> bool: ...

    def dead_services(self) -> list[str]: ...

    def blocked(self, within: float) -> str | None:
        """A handler that blocked the whole process for long, lately."""

    def connections(self) -> list[ConnectionState]:
        """Every connection of the process, in one list."""

    def stats(self) -> dict[str, Mapping[str, float]]:
        """Each part's counters, by part (dispatch, fetcher, completer, ...)."""


def problems(process: Observed, max_downtime: float) -> list[str]:
    """What is wrong with the process, one short phrase each; [] when healthy."""
    failure = process.failure()
    if failure:
        return [failure]
    if process.stopping():
        return ["shutting down"]
    found = [f"{name} is not running" for name in process.dead_services()]
    blocked = process.blocked(max_downtime)
    if blocked:
        found.append(blocked)
    now = time.monotonic()
    for conn in process.connections():
        since, losses = conn.failing_since, conn.losses
        if since is not None and now - since > max_downtime:
            found.append(f"database connection ({conn.name}) down for {now - since:.0f}s")
        elif len(losses) == RECENT_LOSSES and now - losses[0] <= max_downtime:
            found.append(f"database connection ({conn.name}) lost {len(losses)} times "
                         f"in {now - losses[0]:.0f}s")
    return found
