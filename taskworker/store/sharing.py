"""How a claim shares the free workers between the queues a process serves, for
the claims the fetcher shares itself (`claim_shares` in queries.sql): the same
rule as the whole `claim` statement's, in Python. No database here.
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tasks import Pairs, Served


def shares(served: Served, pairs: Pairs, limit: int) -> dict[str, int] | None:
    """How many tasks to claim from each queue, as `claim` would share them, when
    every served queue in `pairs` holds only names `served` knows; else None
    (the whole claim statement reads such a queue name by name)."""
    names: dict[str, set[str]] = {}
    for queue, name in pairs:
        if served.queues is None or queue in served.queues:
            names.setdefault(queue, set()).add(name)
    known = set(served.names)
    queues = [q for q, found in names.items() if found & known]
    if not queues or any(not names[q] <= known for q in queues):
        return None
    base, extra = divmod(limit, len(queues))
    lucky = set(random.sample(queues, extra))
    wanted = {q: min(base + (q in lucky), served.rooms.get(q, limit)) for q in queues}
    return {q: n for q, n in wanted.items() if n > 0}
