"""Conformance: parents and children — spawns, the join, fail-fast, cascades, paging, hooks.

Parents are "orchestrator" tasks of their own kinds (so that claims pick them apart from
the leaves): claimed, they spawn children fenced by their lease, then park with
`task_wait_children`. The last child's end readies the parent for finalize exactly once.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from ..._states import Phase, State
from ...errors import InvalidParent, LeaseLost
from ...store.contract import Store
from ...store.contract.tasks import (
    ChildrenPage,
    ChildrenSummary,
    ChildrenSummaryQuery,
    ChildRow,
    ClaimedRow,
    ErrorGroup,
    ErrorInfo,
    Finish,
    FinishOutcome,
    FinishStatus,
    HookDone,
    HookRow,
    HooksClaim,
    InsertOutcome,
    InsertStatus,
    LeaseRef,
    LeasesRenew,
    NewTask,
    TaskCancel,
    TasksExpire,
    TasksFinish,
    TasksInsert,
    TasksPromote,
    TaskWaitChildren,
)
from ._util import (
    ERR,
    KIND,
    T0,
    TTL,
    all_events,
    all_states,
    claim,
    claim_one,
    finish,
    get,
    insert,
    state_of,
    task,
)

ORCH = "orch"  # parents
ORCH2 = "orch2"  # their children that are parents too
ORCH3 = "orch3"
MEMO = b'{"memo": 1}'


async def start(
    store: Store,
    kind: str = ORCH,
    *,
    under: ClaimedRow | None = None,
    now: int = T0,
    **kw: object,
) -> ClaimedRow:
    """A parent claimed (running execute): a root, or a child spawned by `under`."""
    t = task(kind, parent_id=under.id if under else None, **kw)  # type: ignore[arg-type]
    if under is None:
        await insert(store, t, now=now)
    else:
        await spawn(store, under, t, now=now)
    row = await claim_one(store, kinds=(kind,), now=now)
    assert row.id == t.id
    return row


async def spawn(
    store: Store, by: ClaimedRow, *tasks: NewTask, now: int = T0
) -> list[InsertOutcome]:
    """Insert `tasks` fenced by the lease `by` holds (their parent_id is set by the caller)."""
    return await store.tasks_insert(
        TasksInsert(list(tasks), "skip", now, LeaseRef(by.id, by.lease_epoch))
    )


async def kids(
    store: Store, parent: ClaimedRow, n: int, kind: str = KIND, **kw: object
) -> list[str]:
    """Spawn `n` children of `parent`, in one batch; their ids in spawn order."""
    news = [task(kind, parent_id=parent.id, **kw) for _ in range(n)]  # type: ignore[arg-type]
    outs = await spawn(store, parent, *news)
    assert [o.status for o in outs] == [InsertStatus.INSERTED] * n
    return [o.id for o in outs]


async def wait(store: Store, row: ClaimedRow, *, memo: bytes = MEMO, now: int = T0) -> State:
    return await store.task_wait_children(TaskWaitChildren(row.id, row.lease_epoch, memo, now))


async def claim_all(store: Store, n: int, kind: str = KIND, now: int = T0) -> list[ClaimedRow]:
    rows = await claim(store, limit=n, kinds=(kind,), now=now)
    assert len(rows) == n, f"expected {n} claimable {kind} tasks, got {len(rows)}"
    return rows


async def ready_events(store: Store, task_id: str) -> int:
    """How many times the task was made ready after its creation."""
    states = [e.state for e in await all_events(store) if e.task_id == task_id]
    return states[1:].count(State.READY)


async def hooks(
    store: Store, now: int = T0, kinds: tuple[str, ...] = (ORCH, ORCH2, ORCH3)
) -> list[HookRow]:
    return await store.hooks_claim(HooksClaim("hook-worker", list(kinds), 100, TTL, now))


async def assert_finalizes(store: Store, parent: str, *, attempts_before: int = 1) -> None:
    """The parent is ready in phase finalize with a fresh attempt budget; its claim carries
    the memo and runs finalize."""
    rec = await get(store, parent)
    assert (rec.state, rec.phase, rec.attempts) == (State.READY, Phase.FINALIZE, 0)
    assert (rec.lease_owner, rec.lease_expires_at_ms) == (None, None)
    kind = rec.kind
    row = await claim_one(store, kinds=(kind,))
    assert (row.id, row.phase, row.memo, row.attempt) == (parent, Phase.FINALIZE, MEMO, 1)
    assert row.lease_epoch == attempts_before + 1


class SpawnConformance:
    """tasks_insert with children: the fence, active parents, counters and child keys."""

    async def test_a_spawn_is_fenced_by_a_live_lease(self, store: Store) -> None:
        parent = await start(store)
        for epoch in (parent.lease_epoch - 1, parent.lease_epoch + 1):
            stale = dataclasses.replace(parent, lease_epoch=epoch)
            with pytest.raises(LeaseLost):
                await spawn(store, stale, task(parent_id=parent.id))
            with pytest.raises(LeaseLost):  # even with nothing to insert
                await spawn(store, stale)
        assert set(await all_states(store)) == {parent.id}
        (ok,) = await spawn(store, parent, task(parent_id=parent.id))
        assert ok.status is InsertStatus.INSERTED
        # A lease that expired and was reclaimed fences the old holder out.
        await finish(
            store,
            parent.id,
            parent.lease_epoch,
            State.READY,
            now=T0 + TTL + 1,
            error=ERR,
            expired_lease=True,
        )
        with pytest.raises(LeaseLost):
            await spawn(store, parent, task(parent_id=parent.id))
        again = await claim_one(store, kinds=(ORCH,), now=T0 + TTL + 2)
        with pytest.raises(LeaseLost):
            await spawn(store, parent, task(parent_id=parent.id))
        await spawn(store, again, task(parent_id=parent.id))
        assert len(await all_states(store)) == 3

    async def test_a_spawn_by_a_task_that_ended_is_refused(self, store: Store) -> None:
        parent = await start(store)
        await finish(store, parent.id, parent.lease_epoch, State.COMPLETED)
        with pytest.raises(LeaseLost):
            await spawn(store, parent, task())
        assert set(await all_states(store)) == {parent.id}

    async def test_the_parent_must_be_active(self, store: Store) -> None:
        alive = await start(store)
        done = await insert(store, task(KIND))
        row = await claim_one(store)
        await finish(store, row.id, row.lease_epoch, State.COMPLETED)
        before = await all_states(store)
        with pytest.raises(InvalidParent) as err:
            await insert(store, task(parent_id="no-such-task"))
        assert (err.value.parent_id, err.value.state) == ("no-such-task", None)
        with pytest.raises(InvalidParent) as err:
            await insert(store, task(parent_id=done[0].id))
        assert (err.value.parent_id, err.value.state) == (done[0].id, "completed")
        # One bad parent refuses the whole batch, fenced or not.
        mixed = [task(parent_id=alive.id), task(parent_id=done[0].id), task(parent_id=alive.id)]
        with pytest.raises(InvalidParent):
            await insert(store, *mixed)
        with pytest.raises(InvalidParent):
            await spawn(store, alive, *mixed)
        assert await all_states(store) == before
        # ... and nothing was counted: the parent finalizes at once.
        assert await wait(store, alive) is State.READY

    async def test_counters_grow_with_inserts_across_parents_in_one_batch(
        self, store: Store
    ) -> None:
        p1 = await start(store, ORCH)
        p2 = await start(store, ORCH2)
        batch = [task(parent_id=p1.id), task(parent_id=p2.id), task(parent_id=p1.id)]
        batch += [task(), task(parent_id=p2.id), task(parent_id=p2.id)]
        outs = await insert(store, *batch)  # not fenced: a submit with parent=
        assert [o.status for o in outs] == [InsertStatus.INSERTED] * 6
        assert await wait(store, p1) is State.WAITING_CHILDREN
        assert await wait(store, p2) is State.WAITING_CHILDREN
        rows = {r.id: r for r in await claim_all(store, 6)}
        order = [batch[i].id for i in (0, 1, 2, 4, 3, 5)]  # p2's last child ends last
        for n, child_id in enumerate(order):
            await finish(store, child_id, rows[child_id].lease_epoch, State.COMPLETED)
            p1_done, p2_done = n >= 2, n >= 5
            assert await state_of(store, p1.id) is (
                State.READY if p1_done else State.WAITING_CHILDREN
            )
            assert await state_of(store, p2.id) is (
                State.READY if p2_done else State.WAITING_CHILDREN
            )
        assert (await ready_events(store, p1.id), await ready_events(store, p2.id)) == (1, 1)

    async def test_child_keys_are_unique_per_parent_for_its_whole_life(self, store: Store) -> None:
        parent = await start(store)
        other = await start(store, ORCH2)
        first = task(parent_id=parent.id, child_key="a")
        assert await spawn(store, parent, first) == [InsertOutcome(first.id, InsertStatus.INSERTED)]
        # Across batches, and within one batch: the key's first holder stands for it.
        b1, b2, b3 = (task(parent_id=parent.id, child_key=k) for k in ("a", "b", "b"))
        assert await spawn(store, parent, b1, b2, b3) == [
            InsertOutcome(first.id, InsertStatus.SKIPPED),
            InsertOutcome(b2.id, InsertStatus.INSERTED),
            InsertOutcome(b2.id, InsertStatus.SKIPPED),
        ]
        # Scoped per parent: another parent may use the same key.
        o = task(parent_id=other.id, child_key="a")
        assert await spawn(store, other, o) == [InsertOutcome(o.id, InsertStatus.INSERTED)]
        # Still held after the child ended (an execute that runs again spawns nothing twice).
        rows = {r.id: r for r in await claim_all(store, 3)}
        await finish(store, first.id, rows[first.id].lease_epoch, State.COMPLETED)
        late = task(parent_id=parent.id, child_key="a")
        assert await spawn(store, parent, late) == [InsertOutcome(first.id, InsertStatus.SKIPPED)]
        assert late.id not in await all_states(store)
        # Skipped children were not counted: one child (b2) is outstanding, then none.
        assert await wait(store, parent) is State.WAITING_CHILDREN
        await finish(store, b2.id, rows[b2.id].lease_epoch, State.COMPLETED)
        await assert_finalizes(store, parent.id)

    async def test_spawns_with_dedup_keys_count_what_they_insert(self, store: Store) -> None:
        parent = await start(store)
        first = task(parent_id=parent.id, key="k", child_key="a")
        dup = task(parent_id=parent.id, key="k", child_key="b")
        again = task(parent_id=parent.id, child_key="a")
        other = task(parent_id=parent.id, key="j")
        assert await spawn(store, parent, first, dup, again, other) == [
            InsertOutcome(first.id, InsertStatus.INSERTED),
            InsertOutcome(first.id, InsertStatus.SKIPPED),
            InsertOutcome(first.id, InsertStatus.SKIPPED),
            InsertOutcome(other.id, InsertStatus.INSERTED),
        ]
        stale = dataclasses.replace(parent, lease_epoch=parent.lease_epoch + 1)
        with pytest.raises(LeaseLost):
            await spawn(store, stale, task(parent_id=parent.id, key="x"))
        with pytest.raises(InvalidParent):
            await insert(store, task(parent_id="no-such-task", key="y"))
        assert await wait(store, parent) is State.WAITING_CHILDREN
        rows = await claim_all(store, 2)
        await finish(store, rows[0].id, rows[0].lease_epoch, State.COMPLETED)
        assert await state_of(store, parent.id) is State.WAITING_CHILDREN
        await finish(store, rows[1].id, rows[1].lease_epoch, State.COMPLETED)
        await assert_finalizes(store, parent.id)

    async def test_concurrent_spawns_are_each_checked_on_their_own(self, store: Store) -> None:
        """Spawns on the store's own clock, as workers make them (a backend may merge them)."""
        parent = await start(store)
        await kids(store, parent, 6)
        assert await wait(store, parent) is State.WAITING_CHILDREN
        rows = await claim_all(store, 6)
        done = await start(store, ORCH2)
        await finish(store, done.id, done.lease_epoch, State.COMPLETED)

        async def sibling(by: ClaimedRow, key: str | None = None) -> list[InsertOutcome]:
            t = task(parent_id=parent.id, child_key=key)
            return await store.tasks_insert(TasksInsert([t], fence=LeaseRef(by.id, by.lease_epoch)))

        stale = dataclasses.replace(rows[0], lease_epoch=rows[0].lease_epoch + 1)
        got = await asyncio.gather(
            *(sibling(r) for r in rows[:4]),
            sibling(rows[4], "same"),
            sibling(rows[5], "same"),
            sibling(stale),
            store.tasks_insert(
                TasksInsert(
                    [task(parent_id=done.id)], fence=LeaseRef(rows[1].id, rows[1].lease_epoch)
                )
            ),
            return_exceptions=True,
        )
        assert all(isinstance(g, list) and g[0].status is InsertStatus.INSERTED for g in got[:4])
        keyed = got[4:6]
        assert all(isinstance(g, list) for g in keyed)
        statuses = sorted(g[0].status for g in keyed if isinstance(g, list))
        assert statuses == [InsertStatus.INSERTED, InsertStatus.SKIPPED]
        assert len({g[0].id for g in keyed if isinstance(g, list)}) == 1
        assert isinstance(got[6], LeaseLost)
        assert isinstance(got[7], InvalidParent) and got[7].state == "completed"
        # 6 children and the 5 siblings stored: the parent waits for all 11.
        for r in rows:
            await finish(store, r.id, r.lease_epoch, State.COMPLETED)
        assert await state_of(store, parent.id) is State.WAITING_CHILDREN
        late = await claim_all(store, 5)
        for r in late[:-1]:
            await finish(store, r.id, r.lease_epoch, State.COMPLETED)
        assert await state_of(store, parent.id) is State.WAITING_CHILDREN
        await finish(store, late[-1].id, late[-1].lease_epoch, State.COMPLETED)
        await assert_finalizes(store, parent.id)


