"""Conformance: dependencies between tasks (DAG workflows), resolved by the ending store op."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ..._states import State
from ...errors import TaskNotFound
from ...store.contract import Store
from ...store.contract.dag import (
    DepsReconcile,
    NewWorkflow,
    WorkflowCancel,
    WorkflowGet,
    WorkflowsList,
)
from ...store.contract.tasks import (
    Finish,
    InsertStatus,
    NewTask,
    TaskCancel,
    TasksExpire,
    TasksFinish,
    TasksInsert,
    TaskWaitChildren,
)
from ._util import (
    ERR,
    T0,
    add,
    all_events,
    claim,
    claim_one,
    finish,
    get,
    insert,
    new_id,
    state_of,
    task,
)


def node(
    name: str | None = None,
    after: list[str] | tuple[str, ...] = (),
    policy: str = "skip",
    **kw: Any,
) -> NewTask:
    t = task(**kw)
    t.depends_on = list(after)
    t.upstream_policy = policy
    t.node = name
    return t


async def run_to(store: Store, task_id: str, target: State, now: int = T0) -> None:
    """Claim `task_id` (the only ready task) and end it as `target`."""
    row = await claim_one(store, now=now)
    assert row.id == task_id, f"claimed {row.id}, expected {task_id}"
    result = b'{"rows": 3}' if target is State.COMPLETED else None
    error = None if target is State.COMPLETED else ERR
    out = await finish(store, task_id, row.lease_epoch, target, now=now, result=result, error=error)
    assert out.state is target


async def ready_events(store: Store, task_id: str) -> int:
    return sum(1 for e in await all_events(store) if e.task_id == task_id and e.state == "ready")


class TasksInsertDepsConformance:
    """`tasks_insert` with `depends_on`, and the resolution each upstream's end makes."""

    async def test_dependent_is_blocked_until_its_upstream_completes(self, store: Store) -> None:
        a = await add(store)
        b = node(after=[a])
        await insert(store, b)
        assert await state_of(store, b.id) is State.BLOCKED
        assert [r.id for r in await claim(store)] == [a]
        await finish(store, a, 1, State.COMPLETED, result=b"1")
        assert await state_of(store, b.id) is State.READY
        assert (await claim_one(store)).id == b.id

    async def test_a_chain_in_one_batch_readies_one_step_at_a_time(self, store: Store) -> None:
        a = node()
        b = node(after=[a.id])
        c = node(after=[b.id])
        await insert(store, a, b, c)
        assert [await state_of(store, t.id) for t in (a, b, c)] == [
            State.READY,
            State.BLOCKED,
            State.BLOCKED,
        ]
        await run_to(store, a.id, State.COMPLETED)
        assert await state_of(store, b.id) is State.READY
        assert await state_of(store, c.id) is State.BLOCKED
        await run_to(store, b.id, State.COMPLETED)
        assert await state_of(store, c.id) is State.READY

    async def test_dependencies_may_name_later_tasks_of_the_batch(self, store: Store) -> None:
        a_id = new_id()
        b = node(after=[a_id])
        a = task(id=a_id)
        await insert(store, b, a)
        assert await state_of(store, b.id) is State.BLOCKED
        await run_to(store, a_id, State.COMPLETED)
        assert await state_of(store, b.id) is State.READY

    async def test_diamond_join_is_readied_once_under_concurrent_ends(self, store: Store) -> None:
        for _ in range(5):
            a = node()
            b, c = node(after=[a.id]), node(after=[a.id])
            d = node(after=[b.id, c.id])
            await insert(store, a, b, c, d)
            await run_to(store, a.id, State.COMPLETED)
            rows = await claim(store, limit=2)
            assert {r.id for r in rows} == {b.id, c.id}
            await asyncio.gather(
                *(finish(store, r.id, r.lease_epoch, State.COMPLETED, result=b"1") for r in rows)
            )
            assert await state_of(store, d.id) is State.READY
            assert await ready_events(store, d.id) == 1
            await run_to(store, d.id, State.COMPLETED)

    async def test_fan_in_ended_in_one_batch_readies_the_join_once(self, store: Store) -> None:
        ups = [node() for _ in range(200)]
        join = node(after=[u.id for u in ups])
        await insert(store, *ups, join)
        rows = await claim(store, limit=200)
        assert len(rows) == 200
        items = [Finish(r.id, r.lease_epoch, State.COMPLETED, result=b"1") for r in rows]
        await store.tasks_finish(TasksFinish(items, T0))
        assert await state_of(store, join.id) is State.READY
        assert await ready_events(store, join.id) == 1

    async def test_skip_cascades_through_descendants(self, store: Store) -> None:
        a = node()
        chain = [a]
        for _ in range(4):
            chain.append(node(after=[chain[-1].id]))
        side = node(after=[chain[2].id], policy="run")
        await insert(store, *chain, side)
        await run_to(store, a.id, State.FAILED)
        for t in chain[1:]:
            rec = await get(store, t.id)
            assert rec.state is State.SKIPPED
            assert rec.finished_at_ms == T0
        # `run` runs whatever its upstream became, skipped included.
        assert await state_of(store, side.id) is State.READY
        results = {r.task_id: r.state for r in await store.results_get([t.id for t in chain])}
        assert results[chain[4].id] is State.SKIPPED

    async def test_a_long_skip_cascade_has_no_depth_limit(self, store: Store) -> None:
        chain = [node()]
        for _ in range(1200):
            chain.append(node(after=[chain[-1].id]))
        await insert(store, *chain)
        await run_to(store, chain[0].id, State.FAILED)
        assert await state_of(store, chain[-1].id) is State.SKIPPED

    async def test_run_policy_runs_after_a_failed_upstream(self, store: Store) -> None:
        a, ok = node(), node()
        r = node(after=[a.id, ok.id], policy="run")
        await insert(store, a, ok, r)
        rows = {x.id: x for x in await claim(store, limit=2)}
        await finish(store, a.id, rows[a.id].lease_epoch, State.DEAD_LETTERED, error=ERR)
        assert await state_of(store, r.id) is State.BLOCKED
        await finish(store, ok.id, rows[ok.id].lease_epoch, State.COMPLETED, result=b"1")
        assert await state_of(store, r.id) is State.READY
        up = await store.upstream_get(r.id)
        assert [(u.task_id, u.state) for u in up] == [
            (a.id, State.DEAD_LETTERED),
            (ok.id, State.COMPLETED),
        ]
        assert up[0].error is not None and up[0].error.message == ERR.message
        assert up[1].result == b"1"

    async def test_fail_policy_fails_and_names_the_upstream(self, store: Store) -> None:
        a = node("extract")
        f = node("load", after=[a.id], policy="fail")
        after_f = node(after=[f.id])
        await insert(store, a, f, after_f)
        await run_to(store, a.id, State.FAILED)
        rec = await get(store, f.id)
        assert rec.state is State.FAILED
        assert rec.error is not None and rec.error.category == "upstream_failed"
        assert "extract" in rec.error.message and "failed" in rec.error.message
        assert await state_of(store, after_f.id) is State.SKIPPED
        [res] = await store.results_get([f.id])
        assert res.state is State.FAILED

    async def test_fail_policy_only_skipped_upstreams_skip(self, store: Store) -> None:
        a = node()
        s = node(after=[a.id])
        f = node(after=[s.id], policy="fail")
        await insert(store, a, s, f)
        await run_to(store, a.id, State.FAILED)
        assert await state_of(store, s.id) is State.SKIPPED
        assert await state_of(store, f.id) is State.SKIPPED

    async def test_upstreams_already_ended_decide_at_insert(self, store: Store) -> None:
        done = await add(store)
        await run_to(store, done, State.COMPLETED)
        failed = await add(store)
        await run_to(store, failed, State.FAILED)
        ok = node(after=[done])
        skipped = node(after=[done, failed])
        ran = node(after=[failed], policy="run")
        await insert(store, ok, skipped, ran)
        assert await state_of(store, ok.id) is State.READY
        assert await state_of(store, skipped.id) is State.SKIPPED
        assert await state_of(store, ran.id) is State.READY

    async def test_unknown_upstream_is_refused_and_nothing_is_stored(self, store: Store) -> None:
        a = node()
        b = node(after=[a.id, "no-such-task"])
        with pytest.raises(TaskNotFound):
            await insert(store, a, b)
        assert await store.task_get(a.id) is None
        assert await store.task_get(b.id) is None

    async def test_cancelling_a_blocked_task_skips_its_dependents(self, store: Store) -> None:
        a = node()
        b = node(after=[a.id])
        c = node(after=[b.id])
        await insert(store, a, b, c)
        out = await store.task_cancel(TaskCancel(b.id, now_ms=T0))
        assert out.state is State.CANCELLED
        assert await state_of(store, c.id) is State.SKIPPED
        await run_to(store, a.id, State.COMPLETED)  # b was resolved already: nothing moves
        assert await state_of(store, b.id) is State.CANCELLED

    async def test_an_expired_upstream_skips_its_dependents(self, store: Store) -> None:
        a = node(ttl_ms=1000)
        b = node(after=[a.id])
        await insert(store, a, b)
        assert await store.tasks_expire(TasksExpire(now_ms=T0 + 5000)) == 1
        assert await state_of(store, b.id) is State.SKIPPED

    async def test_a_claimed_node_skipped_by_its_condition_cascades(self, store: Store) -> None:
        a = node("a")
        b = node("b", after=[a.id])
        b.condition = "cond-ref"
        c = node("c", after=[b.id])
        await insert(store, a, b, c)
        await run_to(store, a.id, State.COMPLETED)
        row = await claim_one(store)
        assert (row.id, row.condition) == (b.id, "cond-ref")
        out = await finish(store, b.id, row.lease_epoch, State.SKIPPED)
        assert out.state is State.SKIPPED
        assert await state_of(store, c.id) is State.SKIPPED

    async def test_a_failed_orchestrator_node_resolves_its_dependents(self, store: Store) -> None:
        parent = node()
        after = node(after=[parent.id])
        await insert(store, parent, after)
        row = await claim_one(store)
        await insert(store, task(kind="child", parent_id=parent.id))
        await store.task_wait_children(TaskWaitChildren(parent.id, row.lease_epoch, b"{}", T0))
        child = await claim_one(store, kinds=("child",))
        await finish(store, child.id, child.lease_epoch, State.FAILED, error=ERR)
        assert await state_of(store, parent.id) is State.FAILED
        assert await state_of(store, after.id) is State.SKIPPED

    async def test_insert_outcomes_of_nodes(self, store: Store) -> None:
        a = node()
        b = node(after=[a.id])
        outs = await insert(store, a, b)
        assert [o.status for o in outs] == [InsertStatus.INSERTED, InsertStatus.INSERTED]

    async def test_replacing_a_blocked_duplicate_keeps_it_blocked(self, store: Store) -> None:
        a = node()
        b = node(after=[a.id], key="k")
        await insert(store, a, b)
        again = task(key="k", payload=b'{"n": 2}')
        [out] = await insert(store, again, on_duplicate="replace")
        assert (out.id, out.status) == (b.id, InsertStatus.REPLACED)
        rec = await get(store, b.id)
        assert (rec.state, rec.payload) == (State.BLOCKED, b'{"n": 2}')
        assert [r.id for r in await claim(store)] == [a.id]  # b waits for a still
        await finish(store, a.id, 1, State.COMPLETED, result=b"1")
        assert await state_of(store, b.id) is State.READY

    async def test_upstreams_that_dedup_to_one_task_count_once(self, store: Store) -> None:
        first = task(key="same")
        second = task(key="same")  # skipped: `first` stands for it
        d = node(after=[first.id, second.id])
        outs = await insert(store, first, second, d)
        assert [o.status for o in outs] == [
            InsertStatus.INSERTED,
            InsertStatus.SKIPPED,
            InsertStatus.INSERTED,
        ]
        assert await state_of(store, d.id) is State.BLOCKED
        assert [u.task_id for u in await store.upstream_get(d.id)] == [first.id]
        await run_to(store, first.id, State.COMPLETED)
        assert await state_of(store, d.id) is State.READY


