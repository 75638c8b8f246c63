"""Conformance: maintenance (promote, expire, reap), operator calls and inspection."""

from __future__ import annotations

import pytest

from ..._states import State
from ...errors import DuplicateTask, IllegalTransition, TaskNotFound
from ...store.contract import Store
from ...store.contract.tasks import (
    CancelOutcome,
    CountRow,
    EventsRead,
    ExpiredLease,
    Finish,
    FinishOutcome,
    FinishStatus,
    LeasesExpired,
    ResultRow,
    TaskCancel,
    TaskRetry,
    TasksExpire,
    TasksFinish,
    TasksList,
    TasksPromote,
)
from ._util import (
    ERR,
    KIND,
    T0,
    add,
    all_events,
    assert_history_legal,
    claim,
    claim_one,
    finish,
    get,
    insert,
    make_state,
    state_of,
    task,
)


class TasksPromoteConformance:
    """`tasks_promote`: scheduled tasks that are due become ready."""

    async def test_promote_moves_due_tasks_only(self, store: Store) -> None:
        due = [await add(store, delay_ms=d) for d in (100, 200, 300)]
        later = await add(store, delay_ms=10_000)
        assert await store.tasks_promote(TasksPromote(now_ms=T0 + 99)) == 0
        assert await store.tasks_promote(TasksPromote(now_ms=T0 + 300)) == 3
        assert [await state_of(store, i) for i in due] == [State.READY] * 3
        assert await state_of(store, later) is State.SCHEDULED
        assert await store.tasks_promote(TasksPromote(now_ms=T0 + 300)) == 0
        rows = await claim(store, now=T0 + 300)
        assert [r.id for r in rows] == due

    async def test_promote_respects_limit(self, store: Store) -> None:
        await insert(store, *(task(delay_ms=10 + i) for i in range(7)))
        assert await store.tasks_promote(TasksPromote(limit=3, now_ms=T0 + 100)) == 3
        assert await store.tasks_promote(TasksPromote(limit=3, now_ms=T0 + 100)) == 3
        assert await store.tasks_promote(TasksPromote(limit=3, now_ms=T0 + 100)) == 1

    async def test_promote_takes_the_earliest_first(self, store: Store) -> None:
        late = await add(store, delay_ms=50)
        early = await add(store, delay_ms=10)
        assert await store.tasks_promote(TasksPromote(limit=1, now_ms=T0 + 60)) == 1
        assert await state_of(store, early) is State.READY
        assert await state_of(store, late) is State.SCHEDULED


class TasksExpireConformance:
    """`tasks_expire`: unclaimed tasks past their ttl end as expired."""

    async def test_expire_ends_unclaimed_tasks_past_their_ttl(self, store: Store) -> None:
        soon = await add(store, ttl_ms=100)
        later = await add(store, ttl_ms=10_000)
        forever = await add(store)
        assert await store.tasks_expire(TasksExpire(now_ms=T0 + 99)) == 0
        assert await store.tasks_expire(TasksExpire(now_ms=T0 + 100)) == 1
        rec = await get(store, soon)
        assert (rec.state, rec.finished_at_ms) == (State.EXPIRED, T0 + 100)
        assert rec.error is not None
        (res,) = await store.results_get([soon])
        assert (res.state, res.result) == (State.EXPIRED, None) and res.error is not None
        assert await state_of(store, later) is State.READY
        assert await state_of(store, forever) is State.READY
        assert [r.id for r in await claim(store, now=T0 + 100)] == [later, forever]

    async def test_expire_respects_limit(self, store: Store) -> None:
        await insert(store, *(task(ttl_ms=10) for _ in range(5)))
        assert await store.tasks_expire(TasksExpire(limit=2, now_ms=T0 + 10)) == 2
        assert await store.tasks_expire(TasksExpire(limit=10, now_ms=T0 + 10)) == 3

    async def test_ttl_applies_only_before_the_first_claim(self, store: Store) -> None:
        # (ready, expired) is "ttl reached before any claim": a retried task does not expire
        task_id = await add(store, ttl_ms=100)
        row = await claim_one(store, now=T0 + 50)
        await finish(store, task_id, row.lease_epoch, State.READY, now=T0 + 60, error=ERR)
        assert await store.tasks_expire(TasksExpire(now_ms=T0 + 500)) == 0
        again = await claim_one(store, now=T0 + 500)
        assert again.attempt == 2

    async def test_scheduled_task_past_ttl_expires_after_promotion(self, store: Store) -> None:
        task_id = await add(store, ttl_ms=100, delay_ms=200)
        assert await store.tasks_expire(TasksExpire(now_ms=T0 + 150)) == 0
        assert await store.tasks_promote(TasksPromote(now_ms=T0 + 200)) == 1
        assert await claim(store, now=T0 + 200) == []
        assert await store.tasks_expire(TasksExpire(now_ms=T0 + 200)) == 1
        assert await state_of(store, task_id) is State.EXPIRED
        await assert_history_legal(store)


