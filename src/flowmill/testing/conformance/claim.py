"""Conformance: `tasks_claim`, `leases_renew`, `task_progress` — leases and their fences."""

from __future__ import annotations

import asyncio

import pytest

from ..._states import Phase, State
from ...errors import LeaseLost
from ...store.contract import Store
from ...store.contract.tasks import (
    LeaseRef,
    LeasesExpired,
    LeasesRenew,
    RenewOutcome,
    TaskCancel,
    TaskProgress,
    TasksList,
)
from ._util import (
    KIND,
    T0,
    TTL,
    add,
    claim,
    claim_one,
    finish,
    get,
    insert,
    make_state,
    task,
)


class TasksClaimConformance:
    """`tasks_claim`: which tasks, in which order, with which lease."""

    async def test_claim_returns_the_task_and_takes_a_lease(self, store: Store) -> None:
        t = task(priority=2, max_attempts=4, timeout_ms=900, retry_policy=b'{"r": 1}')
        await insert(store, t)
        (row,) = await claim(store, now=T0 + 100, ttl=5_000, worker="w-7")
        assert (row.id, row.kind, row.queue, row.priority) == (t.id, KIND, "default", 2)
        assert (row.payload, row.phase, row.memo) == (t.payload, Phase.EXECUTE, None)
        assert (row.attempt, row.max_attempts, row.timeout_ms) == (1, 4, 900)
        assert (row.retry_policy, row.parent_id) == (b'{"r": 1}', None)
        assert row.lease_epoch == 1
        assert row.lease_expires_at_ms == T0 + 100 + 5_000
        rec = await get(store, t.id)
        assert (rec.state, rec.attempts, rec.lease_epoch) == (State.RUNNING, 1, 1)
        assert (rec.lease_owner, rec.lease_expires_at_ms) == ("w-7", T0 + 5_100)
        assert rec.started_at_ms == T0 + 100

    async def test_priority_then_fifo(self, store: Store) -> None:
        ids = {}
        for name, prio in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1), ("f", 10)]:
            ids[name] = await add(store, priority=prio)
        order = [(await claim_one(store)).id for _ in range(6)]
        assert order == [ids[n] for n in "fbdace"]
        assert await claim(store) == []

    async def test_a_batch_takes_the_best_tasks(self, store: Store) -> None:
        low = [await add(store, priority=0) for _ in range(3)]
        high = [await add(store, priority=1) for _ in range(2)]
        rows = await claim(store, limit=3)
        assert {r.id for r in rows} == {*high, low[0]}

    async def test_fifo_among_many(self, store: Store) -> None:
        ids = [o.id for o in await insert(store, *(task() for _ in range(30)))]
        got: list[str] = []
        while rows := await claim(store, limit=7):
            got.extend(sorted((r.id for r in rows), key=ids.index))
        assert got == ids

    async def test_only_listed_queues_and_kinds(self, store: Store) -> None:
        mine = await add(store, kind="a", queue="q1")
        await add(store, kind="b", queue="q1")
        await add(store, kind="a", queue="q2")
        await add(store, kind="zzz", queue="q1")
        rows = await claim(store, kinds=("a",), queues=("q1",))
        assert [r.id for r in rows] == [mine]
        rows = await claim(store, kinds=("a", "b"), queues=("q1", "q2"))
        assert sorted(r.kind + r.queue for r in rows) == ["aq2", "bq1"]
        # a kind nobody lists is never claimed
        for _ in range(3):
            assert await claim(store, kinds=("a", "b", "c"), queues=("q1", "q2")) == []
        (waiting,) = await store.tasks_list(TasksList(kind="zzz"))
        assert (waiting.state, waiting.attempts) == (State.READY, 0)

    async def test_empty_kinds_or_queues_claim_nothing(self, store: Store) -> None:
        await add(store)
        assert await claim(store, kinds=()) == []
        assert await claim(store, queues=()) == []

    async def test_limit_is_respected(self, store: Store) -> None:
        await insert(store, *(task() for _ in range(10)))
        assert len(await claim(store, limit=4)) == 4
        assert len(await claim(store, limit=0)) == 0
        assert len(await claim(store, limit=100)) == 6

    async def test_scheduled_tasks_are_not_claimed(self, store: Store) -> None:
        await add(store, delay_ms=1_000)
        assert await claim(store, now=T0 + 10_000) == []

    async def test_running_tasks_are_not_claimed_again(self, store: Store) -> None:
        await add(store)
        await claim_one(store)
        assert await claim(store, now=T0 + 10 * TTL) == []

    async def test_attempt_and_epoch_increment_on_every_claim(self, store: Store) -> None:
        task_id = await add(store)
        epochs, attempts = [], []
        for i in range(4):
            row = await claim_one(store, now=T0 + i)
            epochs.append(row.lease_epoch)
            attempts.append(row.attempt)
            await finish(store, task_id, row.lease_epoch, State.READY, now=T0 + i)
        assert epochs == [1, 2, 3, 4]
        assert attempts == [1, 2, 3, 4]
        assert (await get(store, task_id)).attempts == 4

    async def test_ttl_expired_tasks_are_not_claimed(self, store: Store) -> None:
        gone = await add(store, ttl_ms=1_000)
        live = await add(store, T0 + 500, ttl_ms=1_000)
        assert [r.id for r in await claim(store, now=T0 + 1_000)] == [live]
        assert await claim(store, now=T0 + 5_000) == []
        assert (await get(store, gone)).state is State.READY  # until tasks_expire runs

    async def test_concurrent_claimers_never_share_a_task(self, store: Store) -> None:
        ids = {o.id for o in await insert(store, *(task() for _ in range(50)))}
        batches = await asyncio.gather(*(claim(store, limit=5, worker=f"w{i}") for i in range(20)))
        got = [r.id for rows in batches for r in rows]
        assert len(got) == len(set(got)) == 50
        assert set(got) == ids
        assert all(r.lease_epoch == 1 for rows in batches for r in rows)

    async def test_claim_after_insert_into_other_queue(self, store: Store) -> None:
        await add(store, queue="other")
        assert await claim(store) == []
        assert len(await claim(store, queues=("other",))) == 1