class WorkflowGetConformance:
    """`workflow_get`: a run stored with its nodes."""

    async def test_workflow_run_is_stored_with_its_nodes(self, store: Store) -> None:
        wf = NewWorkflow(new_id(), "nightly-etl")
        a = node("extract")
        b = node("transform", after=[a.id])
        c = node("load", after=[b.id, a.id])
        for t in (a, b, c):
            t.workflow_id = wf.id
        await store.tasks_insert(TasksInsert([a, b, c], now_ms=T0, workflow=wf))
        rec = await store.workflow_get(WorkflowGet(wf.id, nodes=True))
        assert rec is not None
        assert (rec.id, rec.name, rec.total, rec.created_at_ms) == (wf.id, "nightly-etl", 3, T0)
        assert rec.by_state == {State.READY: 1, State.BLOCKED: 2}
        assert rec.active == 3
        assert [(n.node, n.task_id, n.upstream) for n in rec.nodes] == [
            ("extract", a.id, ()),
            ("transform", b.id, ("extract",)),
            ("load", c.id, ("transform", "extract")),
        ]
        await run_to(store, a.id, State.COMPLETED)
        rec = await store.workflow_get(WorkflowGet(wf.id))
        assert rec is not None and rec.nodes == ()
        assert rec.by_state == {State.COMPLETED: 1, State.READY: 1, State.BLOCKED: 1}
        listed = await store.workflows_list(WorkflowsList())
        assert [w.id for w in listed] == [wf.id]
        assert await store.workflow_get(WorkflowGet("nope")) is None


