"""How a busy fetcher shares a claim between its queues (store/sharing.py), and
when it leaves that to the whole claim statement."""

from __future__ import annotations

from collections import Counter

from taskworker.store.sharing import shares
from taskworker.store.tasks import Served

PAIRS = [("a", "x"), ("a", "y"), ("b", "x"), ("c", "")]


def test_every_queue_gets_an_equal_share_and_the_rest_goes_to_some() -> None:
    served = Served(None, ["", "x", "y"], {}, [])
    got = shares(served, PAIRS, 10)
    assert got is not None and sum(got.values()) == 10
    assert sorted(got.values()) == [3, 3, 4]
    # The remainder is drawn at random: over many claims every queue gets it.
    lucky = Counter(q for _ in range(300) for q, n in shares(served, PAIRS, 10).items() if n == 4)
    assert set(lucky) == {"a", "b", "c"}


def test_a_claim_smaller_than_the_queues_offers_some_queues_nothing() -> None:
    got = shares(Served(None, ["", "x", "y"], {}, []), PAIRS, 2)
    assert got is not None and sorted(got.values()) == [1, 1] and len(got) == 2


def test_only_served_queues_with_known_names_caps_and_full_queues() -> None:
    assert shares(Served(["a", "b"], ["x", "y"], {}, []), PAIRS, 9) in (
        {"a": 5, "b": 4}, {"a": 4, "b": 5})
    # c holds only tasks without a name, which this process cannot run: no share.
    assert set(shares(Served(None, ["x", "y"], {"c": 5}, []), [p for p in PAIRS if p[0] != "c"],
                      8) or ()) == {"a", "b"}
    assert shares(Served(None, ["", "x", "y"], {"a": 1, "b": 0}, []), PAIRS, 9) == {
        "a": 1, "c": 3}  # a is capped at 1 place left; b has none


def test_a_queue_with_a_name_it_does_not_know_goes_to_the_whole_claim() -> None:
    assert shares(Served(None, ["", "x"], {}, []), PAIRS, 10) is None  # a holds y
    assert shares(Served(None, ["x"], {}, []), [("c", "")], 10) is None  # nothing to serve
