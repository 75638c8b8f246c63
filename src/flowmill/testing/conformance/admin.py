"""Conformance: the operator's operations (worker registry, queue pause, gauges, purge)."""

from __future__ import annotations

import pytest

from ..._states import State
from ...errors import TaskNotFound
from ...store.contract import Store
from ...store.contract.admin import (
    QueueSetPaused,
    QueuesList,
    TasksPurge,
    WorkerHeartbeat,
    WorkersList,
    WorkersPrune,
)
from ...store.contract.budgets import ClaimLimit
from ...store.contract.dag import NewWorkflow, WorkflowGet
from ...store.contract.signals import FrameAppend, FramesRead
from ...store.contract.tasks import EventsRead, TasksClaim, TasksInsert
from ._parents import kids, start
from ._util import (
    ERR,
    KIND,
    T0,
    TTL,
    add,
    claim,
    claim_one,
    finish,
    insert,
    make_state,
    new_id,
    state_of,
    task,
)
from .wake import wait_until_woken

HEARTBEAT_MS = 5_000


def beat(worker_id: str = "w-1", *, now: int = T0, **kw: object) -> WorkerHeartbeat:
    fields: dict[str, object] = {
        "host": "host-a",
        "pid": 42,
        "version": "1.0",
        "queues": ("default", "mail"),
        "kinds": (KIND,),
        "concurrency": 8,
        "started_at_ms": T0,
        "heartbeat_ms": HEARTBEAT_MS,
        "in_flight": 0,
        "stopped": False,
    }
    fields.update(kw)
    return WorkerHeartbeat(worker_id, now_ms=now, **fields)  # type: ignore[arg-type]


async def done(store: Store, target: State = State.COMPLETED, now: int = T0, **kw: object) -> str:
    """A task ended in `target` at `now` (its queue must have no other ready task)."""
    return await make_state(store, target, now=now, **kw)


class WorkerHeartbeatConformance:
    """`worker_heartbeat`: upsert of a worker's registry row."""

    async def test_first_heartbeat_registers_and_later_ones_replace(self, store: Store) -> None:
        await store.worker_heartbeat(beat())
        page = await store.workers_list(WorkersList(now_ms=T0))
        (row,) = page.workers
        assert (row.worker_id, row.host, row.pid, row.version) == ("w-1", "host-a", 42, "1.0")
        assert (row.queues, row.kinds, row.concurrency) == (("default", "mail"), (KIND,), 8)
        assert (row.started_at_ms, row.last_seen_ms, row.heartbeat_ms) == (T0, T0, HEARTBEAT_MS)
        assert (row.in_flight, row.stopped_at_ms) == (0, None)
        await store.worker_heartbeat(beat(now=T0 + 5_000, in_flight=3))
        (row,) = (await store.workers_list(WorkersList(now_ms=T0 + 5_000))).workers
        assert (row.last_seen_ms, row.in_flight, row.started_at_ms) == (T0 + 5_000, 3, T0)

    async def test_last_heartbeat_marks_stopped_and_a_restart_clears_it(self, store: Store) -> None:
        await store.worker_heartbeat(beat())
        await store.worker_heartbeat(beat(now=T0 + 100, stopped=True))
        page = await store.workers_list(WorkersList(now_ms=T0 + 100))
        assert page.workers[0].stopped_at_ms == T0 + 100
        assert page.workers[0].status(page.now_ms) == "stopped"
        await store.worker_heartbeat(beat(now=T0 + 200))
        page = await store.workers_list(WorkersList(now_ms=T0 + 200))
        assert page.workers[0].stopped_at_ms is None
        assert page.workers[0].status(page.now_ms) == "alive"


class WorkersListConformance:
    """`workers_list`: every row by id, judged on the clock it returns."""

    async def test_rows_by_id_and_alive_until_three_heartbeats_missed(self, store: Store) -> None:
        await store.worker_heartbeat(beat("w-b"))
        await store.worker_heartbeat(beat("w-a", now=T0 + 10_000))
        page = await store.workers_list(WorkersList(now_ms=T0 + 15_000))
        assert page.now_ms == T0 + 15_000
        assert [w.worker_id for w in page.workers] == ["w-a", "w-b"]
        assert [w.worker_id for w in page.alive()] == ["w-a", "w-b"]
        page = await store.workers_list(WorkersList(now_ms=T0 + 15_001))
        assert {w.worker_id: w.status(page.now_ms) for w in page.workers} == {
            "w-a": "alive",
            "w-b": "dead",
        }

    async def test_empty_registry(self, store: Store) -> None:
        page = await store.workers_list(WorkersList(now_ms=T0))
        assert (page.now_ms, page.workers) == (T0, [])

    async def test_store_clock_when_no_now_is_given(self, store: Store) -> None:
        before = await store.now_ms()
        page = await store.workers_list(WorkersList())
        assert before <= page.now_ms <= await store.now_ms()