class JoinConformance:
    """task_wait_children and the join: the last child's end readies the parent once."""

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


class FailFastConformance:
    """fail_fast: the first failed child fails the parent and cancels the rest."""

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


class CascadeConformance:
    """Cancelling a parent cancels what hangs below it, page by page, to any depth."""

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


class HookConformance:
    """on_cancel hooks: claimed under a short lease, retried up to max_attempts."""

    async def test_hooks_are_leased_retried_and_fenced(self, store: Store) -> None:
        parent = await start(store, has_on_cancel=True, payload=b'{"p": 1}')
        await kids(store, parent, 1)
        assert await wait(store, parent) is State.WAITING_CHILDREN
        await store.task_cancel(TaskCancel(parent.id, now_ms=T0))
        assert await hooks(store, kinds=(ORCH2,)) == []  # only the kinds asked for
        (h1,) = await hooks(store)
        assert h1 == HookRow(
            parent.id, ORCH, "on_cancel", b'{"p": 1}', MEMO, State.CANCELLED, h1.epoch, 1
        )
        assert h1.epoch > parent.lease_epoch
        assert await hooks(store, now=T0 + TTL - 1) == []  # leased
        await store.hook_done(HookDone(parent.id, h1.epoch, ok=False, max_attempts=3))
        (h2,) = await hooks(store)
        assert (h2.attempt, h2.epoch > h1.epoch) == (2, True)
        with pytest.raises(LeaseLost):
            await store.hook_done(HookDone(parent.id, h1.epoch, ok=True))
        # A hook whose lease expires (its worker died) is claimed again.
        (h3,) = await hooks(store, now=T0 + TTL + 1)
        assert h3.attempt == 3
        with pytest.raises(LeaseLost):
            await store.hook_done(HookDone(parent.id, h2.epoch, ok=True))
        await store.hook_done(HookDone(parent.id, h3.epoch, ok=False, max_attempts=3))
        assert await hooks(store, now=T0 + 3 * TTL) == []  # given up after 3 attempts
        with pytest.raises(LeaseLost):
            await store.hook_done(HookDone(parent.id, h3.epoch, ok=True))
        assert await state_of(store, parent.id) is State.CANCELLED

    async def test_a_hook_that_ran_is_done(self, store: Store) -> None:
        parent = await start(store, has_on_cancel=True)
        await finish(store, parent.id, parent.lease_epoch, State.CANCELLED, error=ERR)
        (h,) = await hooks(store)
        assert (h.memo, h.state) == (None, State.CANCELLED)
        await store.hook_done(HookDone(parent.id, h.epoch, ok=True, now_ms=T0))
        assert await hooks(store, now=T0 + 10 * TTL) == []