class LeasesExpiredConformance:
    """`leases_expired`: running tasks whose lease ran out, for the reaper."""

    async def test_leases_expired_lists_running_tasks_past_their_lease(self, store: Store) -> None:
        first = await add(store, max_attempts=5, retry_policy=b'{"p": 1}')
        second = await add(store)
        await claim_one(store, ttl=100, worker="w-a")
        await claim_one(store, ttl=500, worker="w-b")
        await store.task_cancel(TaskCancel(first, now_ms=T0))
        assert await store.leases_expired(LeasesExpired(now_ms=T0 + 100)) == []
        assert await store.leases_expired(LeasesExpired(now_ms=T0 + 101)) == [
            ExpiredLease(first, KIND, 1, 1, 5, b'{"p": 1}', "w-a", True)
        ]
        found = await store.leases_expired(LeasesExpired(now_ms=T0 + 501))
        assert [e.task_id for e in found] == [first, second]
        assert [e.task_id for e in await store.leases_expired(LeasesExpired(1, T0 + 501))] == [
            first
        ]
        # listing changes nothing
        assert await state_of(store, first) is State.RUNNING

    async def test_a_reclaimed_task_is_run_again(self, store: Store) -> None:
        task_id = await add(store)
        old = await claim_one(store, ttl=100)
        (lease,) = await store.leases_expired(LeasesExpired(now_ms=T0 + 200))
        await finish(
            store, task_id, lease.epoch, State.READY, now=T0 + 200, error=ERR, expired_lease=True
        )
        new = await claim_one(store, now=T0 + 200)
        assert (new.attempt, new.lease_epoch) == (2, old.lease_epoch + 1)
        assert await store.leases_expired(LeasesExpired(now_ms=T0 + 201)) == []


class TaskCancelConformance:
    """`task_cancel`: an operator cancel."""

    @pytest.mark.parametrize("state", [State.SCHEDULED, State.READY])
    async def test_cancel_a_waiting_task(self, store: Store, state: State) -> None:
        task_id = await make_state(store, state)
        out = await store.task_cancel(TaskCancel(task_id, "no longer needed", T0 + 5))
        assert out == CancelOutcome(task_id, State.CANCELLED, False)
        rec = await get(store, task_id)
        assert (rec.state, rec.finished_at_ms) == (State.CANCELLED, T0 + 5)
        (res,) = await store.results_get([task_id])
        assert (res.state, res.result) == (State.CANCELLED, None)
        assert res.error is not None and res.error.message == "no longer needed"
        assert await claim(store, now=T0 + 100_000) == []
        assert await store.tasks_promote(TasksPromote(now_ms=T0 + 100_000)) == 0

    async def test_cancel_a_running_task_asks_it_to_stop(self, store: Store) -> None:
        task_id = await add(store)
        row = await claim_one(store)
        out = await store.task_cancel(TaskCancel(task_id, now_ms=T0 + 1))
        assert out == CancelOutcome(task_id, State.RUNNING, True)
        rec = await get(store, task_id)
        assert (rec.state, rec.cancel_requested, rec.lease_epoch) == (State.RUNNING, True, 1)
        assert await store.results_get([task_id]) == []
        done = await finish(store, task_id, row.lease_epoch, State.CANCELLED, error=ERR)
        assert done.state is State.CANCELLED

    @pytest.mark.parametrize("end", [State.COMPLETED, State.FAILED, State.CANCELLED])
    async def test_cancel_a_finished_task_is_a_no_op(self, store: Store, end: State) -> None:
        task_id = await make_state(store, end)
        before, results = await get(store, task_id), await store.results_get([task_id])
        out = await store.task_cancel(TaskCancel(task_id, now_ms=T0 + 9))
        assert out == CancelOutcome(task_id, end, False)
        assert await get(store, task_id) == before
        assert await store.results_get([task_id]) == results

    async def test_cancel_unknown_task(self, store: Store) -> None:
        with pytest.raises(TaskNotFound) as info:
            await store.task_cancel(TaskCancel("no-such-task"))
        assert info.value.task_id == "no-such-task"