class WorkersPruneConformance:
    """`workers_prune`: rows not seen for a while are deleted."""

    async def test_prune_deletes_only_rows_seen_before_the_cutoff(self, store: Store) -> None:
        await store.worker_heartbeat(beat("old"))
        await store.worker_heartbeat(beat("stopped", now=T0 + 1_000, stopped=True))
        await store.worker_heartbeat(beat("fresh", now=T0 + 60_000))
        assert await store.workers_prune(WorkersPrune(30_000, now_ms=T0 + 31_001)) == 2
        page = await store.workers_list(WorkersList(now_ms=T0 + 31_001))
        assert [w.worker_id for w in page.workers] == ["fresh"]
        assert await store.workers_prune(WorkersPrune(30_000, now_ms=T0 + 31_001)) == 0


class QueueSetPausedConformance:
    """`queue_set_paused`: a paused queue's tasks are not claimed; inserts still succeed."""

    async def test_paused_queue_is_not_claimed_and_resume_frees_it(self, store: Store) -> None:
        held = await add(store, queue="mail")
        other = await add(store, queue="default")
        assert await store.queue_set_paused(QueueSetPaused("mail", True, T0)) is True
        assert await store.queue_set_paused(QueueSetPaused("mail", True, T0)) is False
        later = await add(store, queue="mail")  # submits still succeed
        rows = await claim(store, queues=("mail", "default"))
        assert [r.id for r in rows] == [other]
        assert await claim(store, queues=("mail",)) == []
        assert await state_of(store, held) is State.READY
        assert await store.queue_set_paused(QueueSetPaused("mail", False, T0 + 1)) is True
        rows = await claim(store, queues=("mail",), now=T0 + 1)
        assert [r.id for r in rows] == [held, later]

    async def test_a_limited_claim_obeys_the_pause_too(self, store: Store) -> None:
        await add(store, queue="mail")
        await store.queue_set_paused(QueueSetPaused("mail", True, T0))
        limit = ClaimLimit("queue", "mail", max_running=5)
        p = TasksClaim("w", ["mail"], [KIND], 10, TTL, T0, limits=[limit])
        assert await store.tasks_claim(p) == []
        await store.queue_set_paused(QueueSetPaused("mail", False, T0))
        assert len(await store.tasks_claim(p)) == 1

    async def test_resume_wakes_waiting_workers(self, store: Store) -> None:
        await add(store, queue="mail")
        await store.queue_set_paused(QueueSetPaused("mail", True, T0))
        await wait_until_woken(
            store.wait_for_work,
            lambda: store.queue_set_paused(QueueSetPaused("mail", False, T0)),
        )


class QueuesListConformance:
    """`queues_list`: pause flags, counts by state and the oldest ready age per queue."""

    async def test_counts_oldest_ready_and_pause_flags(self, store: Store) -> None:
        await insert(store, task(queue="mail"), now=T0)
        await insert(store, task(queue="mail"), now=T0 + 400)
        await insert(store, task(queue="mail", delay_ms=60_000), now=T0)
        await done(store, State.COMPLETED, queue="default")
        await store.queue_set_paused(QueueSetPaused("idle", True, T0))
        rows = await store.queues_list(QueuesList(now_ms=T0 + 1_000))
        by_name = {r.name: r for r in rows}
        assert [r.name for r in rows] == ["default", "idle", "mail"]
        assert by_name["mail"].counts == {State.READY: 2, State.SCHEDULED: 1}
        assert by_name["mail"].oldest_ready_age_ms == 1_000
        assert (by_name["mail"].paused, by_name["mail"].total) == (False, 3)
        assert by_name["default"].counts == {State.COMPLETED: 1}
        assert by_name["default"].oldest_ready_age_ms is None
        assert (by_name["idle"].paused, by_name["idle"].counts) == (True, {})

    async def test_an_empty_store_has_no_queues(self, store: Store) -> None:
        assert await store.queues_list(QueuesList(now_ms=T0)) == []


