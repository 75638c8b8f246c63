"""Conformance: seeded random walks over every operation, checking the fencing invariants."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from ..._states import TERMINAL, State
from ...errors import DuplicateTask, IllegalTransition, LeaseLost
from ...store.contract import Store
from ...store.contract.tasks import (
    ErrorInfo,
    Finish,
    FinishStatus,
    LeaseRef,
    LeasesExpired,
    LeasesRenew,
    OnDuplicate,
    TaskCancel,
    TaskProgress,
    TaskRetry,
    TasksExpire,
    TasksFinish,
    TasksList,
    TasksPromote,
)
from ._util import T0, all_states, claim, insert, task

_FINISH_TARGETS = [
    State.COMPLETED,
    State.FAILED,
    State.DEAD_LETTERED,
    State.CANCELLED,
    State.SCHEDULED,
    State.READY,
]
# Each operation once, the common ones twice.
_OPS = (
    *("insert", "claim", "finish") * 2,
    *("stale", "renew", "promote", "expire", "reap", "cancel", "retry", "progress"),
)
# Not "replace": it may move a ready task back to scheduled, a move TRANSITIONS lacks.
_MODES: tuple[OnDuplicate, ...] = ("skip", "replace", "reject")
_LEASE_ERROR = ErrorInfo("LeaseExpired", "lease expired", "lease_expired")


@dataclass
class _Walk:
    """What the walk knows: the leases it holds and every epoch it has seen per task."""

    store: Store
    rng: random.Random
    now: int = T0
    ids: list[str] = field(default_factory=list)
    held: dict[str, int] = field(default_factory=dict)  # task id -> epoch of a live claim
    expires: dict[str, int] = field(default_factory=dict)  # task id -> lease expiry
    stale: dict[str, set[int]] = field(default_factory=dict)  # epochs that must stay dead
    last_epoch: dict[str, int] = field(default_factory=dict)

    def _forget(self, task_id: str) -> None:
        epoch = self.held.pop(task_id, None)
        self.expires.pop(task_id, None)
        if epoch is not None:
            self.stale.setdefault(task_id, set()).add(epoch)

    def _live(self) -> list[str]:
        """Held leases that have not expired: what happens to an expired one is the reaper's."""
        return sorted(i for i in self.held if self.expires[i] > self.now)

    async def step(self) -> None:
        self.now += self.rng.choice([0, 1, 5, 40, 200])
        op = self.rng.choice(_OPS)
        await getattr(self, f"_{op}")()

    async def _insert(self) -> None:
        rng = self.rng
        batch = [
            task(
                kind=rng.choice(["a", "b"]),
                priority=rng.randint(0, 2),
                delay_ms=rng.choice([None, None, 0, 30, 300]),
                ttl_ms=rng.choice([None, None, None, 20, 500]),
                key=rng.choice([None, None, "k1", "k2"]),
            )
            for _ in range(rng.randint(1, 4))
        ]
        mode: OnDuplicate = rng.choice(_MODES)
        try:
            outcomes = await insert(self.store, *batch, now=self.now, on_duplicate=mode)
        except DuplicateTask:
            assert mode == "reject"
            for t in batch:
                assert await self.store.task_get(t.id) is None
            return
        for o in outcomes:
            if o.id not in self.ids:
                self.ids.append(o.id)

    async def _claim(self) -> None:
        ttl = self.rng.choice([50, 100, 1000])
        rows = await claim(
            self.store,
            limit=self.rng.randint(1, 3),
            now=self.now,
            kinds=("a", "b"),
            ttl=ttl,
            worker=f"w{self.rng.randint(1, 3)}",
        )
        for row in rows:
            assert row.id not in self.held, f"{row.id} claimed while its lease is held"
            assert row.lease_epoch > self.last_epoch.get(row.id, 0), "epochs must increase"
            assert row.lease_expires_at_ms == self.now + ttl
            self.last_epoch[row.id] = row.lease_epoch
            self.held[row.id] = row.lease_epoch
            self.expires[row.id] = row.lease_expires_at_ms

    async def _finish(self) -> None:
        if not (live := self._live()):
            return
        task_id = self.rng.choice(live)
        target = self.rng.choice(_FINISH_TARGETS)
        f = Finish(
            task_id,
            self.held[task_id],
            target,
            result=b"r" if target is State.COMPLETED else None,
            error=None if target is State.COMPLETED else ErrorInfo("E", "m", "retryable"),
            delay_ms=self.rng.choice([1, 50]) if target is State.SCHEDULED else None,
            release=target is State.READY and self.rng.random() < 0.3,
        )
        (out,) = await self.store.tasks_finish(TasksFinish([f], self.now))
        assert out.status is FinishStatus.APPLIED, out
        assert out.state is target or out.state is State.CANCELLED
        self._forget(task_id)

    async def _stale(self) -> None:
        if not self.stale:
            return
        task_id = self.rng.choice(sorted(self.stale))
        epoch = self.rng.choice(sorted(self.stale[task_id]))
        before = await self.store.task_get(task_id)
        if self.rng.random() < 0.5:
            target = self.rng.choice([State.COMPLETED, State.FAILED, State.CANCELLED])
            f = Finish(task_id, epoch, target, error=ErrorInfo("E", "late", "x"))
            (out,) = await self.store.tasks_finish(TasksFinish([f], self.now))
            assert out.status is not FinishStatus.APPLIED
        else:
            with pytest.raises(LeaseLost):
                await self.store.task_progress(TaskProgress(task_id, epoch, 1.0, "late"))
        (renewed,) = await self.store.leases_renew(
            LeasesRenew([LeaseRef(task_id, epoch)], 1000, self.now)
        )
        assert not renewed.held
        assert await self.store.task_get(task_id) == before

    async def _renew(self) -> None:
        refs = [LeaseRef(i, self.held[i]) for i in self._live()]
        outs = await self.store.leases_renew(LeasesRenew(refs, 100, self.now))
        assert [(o.task_id, o.held, o.expires_at_ms) for o in outs] == [
            (r.task_id, True, self.now + 100) for r in refs
        ]
        self.expires.update((r.task_id, self.now + 100) for r in refs)

    async def _promote(self) -> None:
        await self.store.tasks_promote(TasksPromote(limit=self.rng.randint(1, 5), now_ms=self.now))

    async def _expire(self) -> None:
        await self.store.tasks_expire(TasksExpire(now_ms=self.now))

    async def _reap(self) -> None:
        for lease in await self.store.leases_expired(LeasesExpired(now_ms=self.now)):
            assert self.held.get(lease.task_id) == lease.epoch
            assert self.expires[lease.task_id] < self.now
            target = State.DEAD_LETTERED if lease.attempt >= lease.max_attempts else State.READY
            f = Finish(lease.task_id, lease.epoch, target, error=_LEASE_ERROR, expired_lease=True)
            (out,) = await self.store.tasks_finish(TasksFinish([f], self.now))
            assert out.status is FinishStatus.APPLIED
            self._forget(lease.task_id)

    async def _cancel(self) -> None:
        if not self.ids:
            return
        task_id = self.rng.choice(self.ids)
        out = await self.store.task_cancel(TaskCancel(task_id, now_ms=self.now))
        assert out.requested == (task_id in self.held)
        if not out.requested:
            assert out.state in TERMINAL

    async def _retry(self) -> None:
        ended = await self.store.tasks_list(
            TasksList(states=[State.FAILED, State.DEAD_LETTERED], limit=5)
        )
        if not ended:
            return
        rec = self.rng.choice(ended)
        try:
            assert await self.store.task_retry(TaskRetry(rec.id, self.now)) is State.READY
        except DuplicateTask:
            assert rec.dedup_key is not None
        for done in await self.store.tasks_list(TasksList(states=[State.COMPLETED], limit=1)):
            with pytest.raises(IllegalTransition):
                await self.store.task_retry(TaskRetry(done.id, self.now))

    async def _progress(self) -> None:
        if not (live := self._live()):
            return
        task_id = self.rng.choice(live)
        await self.store.task_progress(TaskProgress(task_id, self.held[task_id], 50.0, None))

    async def check(self) -> None:
        states = await all_states(self.store)
        assert sorted(states) == sorted(self.ids)
        running = {i for i, s in states.items() if s is State.RUNNING}
        assert running == set(self.held)
        results = {r.task_id: r.state for r in await self.store.results_get(self.ids)}
        assert results == {i: s for i, s in states.items() if s in TERMINAL}
        counts = await self.store.tasks_count()
        assert sum(c.count for c in counts) == len(self.ids)


class WalkConformance:
    """Random interleavings of every operation keep the fencing and bookkeeping invariants."""

    @pytest.mark.parametrize("seed", range(6))
    async def test_random_walk(self, store: Store, seed: int) -> None:
        walk = _Walk(store, random.Random(seed))
        for i in range(250):
            await walk.step()
            if i % 50 == 49:
                await walk.check()
        await walk.check()