class TaskRetryConformance:
    """`task_retry`: an operator retry of an ended task."""

    @pytest.mark.parametrize("end", [State.FAILED, State.DEAD_LETTERED])
    async def test_retry_gives_a_fresh_start(self, store: Store, end: State) -> None:
        task_id = await add(store, max_attempts=1)
        row = await claim_one(store)
        await finish(store, task_id, row.lease_epoch, end, error=ERR)
        assert await store.task_retry(TaskRetry(task_id, T0 + 10)) is State.READY
        rec = await get(store, task_id)
        assert (rec.state, rec.attempts, rec.error, rec.result) == (State.READY, 0, None, None)
        assert rec.finished_at_ms is None
        assert await store.results_get([task_id]) == []
        again = await claim_one(store, now=T0 + 10)
        assert (again.attempt, again.lease_epoch) == (1, row.lease_epoch + 1)
        # the old fence stays dead
        out = await finish(store, task_id, row.lease_epoch, end, now=T0 + 11, error=ERR)
        assert out == FinishOutcome(task_id, FinishStatus.LEASE_LOST, State.RUNNING)
        await assert_history_legal(store)

    @pytest.mark.parametrize(
        "state", [State.COMPLETED, State.CANCELLED, State.READY, State.SCHEDULED, State.RUNNING]
    )
    async def test_retry_of_other_states_is_illegal(self, store: Store, state: State) -> None:
        task_id = await make_state(store, state)
        before = await get(store, task_id)
        with pytest.raises(IllegalTransition):
            await store.task_retry(TaskRetry(task_id, T0 + 1))
        assert await get(store, task_id) == before

    async def test_retry_of_an_expired_task_is_illegal(self, store: Store) -> None:
        task_id = await add(store, ttl_ms=1)
        await store.tasks_expire(TasksExpire(now_ms=T0 + 1))
        with pytest.raises(IllegalTransition):
            await store.task_retry(TaskRetry(task_id, T0 + 2))

    async def test_retry_unknown_task(self, store: Store) -> None:
        with pytest.raises(TaskNotFound):
            await store.task_retry(TaskRetry("no-such-task"))

    async def test_retry_when_the_key_was_taken_again(self, store: Store) -> None:
        old = await make_state(store, State.FAILED, key="k")
        new = await add(store, key="k")
        with pytest.raises(DuplicateTask) as info:
            await store.task_retry(TaskRetry(old, T0 + 1))
        assert info.value.existing_id == new
        assert await state_of(store, old) is State.FAILED
        assert len(await store.results_get([old])) == 1


class TaskGetConformance:
    """`task_get`."""

    async def test_get_unknown_task(self, store: Store) -> None:
        assert await store.task_get("no-such-task") is None


class TasksListConformance:
    """`tasks_list`: filters and paging."""

    async def test_list_filters(self, store: Store) -> None:
        a = await add(store, kind="a", queue="q1")
        b = await add(store, kind="b", queue="q1", delay_ms=10)
        c = await add(store, kind="a", queue="q2")

        async def ids(**kw: object) -> list[str]:
            return [r.id for r in await store.tasks_list(TasksList(**kw))]  # type: ignore[arg-type]

        assert await ids() == [a, b, c]
        assert await ids(kind="a") == [a, c]
        assert await ids(queue="q1") == [a, b]
        assert await ids(states=[State.SCHEDULED]) == [b]
        assert await ids(states=[State.SCHEDULED, State.READY]) == [a, b, c]
        assert await ids(states=[State.READY], queue="q1", kind="a") == [a]
        assert await ids(states=[State.RUNNING]) == []
        assert await ids(kind="nope") == []
        assert await ids(limit=2) == [a, b]

    async def test_list_carries_full_records(self, store: Store) -> None:
        task_id = await make_state(store, State.COMPLETED)
        (rec,) = await store.tasks_list(TasksList(states=[State.COMPLETED]))
        assert rec == await get(store, task_id)
        assert rec.result == b'"done"'

    async def test_list_pages_with_after_id(self, store: Store) -> None:
        ids = [o.id for o in await insert(store, *(task(queue="q") for _ in range(25)))]
        await add(store, queue="other")
        seen: list[str] = []
        after: str | None = None
        while page := await store.tasks_list(TasksList(queue="q", limit=10, after_id=after)):
            assert len(page) <= 10
            seen.extend(r.id for r in page)
            after = page[-1].id
        assert seen == ids

    async def test_list_paging_skips_tasks_that_left_the_filter(self, store: Store) -> None:
        ids = [o.id for o in await insert(store, *(task() for _ in range(6)))]
        page = await store.tasks_list(TasksList(states=[State.READY], limit=3))
        assert [r.id for r in page] == ids[:3]
        await claim(store, limit=4)  # ids[:4] leave `ready`
        rest = await store.tasks_list(
            TasksList(states=[State.READY], limit=3, after_id=page[-1].id)
        )
        assert [r.id for r in rest] == ids[4:]