class LeasesRenewConformance:
    """`leases_renew`: extends a held lease, reports a lost one and a cancel request."""

    async def test_renew_extends_a_held_lease(self, store: Store) -> None:
        task_id = await add(store)
        row = await claim_one(store)
        (out,) = await store.leases_renew(
            LeasesRenew([LeaseRef(task_id, row.lease_epoch)], 60_000, T0 + 20_000)
        )
        assert out == RenewOutcome(task_id, True, False, T0 + 80_000)
        rec = await get(store, task_id)
        assert rec.lease_expires_at_ms == T0 + 80_000
        assert rec.lease_epoch == row.lease_epoch and rec.state is State.RUNNING

    async def test_renew_with_a_stale_epoch_is_not_held(self, store: Store) -> None:
        task_id = await add(store)
        first = await claim_one(store)
        await finish(store, task_id, first.lease_epoch, State.READY)
        second = await claim_one(store)
        outs = await store.leases_renew(
            LeasesRenew(
                [LeaseRef(task_id, first.lease_epoch), LeaseRef(task_id, second.lease_epoch)],
                TTL,
                T0 + 1,
            )
        )
        assert [(o.held, o.expires_at_ms) for o in outs] == [(False, None), (True, T0 + 1 + TTL)]
        assert all(o.task_id == task_id for o in outs)
        assert (await get(store, task_id)).lease_expires_at_ms == T0 + 1 + TTL

    async def test_renew_of_unknown_or_finished_task(self, store: Store) -> None:
        done = await make_state(store, State.COMPLETED)
        waiting = await add(store, delay_ms=1_000)
        outs = await store.leases_renew(
            LeasesRenew(
                [LeaseRef("no-such-task", 1), LeaseRef(done, 1), LeaseRef(waiting, 0)], TTL, T0
            )
        )
        assert [o.task_id for o in outs] == ["no-such-task", done, waiting]
        assert [o.held for o in outs] == [False, False, False]

    async def test_renew_reports_cancel_requested(self, store: Store) -> None:
        task_id = await add(store)
        row = await claim_one(store)
        ref = LeaseRef(task_id, row.lease_epoch)
        (before,) = await store.leases_renew(LeasesRenew([ref], TTL, T0))
        assert before.held and not before.cancel_requested
        await store.task_cancel(TaskCancel(task_id, now_ms=T0))
        (after,) = await store.leases_renew(LeasesRenew([ref], TTL, T0 + 1))
        assert after.held and after.cancel_requested

    async def test_renew_many_in_one_call(self, store: Store) -> None:
        await insert(store, *(task() for _ in range(20)))
        rows = await claim(store, limit=20)
        refs = [LeaseRef(r.id, r.lease_epoch) for r in rows]
        outs = await store.leases_renew(LeasesRenew(refs, TTL, T0 + 5))
        assert [o.task_id for o in outs] == [r.id for r in rows]
        assert all(o.held and o.expires_at_ms == T0 + 5 + TTL for o in outs)
        assert await store.leases_renew(LeasesRenew([], TTL, T0)) == []

    async def test_renewed_lease_is_not_reaped(self, store: Store) -> None:
        task_id = await add(store)
        row = await claim_one(store, ttl=1_000)
        await store.leases_renew(LeasesRenew([LeaseRef(task_id, row.lease_epoch)], 1_000, T0 + 900))
        assert await store.leases_expired(LeasesExpired(now_ms=T0 + 1_500)) == []
        expired = await store.leases_expired(LeasesExpired(now_ms=T0 + 1_901))
        assert [e.task_id for e in expired] == [task_id]


class TaskProgressConformance:
    """`task_progress`: fenced by the lease epoch."""

    async def test_progress_is_stored(self, store: Store) -> None:
        task_id = await add(store)
        row = await claim_one(store)
        await store.task_progress(TaskProgress(task_id, row.lease_epoch, 42.5, "half 🚀", T0 + 7))
        rec = await get(store, task_id)
        assert (rec.progress_pct, rec.progress_message) == (42.5, "half 🚀")
        await store.task_progress(TaskProgress(task_id, row.lease_epoch, 100.0, None, T0 + 8))
        rec = await get(store, task_id)
        assert (rec.progress_pct, rec.progress_message) == (100.0, None)

    async def test_progress_with_a_stale_epoch_raises(self, store: Store) -> None:
        task_id = await add(store)
        first = await claim_one(store)
        await finish(store, task_id, first.lease_epoch, State.READY)
        await claim_one(store)
        with pytest.raises(LeaseLost) as info:
            await store.task_progress(TaskProgress(task_id, first.lease_epoch, 1.0, "late"))
        assert info.value.task_id == task_id and info.value.epoch == first.lease_epoch
        assert (await get(store, task_id)).progress_message is None

    @pytest.mark.parametrize("state", [State.READY, State.SCHEDULED, State.COMPLETED])
    async def test_progress_on_a_task_not_running_raises(self, store: Store, state: State) -> None:
        task_id = await make_state(store, state)
        epoch = (await get(store, task_id)).lease_epoch
        with pytest.raises(LeaseLost):
            await store.task_progress(TaskProgress(task_id, epoch, 1.0))

    async def test_progress_on_unknown_task_raises(self, store: Store) -> None:
        with pytest.raises(LeaseLost):
            await store.task_progress(TaskProgress("no-such-task", 1, 1.0))
