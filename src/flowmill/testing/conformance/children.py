"""Conformance: the join (`task_wait_children`), fail-fast, cascades of a cancel, and the
reaper's mark on a finish."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from ..._states import Phase, State
from ...errors import LeaseLost
from ...store.contract import Store
from ...store.contract.tasks import (
    ClaimedRow,
    ErrorInfo,
    Finish,
    FinishOutcome,
    FinishStatus,
    InsertStatus,
    LeaseRef,
    LeasesRenew,
    TaskCancel,
    TasksExpire,
    TasksFinish,
    TasksPromote,
)
from ._parents import (
    MEMO,
    ORCH2,
    ORCH3,
    assert_finalizes,
    claim_all,
    hooks,
    kids,
    ready_events,
    spawn,
    start,
    wait,
)
from ._util import (
    ERR,
    T0,
    TTL,
    all_states,
    claim_one,
    finish,
    get,
    insert,
    state_of,
    task,
)


class TaskWaitChildrenConformance:
    """`task_wait_children`: the parent parks until its children end, and is readied once."""

    async def test_no_children_finalizes_at_once(self, store: Store) -> None:
        parent = await start(store)
        assert await wait(store, parent, now=T0 + 5) is State.READY
        rec = await get(store, parent.id)
        assert rec.updated_at_ms == T0 + 5
        await assert_finalizes(store, parent.id)

    async def test_wait_children_is_fenced(self, store: Store) -> None:
        parent = await start(store)
        await kids(store, parent, 1)
        stale = dataclasses.replace(parent, lease_epoch=parent.lease_epoch + 1)
        with pytest.raises(LeaseLost):
            await wait(store, stale)
        assert await state_of(store, parent.id) is State.RUNNING
        assert await wait(store, parent) is State.WAITING_CHILDREN
        with pytest.raises(LeaseLost):  # once: the lease is given up with it
            await wait(store, parent)
        rec = await get(store, parent.id)
        assert (rec.state, rec.phase, rec.lease_owner) == (
            State.WAITING_CHILDREN,
            Phase.FINALIZE,
            None,
        )

    @pytest.mark.parametrize("fail_fast", [True, False])
    async def test_the_last_child_readies_the_parent_once(
        self, store: Store, fail_fast: bool
    ) -> None:
        parent = await start(store, fail_fast=fail_fast)
        ids = await kids(store, parent, 4)
        assert await wait(store, parent) is State.WAITING_CHILDREN
        rows = await claim_all(store, 4)
        ends = [State.COMPLETED, State.CANCELLED, State.COMPLETED, State.COMPLETED]
        if not fail_fast:
            ends = [State.COMPLETED, State.FAILED, State.DEAD_LETTERED, State.COMPLETED]
        for n, (row, end) in enumerate(zip(rows, ends, strict=True)):
            error = None if end is State.COMPLETED else ERR
            await finish(store, row.id, row.lease_epoch, end, error=error, now=T0 + n)
            expected = State.READY if n == 3 else State.WAITING_CHILDREN
            assert await state_of(store, parent.id) is expected
        assert [r.id for r in rows] == ids
        assert await ready_events(store, parent.id) == 1
        await assert_finalizes(store, parent.id)

    async def test_retries_and_delays_of_children_are_not_ends(self, store: Store) -> None:
        parent = await start(store)
        (child,) = await kids(store, parent, 1)
        assert await wait(store, parent) is State.WAITING_CHILDREN
        row = await claim_one(store)
        await finish(store, child, row.lease_epoch, State.READY, error=ERR)
        assert await state_of(store, parent.id) is State.WAITING_CHILDREN
        row = await claim_one(store)
        await finish(store, child, row.lease_epoch, State.SCHEDULED, delay_ms=10)
        assert await state_of(store, parent.id) is State.WAITING_CHILDREN
        assert await store.tasks_promote(TasksPromote(now_ms=T0 + 10)) == 1
        row = await claim_one(store, now=T0 + 10)
        await finish(store, child, row.lease_epoch, State.COMPLETED, now=T0 + 10)
        await assert_finalizes(store, parent.id)

    async def test_children_spawned_by_a_sibling_are_waited_for(self, store: Store) -> None:
        parent = await start(store)
        await kids(store, parent, 1)
        assert await wait(store, parent) is State.WAITING_CHILDREN
        first = await claim_one(store)
        # The child spawns a sibling: fenced by its own lease, parented to the parent.
        sibling = task(parent_id=parent.id)
        assert (await spawn(store, first, sibling))[0].status is InsertStatus.INSERTED
        await finish(store, first.id, first.lease_epoch, State.COMPLETED)
        assert await state_of(store, parent.id) is State.WAITING_CHILDREN
        second = await claim_one(store)
        assert second.id == sibling.id
        await finish(store, second.id, second.lease_epoch, State.COMPLETED)
        await assert_finalizes(store, parent.id)

    async def test_children_that_ended_before_the_wait_are_counted(self, store: Store) -> None:
        parent = await start(store, fail_fast=False)
        await kids(store, parent, 2)
        for row in await claim_all(store, 2):
            await finish(store, row.id, row.lease_epoch, State.FAILED, error=ERR)
        assert await wait(store, parent) is State.READY
        await assert_finalizes(store, parent.id)

    async def test_an_expired_child_is_a_child_end(self, store: Store) -> None:
        lenient = await start(store, fail_fast=False)
        strict = await start(store, ORCH2)
        await kids(store, lenient, 1, ttl_ms=1_000)
        await kids(store, strict, 1, ttl_ms=1_000)
        await kids(store, strict, 1, delay_ms=60_000)
        assert await wait(store, lenient) is State.WAITING_CHILDREN
        assert await wait(store, strict) is State.WAITING_CHILDREN
        assert await store.tasks_expire(TasksExpire(now_ms=T0 + 1_000)) == 2
        await assert_finalizes(store, lenient.id)
        rec = await get(store, strict.id)
        assert rec.state is State.FAILED and rec.error is not None
        assert rec.error.category == "child_failed" and "expired" in rec.error.message

    async def test_an_operator_cancel_of_a_child_is_a_child_end(self, store: Store) -> None:
        parent = await start(store)  # fail_fast: a cancelled child is not a failure
        c1, c2 = await kids(store, parent, 2)
        assert await wait(store, parent) is State.WAITING_CHILDREN
        assert (await store.task_cancel(TaskCancel(c1, now_ms=T0))).state is State.CANCELLED
        assert await state_of(store, parent.id) is State.WAITING_CHILDREN
        assert (await store.task_cancel(TaskCancel(c2, now_ms=T0))).state is State.CANCELLED
        await assert_finalizes(store, parent.id)

    async def test_concurrent_last_children_ready_the_parent_exactly_once(
        self, store: Store
    ) -> None:
        parent = await start(store)
        await kids(store, parent, 40)
        assert await wait(store, parent) is State.WAITING_CHILDREN
        rows = await claim_all(store, 40)

        async def end(row: ClaimedRow) -> FinishOutcome:
            (out,) = await store.tasks_finish(
                TasksFinish([Finish(row.id, row.lease_epoch, State.COMPLETED, b"1")], T0 + 1)
            )
            return out

        outs = await asyncio.gather(*(end(r) for r in rows))
        assert {o.status for o in outs} == {FinishStatus.APPLIED}
        assert await ready_events(store, parent.id) == 1
        await assert_finalizes(store, parent.id)

    async def test_concurrent_sibling_spawns_and_ends_keep_the_count(self, store: Store) -> None:
        parent = await start(store)
        await kids(store, parent, 12)
        assert await wait(store, parent) is State.WAITING_CHILDREN
        rows = await claim_all(store, 12)

        async def step(row: ClaimedRow) -> None:
            await spawn(store, row, task(parent_id=parent.id))
            await finish(store, row.id, row.lease_epoch, State.COMPLETED)

        await asyncio.gather(*(step(r) for r in rows))
        assert await state_of(store, parent.id) is State.WAITING_CHILDREN
        second = await claim_all(store, 12)
        await asyncio.gather(
            *(finish(store, r.id, r.lease_epoch, State.COMPLETED) for r in second[:-1])
        )
        assert await state_of(store, parent.id) is State.WAITING_CHILDREN
        await finish(store, second[-1].id, second[-1].lease_epoch, State.COMPLETED)
        assert await ready_events(store, parent.id) == 1
        await assert_finalizes(store, parent.id)


class TasksFinishFailFastConformance:
    """`tasks_finish` of a failed child under fail_fast: the parent fails, the rest is cancelled."""

    async def test_a_failed_child_fails_the_parent_and_cancels_the_rest(self, store: Store) -> None:
        parent = await start(store, has_on_cancel=True)
        c1, c2, c3 = await kids(store, parent, 3)
        (c4,) = await kids(store, parent, 1, delay_ms=60_000)
        assert await wait(store, parent) is State.WAITING_CHILDREN
        r1, r2 = await claim_all(store, 2)
        assert (r1.id, r2.id) == (c1, c2)
        await finish(store, c1, r1.lease_epoch, State.FAILED, error=ERR, now=T0 + 7)
        rec = await get(store, parent.id)
        assert rec.state is State.FAILED and rec.error is not None
        assert rec.error.category == "child_failed"
        assert c1 in rec.error.message and ERR.message in rec.error.message
        assert rec.finished_at_ms == T0 + 7
        (res,) = await store.results_get([parent.id])
        assert (res.state, res.error) == (State.FAILED, rec.error)
        # Waiting children are cancelled (with a result row each); running ones asked to stop.
        assert [await state_of(store, c) for c in (c3, c4)] == [State.CANCELLED] * 2
        assert {r.task_id: r.state for r in await store.results_get([c3, c4])} == {
            c3: State.CANCELLED,
            c4: State.CANCELLED,
        }
        rec2 = await get(store, c2)
        assert (rec2.state, rec2.cancel_requested) == (State.RUNNING, True)
        (renew,) = await store.leases_renew(LeasesRenew([LeaseRef(c2, r2.lease_epoch)], TTL, T0))
        assert renew.cancel_requested
        # The on_cancel hook is due, with the memo.
        (hook,) = await hooks(store)
        assert (hook.task_id, hook.hook, hook.memo, hook.state) == (
            parent.id,
            "on_cancel",
            MEMO,
            State.FAILED,
        )
        # The running child ends as it may; the parent stays failed.
        await finish(store, c2, r2.lease_epoch, State.COMPLETED, result=b"2")
        assert await state_of(store, parent.id) is State.FAILED
        assert await ready_events(store, parent.id) == 0

    async def test_a_failure_while_the_parent_runs_fails_its_wait(self, store: Store) -> None:
        parent = await start(store)
        c1, c2 = await kids(store, parent, 2)
        row = await claim_one(store)
        await finish(store, c1, row.lease_epoch, State.DEAD_LETTERED, error=ERR)
        assert await state_of(store, parent.id) is State.RUNNING  # execute decides
        assert await wait(store, parent) is State.FAILED
        rec = await get(store, parent.id)
        assert rec.error is not None and rec.error.category == "child_failed"
        assert c1 in rec.error.message and ERR.message in rec.error.message
        assert (rec.lease_owner, rec.lease_expires_at_ms) == (None, None)
        assert await state_of(store, c2) is State.CANCELLED
        assert await hooks(store) == []  # no on_cancel to run

    async def test_fail_fast_climbs_the_tree(self, store: Store) -> None:
        root = await start(store, has_on_cancel=True)
        mid = await start(store, ORCH2, under=root)
        (aunt,) = await kids(store, root, 1)
        (leaf,) = await kids(store, mid, 1)
        assert await wait(store, root) is State.WAITING_CHILDREN
        assert await wait(store, mid) is State.WAITING_CHILDREN
        rows = await claim_all(store, 2)
        leaf_row = next(r for r in rows if r.id == leaf)
        await finish(store, leaf, leaf_row.lease_epoch, State.FAILED, error=ERR)
        assert await state_of(store, mid.id) is State.FAILED
        rec = await get(store, root.id)
        assert rec.state is State.FAILED and rec.error is not None
        assert mid.id in rec.error.message
        assert (await get(store, aunt)).cancel_requested
        assert [h.task_id for h in await hooks(store)] == [root.id]

    async def test_cancel_requested_during_execute_wins_over_the_wait(self, store: Store) -> None:
        parent = await start(store, has_on_cancel=True)
        (child,) = await kids(store, parent, 1)
        assert (await store.task_cancel(TaskCancel(parent.id, now_ms=T0))).requested
        # Execute returned without noticing: parking it would lose the request.
        assert await wait(store, parent) is State.CANCELLED
        assert await state_of(store, child) is State.CANCELLED
        (res,) = await store.results_get([parent.id])
        assert res.state is State.CANCELLED
        (hook,) = await hooks(store)
        assert (hook.task_id, hook.memo) == (parent.id, MEMO)


class TaskCancelCascadeConformance:
    """`task_cancel` of a parent: the cancel cascades through its descendants."""

    async def test_cancel_of_a_parent_cascades_three_levels(self, store: Store) -> None:
        root = await start(store, has_on_cancel=True)
        mid = await start(store, ORCH2, under=root, has_on_cancel=True)
        low = await start(store, ORCH3, under=mid, has_on_cancel=True)
        leaves = await kids(store, low, 3)
        running = await claim_one(store)
        assert running.id == leaves[0]
        for row in (low, mid, root):
            assert await wait(store, row) is State.WAITING_CHILDREN
        out = await store.task_cancel(TaskCancel(root.id, "stop it all", now_ms=T0 + 3))
        assert (out.state, out.requested) == (State.CANCELLED, False)
        for task_id in (root.id, mid.id, low.id, *leaves[1:]):
            rec = await get(store, task_id)
            assert (rec.state, rec.finished_at_ms) == (State.CANCELLED, T0 + 3)
            assert rec.error is not None and rec.error.category == "cancelled"
        rec = await get(store, running.id)
        assert (rec.state, rec.cancel_requested) == (State.RUNNING, True)
        results = await store.results_get([root.id, mid.id, low.id, *leaves])
        assert {r.task_id for r in results} == {root.id, mid.id, low.id, *leaves[1:]}
        assert sorted(h.task_id for h in await hooks(store)) == sorted([root.id, mid.id, low.id])
        # The running leaf ends later: nothing above it moves again.
        await finish(store, running.id, running.lease_epoch, State.CANCELLED, error=ERR)
        assert await state_of(store, low.id) is State.CANCELLED

    async def test_a_cascade_pages_through_many_children(self, store: Store) -> None:
        parent = await start(store)
        n = 1_234
        await kids(store, parent, n)
        assert await wait(store, parent) is State.WAITING_CHILDREN
        await store.task_cancel(TaskCancel(parent.id, now_ms=T0))
        states = await all_states(store)
        assert list(states.values()).count(State.CANCELLED) == n + 1

    async def test_cancel_of_a_running_parent_cascades_when_it_ends(self, store: Store) -> None:
        parent = await start(store, has_on_cancel=True)
        c1, c2 = await kids(store, parent, 2)
        out = await store.task_cancel(TaskCancel(parent.id, now_ms=T0))
        assert (out.state, out.requested) == (State.RUNNING, True)
        assert [await state_of(store, c) for c in (c1, c2)] == [State.READY] * 2
        err = ErrorInfo("Cancelled", "stopped", "cancelled")
        ended = await finish(store, parent.id, parent.lease_epoch, State.CANCELLED, error=err)
        assert ended == FinishOutcome(parent.id, FinishStatus.APPLIED, State.CANCELLED)
        assert [await state_of(store, c) for c in (c1, c2)] == [State.CANCELLED] * 2
        again = await finish(store, parent.id, parent.lease_epoch, State.CANCELLED, error=err)
        assert again.status is FinishStatus.ALREADY
        assert [h.task_id for h in await hooks(store)] == [parent.id]

    async def test_a_cancel_that_wins_over_a_retry_cascades(self, store: Store) -> None:
        parent = await start(store)
        (child,) = await kids(store, parent, 1)
        await store.task_cancel(TaskCancel(parent.id, now_ms=T0))
        out = await finish(store, parent.id, parent.lease_epoch, State.READY, error=ERR)
        assert out.state is State.CANCELLED
        assert await state_of(store, child) is State.CANCELLED
        assert await hooks(store) == []  # no on_cancel declared


class TasksFinishReapedConformance:
    """`tasks_finish` after the reaper finished an expired lease: the late finish is refused."""

    async def test_a_late_worker_finish_after_the_reaper_is_lease_lost(self, store: Store) -> None:
        await insert(store, task())
        row = await claim_one(store)
        lease_err = ErrorInfo("LeaseExpired", "lease expired", "lease_expired")
        late = T0 + TTL + 1
        reaped = await finish(
            store,
            row.id,
            row.lease_epoch,
            State.READY,
            error=lease_err,
            now=late,
            expired_lease=True,
        )
        assert reaped == FinishOutcome(row.id, FinishStatus.APPLIED, State.READY)
        worker = await finish(store, row.id, row.lease_epoch, State.READY, error=ERR, now=late)
        assert worker == FinishOutcome(row.id, FinishStatus.LEASE_LOST, State.READY)
        again = await finish(
            store,
            row.id,
            row.lease_epoch,
            State.READY,
            error=lease_err,
            now=late,
            expired_lease=True,
        )
        assert again == FinishOutcome(row.id, FinishStatus.ALREADY, State.READY)
        # ... and the other way round: a worker's finish, then the reaper's, is LEASE_LOST.
        row = await claim_one(store, now=late)
        await finish(store, row.id, row.lease_epoch, State.COMPLETED, now=late)
        reaper = await finish(
            store,
            row.id,
            row.lease_epoch,
            State.COMPLETED,
            now=late + 2 * TTL,
            expired_lease=True,
        )
        assert reaper.status is FinishStatus.LEASE_LOST