class TasksCountConformance:
    """`tasks_count`."""

    async def test_count_by_queue_and_state(self, store: Store) -> None:
        assert await store.tasks_count() == []
        await add(store, queue="a")
        await add(store, queue="a")
        await add(store, queue="a", delay_ms=5)
        await add(store, queue="b")
        await claim(store, queues=("b",))
        counts = {(c.queue, c.state): c.count for c in await store.tasks_count()}
        assert counts == {("a", State.READY): 2, ("a", State.SCHEDULED): 1, ("b", State.RUNNING): 1}
        assert all(isinstance(c, CountRow) for c in await store.tasks_count())


class ResultsGetConformance:
    """`results_get`."""

    async def test_results_only_for_finished_tasks(self, store: Store) -> None:
        done = await make_state(store, State.COMPLETED, kind="c")
        failed = await make_state(store, State.FAILED, kind="f")
        running = await make_state(store, State.RUNNING, kind="r")
        ready = await add(store)
        rows = await store.results_get([done, failed, running, ready, "no-such-task"])
        got = {r.task_id: r for r in rows}
        assert set(got) == {done, failed}
        assert got[done] == ResultRow(done, State.COMPLETED, b'"done"', None)
        assert got[failed] == ResultRow(failed, State.FAILED, None, ERR)
        assert await store.results_get([]) == []

    async def test_results_for_many_ids(self, store: Store) -> None:
        tasks = [task() for _ in range(1_200)]
        await insert(store, *tasks)
        rows = await claim(store, limit=1_200)
        await store.tasks_finish(
            TasksFinish(
                [Finish(r.id, r.lease_epoch, State.COMPLETED, result=r.id.encode()) for r in rows],
                T0,
            )
        )
        got = await store.results_get([t.id for t in tasks] + ["missing"])
        assert len(got) == 1_200
        assert all(r.result == r.task_id.encode() for r in got)


class EventsReadConformance:
    """`events_read`."""

    async def test_events_read_in_order_with_a_cursor(self, store: Store) -> None:
        task_id = await add(store)
        row = await claim_one(store, now=T0 + 1)
        await finish(store, task_id, row.lease_epoch, State.COMPLETED, now=T0 + 2)
        events = [e for e in await all_events(store) if e.task_id == task_id]
        assert [(e.state, e.at_ms, e.kind) for e in events] == [
            (State.READY, T0, KIND),
            (State.RUNNING, T0 + 1, KIND),
            (State.COMPLETED, T0 + 2, KIND),
        ]
        first = await store.events_read(EventsRead(after=0, limit=1))
        assert first == events[:1]
        rest = await store.events_read(EventsRead(after=first[0].id))
        assert rest == events[1:]
        assert await store.events_read(EventsRead(after=events[-1].id)) == []

    async def test_events_of_many_tasks_keep_increasing(self, store: Store) -> None:
        await insert(store, *(task() for _ in range(30)))
        rows = await claim(store, limit=30)
        for r in rows[:10]:
            await finish(store, r.id, r.lease_epoch, State.FAILED, error=ERR)
        seen: list[int] = []
        after = 0
        while page := await store.events_read(EventsRead(after=after, limit=7)):
            assert len(page) <= 7
            seen.extend(e.id for e in page)
            after = page[-1].id
        assert len(seen) == 70 and seen == sorted(set(seen))
        await assert_history_legal(store)