class WorkflowCancelConformance:
    """`workflow_cancel`."""

    async def test_workflow_cancel_stops_every_active_node(self, store: Store) -> None:
        wf = NewWorkflow(new_id(), "wf")
        a, b = node("a"), node("b")
        c = node("c", after=[a.id])
        for t in (a, b, c):
            t.workflow_id = wf.id
        await store.tasks_insert(TasksInsert([a, b, c], now_ms=T0, workflow=wf))
        running = await claim_one(store)
        n = await store.workflow_cancel(WorkflowCancel(wf.id, now_ms=T0))
        assert n == 3
        assert (await get(store, running.id)).cancel_requested
        other = b.id if running.id == a.id else a.id
        assert await state_of(store, other) is State.CANCELLED
        assert await state_of(store, c.id) in (State.CANCELLED, State.SKIPPED)


class DepsReconcileConformance:
    """`deps_reconcile`: the backstop finds nothing when the push worked."""

    async def test_reconcile_finds_nothing_when_the_push_worked(self, store: Store) -> None:
        a = node()
        b = node(after=[a.id])
        await insert(store, a, b)
        await run_to(store, a.id, State.COMPLETED)
        assert await store.deps_reconcile(DepsReconcile(now_ms=T0)) == 0
        assert await state_of(store, b.id) is State.READY
