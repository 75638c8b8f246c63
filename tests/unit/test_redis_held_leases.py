"""The Redis store's memory of the leases its claims took (`HeldLeases`)."""

from __future__ import annotations

import pytest

from flowmill.store.redis._leases import HeldLeases


def test_a_held_lease_is_named_at_its_epoch_only() -> None:
    held = HeldLeases()
    held.took("t1", 3, 2, "abc:1")
    assert held.lease("t1", 3) == [2, "abc:1"]
    assert held.lease("t1", 2) is None and held.lease("t2", 3) is None
    assert held.name({"id": "t1"}, "t1", 3) == {"id": "t1", "lease": [2, "abc:1"]}
    assert held.name({"id": "t1"}, "t1", 4) == {"id": "t1"}  # not ours: the epoch decides


def test_an_ended_lease_is_still_named_by_late_writes() -> None:
    held = HeldLeases()
    held.took("t1", 1, 1, "a:1")
    held.drop("t1", 1)
    assert len(held) == 0
    assert held.lease("t1", 1) == [1, "a:1"]  # a repeated finish still names it
    held.took("t1", 2, 2, "b:1")  # claimed again: the earlier lease stays known
    assert held.lease("t1", 1) == [1, "a:1"] and held.lease("t1", 2) == [2, "b:1"]
    held.drop("t1", 1)  # an old epoch's drop leaves the held lease alone
    assert len(held) == 1


def test_ended_leases_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(HeldLeases, "ENDED", 3)
    held = HeldLeases()
    for i in range(5):
        held.took(f"t{i}", 1, 1, f"s:{i}")
        held.drop(f"t{i}", 1)
    assert [held.lease(f"t{i}", 1) is not None for i in range(5)] == [
        False,
        False,
        True,
        True,
        True,
    ]


def test_seeds_are_random() -> None:
    seeds = {HeldLeases.seed() for _ in range(100)}
    assert len(seeds) == 100 and all(len(s) == 24 for s in seeds)
