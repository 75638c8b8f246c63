"""Conformance: spawning children (`tasks_insert` fenced by the parent's lease)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from ..._states import State
from ...errors import InvalidParent, LeaseLost
from ...store.contract import Store
from ...store.contract.tasks import (
    ClaimedRow,
    InsertOutcome,
    InsertStatus,
    LeaseRef,
    TasksInsert,
)
from ._parents import (
    ORCH,
    ORCH2,
    assert_finalizes,
    claim_all,
    kids,
    ready_events,
    spawn,
    start,
    wait,
)
from ._util import (
    ERR,
    KIND,
    T0,
    TTL,
    all_states,
    claim_one,
    finish,
    insert,
    state_of,
    task,
)


class TasksInsertSpawnConformance:
    """`tasks_insert` with a fence: spawning children of a running parent."""

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
