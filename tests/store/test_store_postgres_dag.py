"""The PostgreSQL store's dependency push: the terminal paths the conformance suite does not
walk one by one (cascades, fail_fast, suspension timeouts), concurrency across separate
transactions, the reconcile backstop, and the fast path firing nothing."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from psycopg import sql

from flowmill._conditions import Signal, encode_condition
from flowmill._states import State
from flowmill.store.contract.dag import DepsReconcile, NewWorkflow, WorkflowGet, WorkflowsList
from flowmill.store.contract.signals import OnTimeout, SuspensionsExpire, TaskSuspend
from flowmill.store.contract.tasks import (
    EventsRead,
    Finish,
    NewTask,
    TaskCancel,
    TasksClaim,
    TasksExpire,
    TasksFinish,
    TasksInsert,
    TaskWaitChildren,
)
from flowmill.store.postgres import PostgresStore
from flowmill.testing.conformance._util import ERR, T0, new_id

from ._pg_store_fixtures import pg_url, schema, store

pytestmark = pytest.mark.postgres
__all__ = ["pg_url", "schema", "store"]  # fixtures, used by name


def t(
    kind: str = "job",
    after: tuple[str, ...] = (),
    policy: str = "skip",
    parent_id: str | None = None,
    name: str | None = None,
) -> NewTask:
    return NewTask(
        id=new_id(),
        kind=kind,
        payload=b"{}",
        parent_id=parent_id,
        depends_on=list(after),
        upstream_policy=policy,
        node=name,
    )


async def insert(store: PostgresStore, *tasks: NewTask) -> None:
    await store.tasks_insert(TasksInsert(list(tasks), now_ms=T0))


async def claim(store: PostgresStore, kind: str = "job", limit: int = 1) -> dict[str, int]:
    rows = await store.tasks_claim(TasksClaim("w", ["default"], [kind], limit, 30_000, T0))
    return {r.id: r.lease_epoch for r in rows}


async def finish(store: PostgresStore, task_id: str, epoch: int, target: State) -> None:
    error = None if target is State.COMPLETED else ERR
    await store.tasks_finish(TasksFinish([Finish(task_id, epoch, target, error=error)], T0))


async def state(store: PostgresStore, task_id: str) -> State:
    rec = await store.task_get(task_id)
    assert rec is not None
    return rec.state


async def test_a_child_cancelled_by_its_parents_cascade_skips_its_dependent(
    store: PostgresStore,
) -> None:
    parent = t()
    await insert(store, parent)
    await claim(store)
    child = t("child", parent_id=parent.id)
    await insert(store, child)
    dependent = t(after=(child.id,))
    await insert(store, dependent)
    assert await state(store, dependent.id) is State.BLOCKED
    # The parent is running: a cancel asks it to stop; its finish as cancelled cascades.
    out = await store.task_cancel(TaskCancel(parent.id, now_ms=T0))
    assert out.requested
    rec = await store.task_get(parent.id)
    assert rec is not None
    await finish(store, parent.id, rec.lease_epoch, State.CANCELLED)
    assert await state(store, child.id) is State.CANCELLED
    assert await state(store, dependent.id) is State.SKIPPED


async def test_fail_fast_cancelling_siblings_skips_their_dependents(
    store: PostgresStore,
) -> None:
    parent = t()
    await insert(store, parent)
    epoch = (await claim(store))[parent.id]
    bad, sibling = t("child", parent_id=parent.id), t("child", parent_id=parent.id)
    await insert(store, bad, sibling)
    after_sibling = t(after=(sibling.id,), policy="fail")
    after_parent = t(after=(parent.id,))
    await insert(store, after_sibling, after_parent)
    await store.task_wait_children(TaskWaitChildren(parent.id, epoch, b"{}", T0))
    rows = await store.tasks_claim(TasksClaim("w", ["default"], ["child"], 1, 30_000, T0))
    assert rows[0].id == bad.id
    await finish(store, bad.id, rows[0].lease_epoch, State.FAILED)
    assert await state(store, parent.id) is State.FAILED
    assert await state(store, sibling.id) is State.CANCELLED
    rec = await store.task_get(after_sibling.id)
    assert rec is not None and rec.state is State.FAILED
    assert rec.error is not None and rec.error.category == "upstream_failed"
    assert sibling.id in rec.error.message and "cancelled" in rec.error.message
    assert await state(store, after_parent.id) is State.SKIPPED


async def test_a_suspension_timeout_resolves_dependents(store: PostgresStore) -> None:
    a = t()
    b = t(after=(a.id,), policy="run")
    await insert(store, a, b)
    epoch = (await claim(store))[a.id]
    cond = encode_condition(Signal("go"))
    await store.task_suspend(TaskSuspend(a.id, epoch, cond, 1000, OnTimeout.FAIL, T0))
    assert await store.suspensions_expire(SuspensionsExpire(now_ms=T0 + 5000)) == 1
    assert await state(store, a.id) is State.FAILED
    assert await state(store, b.id) is State.READY


async def test_reconcile_resolves_what_the_push_missed(
    store: PostgresStore, pg_url: str, schema: str
) -> None:
    a = t()
    b = t(after=(a.id,))
    c = t(after=(b.id,))
    await insert(store, a, b, c)
    epoch = (await claim(store))[a.id]
    tasks = sql.SQL("{}.tasks").format(sql.Identifier(schema))
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER deps_ended").format(tasks))
        try:
            await finish(store, a.id, epoch, State.FAILED)
        finally:
            await conn.execute(sql.SQL("ALTER TABLE {} ENABLE TRIGGER deps_ended").format(tasks))
    assert await state(store, b.id) is State.BLOCKED
    # One missed edge; the cascade it sets off is resolved by the same loop.
    assert await store.deps_reconcile(DepsReconcile(now_ms=T0)) == 2
    assert await state(store, b.id) is State.SKIPPED
    assert await state(store, c.id) is State.SKIPPED
    assert await store.deps_reconcile(DepsReconcile(now_ms=T0)) == 0


async def test_crossed_joins_ended_concurrently_ready_each_once(store: PostgresStore) -> None:
    """Separate transactions (no combiner: now_ms is given) end upstreams of joins whose
    other upstreams the other transactions end: each join is readied exactly once."""
    for _ in range(3):
        ups = [t() for _ in range(8)]
        joins = [t(after=(ups[i].id, ups[(i + 3) % 8].id)) for i in range(8)]
        await insert(store, *ups, *joins)
        epochs = await claim(store, limit=8)
        assert len(epochs) == 8

        async def end(ids: list[str], epochs: dict[str, int] = epochs) -> None:
            items = [Finish(i, epochs[i], State.COMPLETED) for i in ids]
            await store.tasks_finish(TasksFinish(items, T0))

        await asyncio.gather(*(end([ups[i].id, ups[(i + 5) % 8].id]) for i in range(0, 8, 2)))
        for j in joins:
            assert await state(store, j.id) is State.READY
        events = await store.events_read(EventsRead(limit=100000))
        ids = {j.id for j in joins}
        ready = [e for e in events if e.task_id in ids and e.state == "ready"]
        assert sorted(e.task_id for e in ready) == sorted(ids)  # each join once
        assert {e.detail for e in ready} == {"dependencies done"}
        await claim(store, limit=8)


async def test_a_workflow_keeps_odd_names_and_lists_by_name(store: PostgresStore) -> None:
    wf = NewWorkflow(new_id(), "o'clock \x00 run")
    a = t(name="it's")
    b = t(after=(a.id,), name="b\x00")
    for x in (a, b):
        x.workflow_id = wf.id
    await store.tasks_insert(TasksInsert([a, b], now_ms=T0, workflow=wf))
    rec = await store.workflow_get(WorkflowGet(wf.id, nodes=True))
    assert rec is not None and rec.name == wf.name
    assert [(n.node, n.upstream) for n in rec.nodes] == [("it's", ()), ("b\x00", ("it's",))]
    assert [w.id for w in await store.workflows_list(WorkflowsList(name=wf.name))] == [wf.id]
    assert await store.workflows_list(WorkflowsList(name="other")) == []
    epoch = (await claim(store))[a.id]
    await finish(store, a.id, epoch, State.FAILED)
    up = await store.upstream_get(b.id)
    assert [(u.node, u.state) for u in up] == [("it's", State.FAILED)]
    rec = await store.workflow_get(WorkflowGet(wf.id))
    assert rec is not None and rec.by_state == {State.FAILED: 1, State.SKIPPED: 1}


async def test_tasks_without_dependents_never_call_the_resolver(
    store: PostgresStore, pg_url: str, schema: str
) -> None:
    """The fast paths: with a resolver that would fail, plain tasks still go everywhere."""
    s = sql.Identifier(schema)
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await conn.execute(
            sql.SQL(
                "CREATE OR REPLACE FUNCTION {}.deps_resolve(ups text[], states text[], at bigint, "
                "work_channel text, finish_channel text) "
                "RETURNS bigint LANGUAGE plpgsql AS $$ BEGIN RAISE 'called'; END $$"
            ).format(s)
        )
    tasks = [t() for _ in range(50)]
    ttl = NewTask(id=new_id(), kind="job", payload=b"{}", ttl_ms=10)
    await insert(store, *tasks, ttl)
    assert await store.tasks_expire(TasksExpire(now_ms=T0 + 1000)) == 1
    epochs = await claim(store, limit=50)
    items = [Finish(i, e, State.COMPLETED) for i, e in list(epochs.items())[:-1]]
    await store.tasks_finish(TasksFinish(items, T0))
    last = list(epochs)[-1]
    await store.task_cancel(TaskCancel(last, now_ms=T0))
    await finish(store, last, epochs[last], State.CANCELLED)
    assert [await state(store, x.id) for x in tasks].count(State.COMPLETED) == 49