class ChildrenReadConformance:
    """children_page (keyset on seq, filtered) and children_summary."""

    async def test_children_page_by_page_with_filters(self, store: Store) -> None:
        parent = await start(store, fail_fast=False)
        other = await start(store, ORCH2)
        news = [task(k, parent_id=parent.id) for k in (KIND, "other", KIND, "other", KIND)]
        ids = [o.id for o in await spawn(store, parent, *news)]
        await kids(store, other, 2)
        r0, r2, _ = await claim_all(store, 3, now=T0)
        await finish(store, r0.id, r0.lease_epoch, State.COMPLETED, result=b"\x00r0")
        await finish(store, r2.id, r2.lease_epoch, State.FAILED, error=ERR)
        pages: list[list[ChildRow]] = []
        after = 0
        while page := await store.children_page(ChildrenPage(parent.id, after_seq=after, limit=2)):
            pages.append(page)
            after = page[-1].seq
        assert [len(p) for p in pages] == [2, 2, 1]
        rows = [r for p in pages for r in p]
        assert [r.id for r in rows] == ids
        assert [r.seq for r in rows] == sorted(r.seq for r in rows)
        assert [r.kind for r in rows] == [KIND, "other", KIND, "other", KIND]
        by_id = {r.id: r for r in rows}
        assert (by_id[ids[0]].state, by_id[ids[0]].result, by_id[ids[0]].error) == (
            State.COMPLETED,
            b"\x00r0",
            None,
        )
        assert (by_id[ids[2]].state, by_id[ids[2]].result, by_id[ids[2]].error) == (
            State.FAILED,
            None,
            ERR,
        )
        assert (by_id[ids[4]].state, by_id[ids[4]].attempts) == (State.RUNNING, 1)
        assert (by_id[ids[1]].state, by_id[ids[1]].attempts) == (State.READY, 0)
        only_other = await store.children_page(ChildrenPage(parent.id, kinds=["other"]))
        assert [r.id for r in only_other] == [ids[1], ids[3]]
        ended = await store.children_page(
            ChildrenPage(parent.id, states=[State.COMPLETED, State.FAILED])
        )
        assert [r.id for r in ended] == [ids[0], ids[2]]
        both = await store.children_page(
            ChildrenPage(parent.id, kinds=[KIND], states=[State.RUNNING, State.READY])
        )
        assert [r.id for r in both] == [ids[4]]
        assert await store.children_page(ChildrenPage("no-such-parent")) == []

    async def test_children_summary_counts_and_top_errors(self, store: Store) -> None:
        parent = await start(store, fail_fast=False)
        assert await store.children_summary(ChildrenSummaryQuery(parent.id)) == (
            _summary(parent.id, {}, ())
        )
        ids = await kids(store, parent, 9)
        rows = await claim_all(store, 8)
        disk = ErrorInfo("OSError", "disk full", "retryable")
        slow = ErrorInfo("TimeoutError", "too slow", "timeout")
        ends: list[tuple[State, ErrorInfo | None]] = [
            (State.FAILED, disk),
            (State.FAILED, slow),
            (State.FAILED, disk),
            (State.DEAD_LETTERED, disk),
            (State.COMPLETED, None),
            (State.COMPLETED, None),
            (State.CANCELLED, ErrorInfo("Cancelled", "disk full", "cancelled")),
        ]
        for row, (end, error) in zip(rows, ends, strict=False):
            await finish(store, row.id, row.lease_epoch, end, error=error)
        got = await store.children_summary(
            ChildrenSummaryQuery(parent.id, top_errors=1, examples=2)
        )
        by_state = {
            State.FAILED: 3,
            State.DEAD_LETTERED: 1,
            State.COMPLETED: 2,
            State.CANCELLED: 1,
            State.RUNNING: 1,
            State.READY: 1,
        }
        assert got == _summary(parent.id, by_state, (ErrorGroup("disk full", 3, (ids[0], ids[2])),))
        got = await store.children_summary(
            ChildrenSummaryQuery(parent.id, top_errors=5, examples=5)
        )
        assert got.top_errors == (
            ErrorGroup("disk full", 3, (ids[0], ids[2], ids[3])),
            ErrorGroup("too slow", 1, (ids[1],)),
        )


class ReaperMarkConformance:
    """A reaper's finish is recorded apart from a worker's identical one."""

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


class ChildrenConformance(
    SpawnConformance,
    JoinConformance,
    FailFastConformance,
    CascadeConformance,
    HookConformance,
    ChildrenReadConformance,
    ReaperMarkConformance,
):
    """Everything about parents and children that every backend must do alike."""


def _summary(
    parent_id: str, by_state: dict[State, int], top: tuple[ErrorGroup, ...]
) -> ChildrenSummary:
    return ChildrenSummary(parent_id, sum(by_state.values()), by_state, top)