class TasksPurgeConformance:
    """`tasks_purge`: one batch of old finished tasks, with everything they own."""

    async def test_purges_old_finished_tasks_with_their_rows(self, store: Store) -> None:
        await add(store)
        row = await claim_one(store, now=T0)
        await store.frames_append(FrameAppend(row.id, row.lease_epoch, "t", b"x", None, T0))
        await finish(store, row.id, row.lease_epoch, State.COMPLETED, result=b"1")
        young = await done(store, now=T0 + 10_000)
        p = TasksPurge(T0 + 1, (State.COMPLETED,), now_ms=T0 + 20_000)
        assert await store.tasks_purge(p) == 1
        assert await store.task_get(row.id) is None
        assert await store.results_get([row.id]) == []
        with pytest.raises(TaskNotFound):
            await store.frames_read(FramesRead(row.id))
        events = await store.events_read(EventsRead(0, 1_000))
        assert row.id not in {e.task_id for e in events}
        # The kept task keeps every event (submitted, running, completed).
        assert [e.state for e in events if e.task_id == young] == [
            State.READY,
            State.RUNNING,
            State.COMPLETED,
        ]
        assert await state_of(store, young) is State.COMPLETED
        assert await store.tasks_purge(p) == 0

    async def test_only_the_states_asked_for(self, store: Store) -> None:
        kept = await done(store, State.DEAD_LETTERED)
        failed = await done(store, State.FAILED)
        cancelled = await done(store, State.CANCELLED)
        p = TasksPurge(T0 + 1, (State.FAILED, State.CANCELLED), now_ms=T0 + 1)
        assert await store.tasks_purge(p) == 2
        assert await store.task_get(failed) is None
        assert await store.task_get(cancelled) is None
        assert await state_of(store, kept) is State.DEAD_LETTERED
        p = TasksPurge(T0 + 1, (State.DEAD_LETTERED,), now_ms=T0 + 1)
        assert await store.tasks_purge(p) == 1

    async def test_batches_of_limit_oldest_first(self, store: Store) -> None:
        ids = [await done(store, now=T0 + i) for i in range(5)]
        p = TasksPurge(T0 + 100, (State.COMPLETED,), limit=2, now_ms=T0 + 100)
        assert await store.tasks_purge(p) == 2
        assert [await store.task_get(i) is None for i in ids] == [True, True, False, False, False]
        assert await store.tasks_purge(p) == 2
        assert await store.tasks_purge(p) == 1
        assert await store.tasks_purge(p) == 0

    async def test_children_of_an_active_parent_are_kept(self, store: Store) -> None:
        parent = await start(store)
        (child,) = await kids(store, parent, 1)
        row = await claim_one(store, kinds=(KIND,))
        assert row.id == child
        await finish(store, child, row.lease_epoch, State.COMPLETED, result=b"1")
        p = TasksPurge(T0 + 1, (State.COMPLETED,), now_ms=T0 + 1)
        assert await store.tasks_purge(p) == 0
        assert await state_of(store, child) is State.COMPLETED

    async def test_an_upstream_with_an_active_dependent_is_kept(self, store: Store) -> None:
        up = task()
        down = task(queue="later")
        down.depends_on = [up.id]
        await store.tasks_insert(TasksInsert([up, down], now_ms=T0))
        row = await claim_one(store)
        await finish(store, up.id, row.lease_epoch, State.COMPLETED, result=b"1")
        assert await state_of(store, down.id) is State.READY
        p = TasksPurge(T0 + 1, (State.COMPLETED,), now_ms=T0 + 1)
        assert await store.tasks_purge(p) == 0
        (drow,) = await claim(store, queues=("later",))
        await finish(store, down.id, drow.lease_epoch, State.COMPLETED, result=b"2")
        assert await store.tasks_purge(p) == 2
        assert await store.task_get(up.id) is None

    async def test_a_workflow_run_goes_with_its_last_node(self, store: Store) -> None:
        wf = NewWorkflow(new_id(), "wf")
        a, b = task(), task(queue="b")
        for t in (a, b):
            t.workflow_id = wf.id
            t.node = t.id
        await store.tasks_insert(TasksInsert([a, b], now_ms=T0, workflow=wf))
        row = await claim_one(store)
        await finish(store, a.id, row.lease_epoch, State.FAILED, error=ERR)
        p = TasksPurge(T0 + 1, (State.FAILED, State.COMPLETED), now_ms=T0 + 1)
        assert await store.tasks_purge(p) == 0  # node b is still ready
        (brow,) = await claim(store, queues=("b",))
        await finish(store, b.id, brow.lease_epoch, State.COMPLETED, result=b"1")
        assert await store.tasks_purge(p) == 2
        assert await store.workflow_get(WorkflowGet(wf.id)) is None
