"""Conformance: `tasks_finish` — fenced, single-use ends of an attempt; absorbing terminals."""

from __future__ import annotations

import pytest

from ..._states import TERMINAL, State
from ...errors import FlowmillError
from ...store.contract import Store
from ...store.contract.tasks import (
    ErrorInfo,
    Finish,
    FinishOutcome,
    FinishStatus,
    LeaseRef,
    LeasesExpired,
    LeasesRenew,
    ResultRow,
    TaskCancel,
    TaskRetry,
    TasksExpire,
    TasksFinish,
    TasksInsert,
    TasksPromote,
)
from ._util import (
    ERR,
    T0,
    TTL,
    add,
    assert_history_legal,
    claim,
    claim_one,
    finish,
    get,
    make_state,
    state_of,
    task,
)

ERRORS = {
    State.FAILED: ERR,
    State.DEAD_LETTERED: ErrorInfo("TimeoutError", "took too long ⏱", "retryable", None),
    State.CANCELLED: ErrorInfo("Cancelled", "stop; please", "cancelled"),
}


class TasksFinishConformance:
    """`tasks_finish`: applied once per attempt, then answered from the record."""

    async def test_complete_stores_the_result(self, store: Store) -> None:
        task_id = await add(store)
        row = await claim_one(store)
        out = await finish(
            store, task_id, row.lease_epoch, State.COMPLETED, now=T0 + 50, result=b"\x00r"
        )
        assert out == FinishOutcome(task_id, FinishStatus.APPLIED, State.COMPLETED)
        rec = await get(store, task_id)
        assert (rec.state, rec.result, rec.error) == (State.COMPLETED, b"\x00r", None)
        assert (rec.lease_owner, rec.lease_expires_at_ms) == (None, None)
        assert rec.finished_at_ms == T0 + 50 and rec.attempts == 1
        assert await store.results_get([task_id]) == [
            ResultRow(task_id, State.COMPLETED, b"\x00r", None)
        ]

    async def test_complete_without_a_result(self, store: Store) -> None:
        task_id = await add(store)
        row = await claim_one(store)
        await finish(store, task_id, row.lease_epoch, State.COMPLETED)
        assert await store.results_get([task_id]) == [
            ResultRow(task_id, State.COMPLETED, None, None)
        ]

    async def test_complete_after_a_failed_attempt_has_no_error(self, store: Store) -> None:
        task_id = await add(store)
        row = await claim_one(store)
        await finish(store, task_id, row.lease_epoch, State.READY, error=ERR)
        assert (await get(store, task_id)).error == ERR  # why it is being retried
        row = await claim_one(store)
        await finish(store, task_id, row.lease_epoch, State.COMPLETED, result=b"1")
        rec = await get(store, task_id)
        assert (rec.state, rec.error, rec.result) == (State.COMPLETED, None, b"1")

    @pytest.mark.parametrize("target", [State.FAILED, State.DEAD_LETTERED, State.CANCELLED])
    async def test_bad_ends_store_the_error(self, store: Store, target: State) -> None:
        task_id = await add(store)
        row = await claim_one(store)
        error = ERRORS[target]
        out = await finish(store, task_id, row.lease_epoch, target, now=T0 + 9, error=error)
        assert out == FinishOutcome(task_id, FinishStatus.APPLIED, target)
        rec = await get(store, task_id)
        assert (rec.state, rec.error, rec.result, rec.finished_at_ms) == (
            target,
            error,
            None,
            T0 + 9,
        )
        assert await store.results_get([task_id]) == [ResultRow(task_id, target, None, error)]

    async def test_retry_with_delay_schedules(self, store: Store) -> None:
        task_id = await add(store)
        row = await claim_one(store)
        out = await finish(
            store, task_id, row.lease_epoch, State.SCHEDULED, now=T0 + 10, delay_ms=2_000, error=ERR
        )
        assert out == FinishOutcome(task_id, FinishStatus.APPLIED, State.SCHEDULED)
        rec = await get(store, task_id)
        assert (rec.state, rec.run_at_ms, rec.error) == (State.SCHEDULED, T0 + 2_010, ERR)
        assert (rec.lease_owner, rec.lease_expires_at_ms, rec.finished_at_ms) == (None, None, None)
        assert await store.results_get([task_id]) == []
        assert await store.tasks_promote(TasksPromote(now_ms=T0 + 2_009)) == 0
        assert await claim(store, now=T0 + 2_009) == []
        assert await store.tasks_promote(TasksPromote(now_ms=T0 + 2_010)) == 1
        again = await claim_one(store, now=T0 + 2_010)
        assert (again.attempt, again.lease_epoch) == (2, row.lease_epoch + 1)

    async def test_delay_with_run_at(self, store: Store) -> None:
        task_id = await add(store)
        row = await claim_one(store)
        await finish(store, task_id, row.lease_epoch, State.SCHEDULED, run_at_ms=T0 + 777)
        assert (await get(store, task_id)).run_at_ms == T0 + 777
        assert await store.tasks_promote(TasksPromote(now_ms=T0 + 777)) == 1

    async def test_scheduled_needs_a_time(self, store: Store) -> None:
        task_id = await add(store)
        row = await claim_one(store)
        with pytest.raises(FlowmillError):
            await finish(store, task_id, row.lease_epoch, State.SCHEDULED)
        assert await state_of(store, task_id) is State.RUNNING

    @pytest.mark.parametrize("target", [State.RUNNING, State.EXPIRED, State.BLOCKED])
    async def test_illegal_targets_are_refused(self, store: Store, target: State) -> None:
        task_id = await add(store)
        row = await claim_one(store)
        with pytest.raises(FlowmillError):
            await finish(store, task_id, row.lease_epoch, target)
        assert await state_of(store, task_id) is State.RUNNING

    async def test_retry_now_is_ready_at_once(self, store: Store) -> None:
        task_id = await add(store)
        row = await claim_one(store)
        out = await finish(store, task_id, row.lease_epoch, State.READY, error=ERR)
        assert out.state is State.READY
        again = await claim_one(store)
        assert (again.id, again.attempt, again.lease_epoch) == (task_id, 2, 2)

    async def test_release_gives_the_attempt_back(self, store: Store) -> None:
        task_id = await add(store)
        row = await claim_one(store)
        out = await finish(store, task_id, row.lease_epoch, State.READY, release=True)
        assert out == FinishOutcome(task_id, FinishStatus.APPLIED, State.READY)
        rec = await get(store, task_id)
        assert (rec.state, rec.attempts, rec.lease_owner) == (State.READY, 0, None)
        again = await claim_one(store)
        assert (again.attempt, again.lease_epoch) == (1, 2)

    async def test_stale_epoch_is_lease_lost_and_changes_nothing(self, store: Store) -> None:
        task_id = await add(store)
        first = await claim_one(store)
        await finish(store, task_id, first.lease_epoch, State.READY)
        second = await claim_one(store, now=T0 + 1)
        before = await get(store, task_id)
        for target in (State.COMPLETED, State.FAILED, State.READY, State.CANCELLED):
            out = await finish(
                store, task_id, first.lease_epoch, target, now=T0 + 2, result=b"x", error=ERR
            )
            assert out == FinishOutcome(task_id, FinishStatus.LEASE_LOST, State.RUNNING)
        out = await finish(
            store, task_id, first.lease_epoch, State.SCHEDULED, now=T0 + 2, delay_ms=5
        )
        assert out.status is FinishStatus.LEASE_LOST
        assert await get(store, task_id) == before
        assert second.lease_epoch == before.lease_epoch

    async def test_finish_before_any_claim_is_lease_lost(self, store: Store) -> None:
        task_id = await add(store)
        out = await finish(store, task_id, 0, State.COMPLETED)
        assert out == FinishOutcome(task_id, FinishStatus.LEASE_LOST, State.READY)
        assert await state_of(store, task_id) is State.READY

    async def test_finish_of_unknown_task(self, store: Store) -> None:
        out = await finish(store, "no-such-task", 1, State.COMPLETED)
        assert out == FinishOutcome("no-such-task", FinishStatus.LEASE_LOST, None)

    @pytest.mark.parametrize(
        "target", [State.COMPLETED, State.FAILED, State.DEAD_LETTERED, State.CANCELLED, State.READY]
    )
    async def test_repeat_after_lost_reply_is_already(self, store: Store, target: State) -> None:
        task_id = await add(store)
        row = await claim_one(store)
        result = b"r" if target is State.COMPLETED else None
        error = None if target is State.COMPLETED else ERR
        first = await finish(store, task_id, row.lease_epoch, target, result=result, error=error)
        assert first.status is FinishStatus.APPLIED
        after = await get(store, task_id)
        again = await finish(
            store, task_id, row.lease_epoch, target, now=T0 + 5, result=result, error=error
        )
        assert again == FinishOutcome(task_id, FinishStatus.ALREADY, target)
        assert await get(store, task_id) == after

    async def test_repeat_of_a_delay_is_already_even_after_promotion(self, store: Store) -> None:
        task_id = await add(store)
        row = await claim_one(store)
        await finish(store, task_id, row.lease_epoch, State.SCHEDULED, delay_ms=10)
        again = await finish(store, task_id, row.lease_epoch, State.SCHEDULED, delay_ms=10)
        assert again == FinishOutcome(task_id, FinishStatus.ALREADY, State.SCHEDULED)
        await store.tasks_promote(TasksPromote(now_ms=T0 + 10))
        again = await finish(
            store, task_id, row.lease_epoch, State.SCHEDULED, now=T0 + 10, delay_ms=10
        )
        assert again == FinishOutcome(task_id, FinishStatus.ALREADY, State.READY)
        assert (await get(store, task_id)).run_at_ms == T0 + 10

    async def test_a_different_end_after_apply_is_lease_lost(self, store: Store) -> None:
        task_id = await add(store)
        row = await claim_one(store)
        await finish(store, task_id, row.lease_epoch, State.COMPLETED, result=b"1")
        for target in (State.FAILED, State.CANCELLED, State.READY):
            out = await finish(store, task_id, row.lease_epoch, target, error=ERR)
            assert out == FinishOutcome(task_id, FinishStatus.LEASE_LOST, State.COMPLETED)
        out = await finish(store, task_id, row.lease_epoch, State.SCHEDULED, delay_ms=1)
        assert out.status is FinishStatus.LEASE_LOST
        rec = await get(store, task_id)
        assert (rec.state, rec.result, rec.error) == (State.COMPLETED, b"1", None)

    async def test_a_repeat_after_the_next_claim_is_lease_lost(self, store: Store) -> None:
        task_id = await add(store)
        row = await claim_one(store)
        await finish(store, task_id, row.lease_epoch, State.READY)
        await claim_one(store)
        out = await finish(store, task_id, row.lease_epoch, State.READY)
        assert out == FinishOutcome(task_id, FinishStatus.LEASE_LOST, State.RUNNING)

    async def test_expired_lease_finish_needs_an_expired_lease(self, store: Store) -> None:
        task_id = await add(store)
        row = await claim_one(store, ttl=1_000)
        lease_error = ErrorInfo("LeaseExpired", "worker vanished", "lease_expired")
        early = await finish(
            store,
            task_id,
            row.lease_epoch,
            State.READY,
            now=T0 + 1_000,
            error=lease_error,
            expired_lease=True,
        )
        assert early.status is FinishStatus.LEASE_LOST
        assert await state_of(store, task_id) is State.RUNNING
        late = await finish(
            store,
            task_id,
            row.lease_epoch,
            State.READY,
            now=T0 + 1_001,
            error=lease_error,
            expired_lease=True,
        )
        assert late == FinishOutcome(task_id, FinishStatus.APPLIED, State.READY)
        rec = await get(store, task_id)
        assert (rec.state, rec.attempts, rec.error) == (State.READY, 1, lease_error)
        # the worker that lost the lease comes back and tries to complete
        out = await finish(store, task_id, row.lease_epoch, State.COMPLETED, now=T0 + 1_002)
        assert out.status is FinishStatus.LEASE_LOST
        assert await state_of(store, task_id) is State.READY

    async def test_reaper_dead_letters_when_attempts_run_out(self, store: Store) -> None:
        task_id = await add(store, max_attempts=1)
        await claim_one(store, ttl=100)
        (expired,) = await store.leases_expired(LeasesExpired(now_ms=T0 + 101))
        assert (expired.task_id, expired.attempt, expired.max_attempts) == (task_id, 1, 1)
        err = ErrorInfo("LeaseExpired", "lease expired", "lease_expired")
        out = await finish(
            store,
            task_id,
            expired.epoch,
            State.DEAD_LETTERED,
            now=T0 + 101,
            error=err,
            expired_lease=True,
        )
        assert out.status is FinishStatus.APPLIED
        assert await store.results_get([task_id]) == [
            ResultRow(task_id, State.DEAD_LETTERED, None, err)
        ]

    async def test_many_finishes_in_one_call(self, store: Store) -> None:
        ids = [await add(store) for _ in range(5)]
        rows = await claim(store, limit=5)
        epoch = {r.id: r.lease_epoch for r in rows}
        items = [
            Finish(ids[0], epoch[ids[0]], State.COMPLETED, result=b"0"),
            Finish(ids[1], epoch[ids[1]], State.FAILED, error=ERR),
            Finish(ids[2], epoch[ids[2]] + 1, State.COMPLETED),
            Finish(ids[3], epoch[ids[3]], State.SCHEDULED, delay_ms=5),
            Finish(ids[4], epoch[ids[4]], State.READY, release=True),
            Finish(ids[0], epoch[ids[0]], State.COMPLETED, result=b"0"),
        ]
        outs = await store.tasks_finish(TasksFinish(items, T0))
        assert [(o.task_id, o.status, o.state) for o in outs] == [
            (ids[0], FinishStatus.APPLIED, State.COMPLETED),
            (ids[1], FinishStatus.APPLIED, State.FAILED),
            (ids[2], FinishStatus.LEASE_LOST, State.RUNNING),
            (ids[3], FinishStatus.APPLIED, State.SCHEDULED),
            (ids[4], FinishStatus.APPLIED, State.READY),
            (ids[0], FinishStatus.ALREADY, State.COMPLETED),
        ]
        assert await store.tasks_finish(TasksFinish([], T0)) == []

    async def test_many_finishes_of_distinct_tasks_in_one_call(self, store: Store) -> None:
        # Each task once (a batch a store may write in one statement): every finish is
        # still fenced and judged on its own row.
        ids = [await add(store) for _ in range(6)]
        rows = await claim(store, limit=6)
        epoch = {r.id: r.lease_epoch for r in rows}
        await store.task_cancel(TaskCancel(ids[5], "stop it", T0 + 1))
        items = [
            Finish(ids[0], epoch[ids[0]], State.COMPLETED, result=b"0"),
            Finish(ids[1], epoch[ids[1]], State.FAILED, error=ERR),
            Finish(ids[2], epoch[ids[2]] + 1, State.COMPLETED),
            Finish(ids[3], epoch[ids[3]], State.SCHEDULED, delay_ms=5),
            Finish(ids[4], epoch[ids[4]], State.READY, release=True),
            Finish(ids[5], epoch[ids[5]], State.SCHEDULED, delay_ms=5),
        ]
        outs = await store.tasks_finish(TasksFinish(items, T0 + 2))
        assert [(o.task_id, o.status, o.state) for o in outs] == [
            (ids[0], FinishStatus.APPLIED, State.COMPLETED),
            (ids[1], FinishStatus.APPLIED, State.FAILED),
            (ids[2], FinishStatus.LEASE_LOST, State.RUNNING),
            (ids[3], FinishStatus.APPLIED, State.SCHEDULED),
            (ids[4], FinishStatus.APPLIED, State.READY),
            (ids[5], FinishStatus.APPLIED, State.CANCELLED),
        ]
        results = {r.task_id: (r.state, r.result) for r in await store.results_get(ids)}
        assert results == {
            ids[0]: (State.COMPLETED, b"0"),
            ids[1]: (State.FAILED, None),
            ids[5]: (State.CANCELLED, None),
        }
        assert (await get(store, ids[4])).attempts == 0
        assert (await store.tasks_finish(TasksFinish(items[:2], T0 + 3))) == [
            FinishOutcome(ids[0], FinishStatus.ALREADY, State.COMPLETED),
            FinishOutcome(ids[1], FinishStatus.ALREADY, State.FAILED),
        ]
        await assert_history_legal(store)

    async def test_a_cancel_requested_while_running_is_not_lost(self, store: Store) -> None:
        task_id = await add(store)
        row = await claim_one(store)
        cancel = await store.task_cancel(TaskCancel(task_id, "stop it", T0 + 1))
        assert cancel.requested and cancel.state is State.RUNNING
        # the handler ignored the request and asked for a retry: the cancel still wins
        out = await finish(
            store, task_id, row.lease_epoch, State.SCHEDULED, now=T0 + 2, delay_ms=10
        )
        assert out == FinishOutcome(task_id, FinishStatus.APPLIED, State.CANCELLED)
        assert await state_of(store, task_id) is State.CANCELLED
        again = await finish(
            store, task_id, row.lease_epoch, State.SCHEDULED, now=T0 + 3, delay_ms=10
        )
        assert again == FinishOutcome(task_id, FinishStatus.ALREADY, State.CANCELLED)
        (res,) = await store.results_get([task_id])
        assert res.state is State.CANCELLED and res.error is not None
        assert await claim(store, now=T0 + 100) == []
        await assert_history_legal(store)

    async def test_a_cancel_request_does_not_undo_a_completion(self, store: Store) -> None:
        task_id = await add(store)
        row = await claim_one(store)
        await store.task_cancel(TaskCancel(task_id, now_ms=T0))
        out = await finish(store, task_id, row.lease_epoch, State.COMPLETED, result=b"ok")
        assert out.state is State.COMPLETED
        assert (await get(store, task_id)).result == b"ok"


class TerminalConformance:
    """Terminal states are absorbing; every recorded move is in TRANSITIONS."""

    @pytest.mark.parametrize(
        "end", [State.COMPLETED, State.FAILED, State.DEAD_LETTERED, State.CANCELLED, State.EXPIRED]
    )
    async def test_terminal_states_absorb(self, store: Store, end: State) -> None:
        if end is State.EXPIRED:
            task_id = await add(store, ttl_ms=10)
            assert await store.tasks_expire(TasksExpire(now_ms=T0 + 10)) == 1
        else:
            task_id = await make_state(store, end)
        assert end in TERMINAL
        before = await get(store, task_id)
        results = await store.results_get([task_id])
        later = T0 + 10 * TTL
        for target in (State.COMPLETED, State.FAILED, State.READY, State.CANCELLED):
            for epoch in (before.lease_epoch, before.lease_epoch + 1):
                out = await finish(store, task_id, epoch, target, now=later, error=ERR, result=b"x")
                assert out.status is not FinishStatus.APPLIED
                assert out.state is end
        assert await claim(store, now=later) == []
        assert await store.tasks_promote(TasksPromote(now_ms=later)) == 0
        assert await store.tasks_expire(TasksExpire(now_ms=later)) == 0
        assert await store.leases_expired(LeasesExpired(now_ms=later)) == []
        cancel = await store.task_cancel(TaskCancel(task_id, now_ms=later))
        assert (cancel.state, cancel.requested) == (end, False)
        assert await get(store, task_id) == before
        assert await store.results_get([task_id]) == results
        await assert_history_legal(store)

    async def test_every_recorded_move_is_legal(self, store: Store) -> None:
        now = T0
        plain = [await add(store, priority=p) for p in range(6)]
        await add(store, delay_ms=50)
        await add(store, ttl_ms=5)
        await store.tasks_insert(TasksInsert([task(key="r"), task(key="r")], "replace", now))
        rows = await claim(store, limit=4, ttl=100)
        by_id = {r.id: r for r in rows}
        ends = [State.COMPLETED, State.FAILED, State.DEAD_LETTERED, State.SCHEDULED]
        for (task_id, row), end in zip(by_id.items(), ends, strict=True):
            await finish(
                store,
                task_id,
                row.lease_epoch,
                end,
                result=b"1" if end is State.COMPLETED else None,
                error=None if end is State.COMPLETED else ERR,
                delay_ms=20 if end is State.SCHEDULED else None,
            )
        await store.leases_renew(
            LeasesRenew([LeaseRef(r.id, r.lease_epoch) for r in rows], TTL, now)
        )
        await store.tasks_promote(TasksPromote(now_ms=now + 100))
        await store.tasks_expire(TasksExpire(now_ms=now + 100))
        more = await claim(store, limit=3, now=now + 100, ttl=10)
        await store.task_cancel(TaskCancel(more[0].id, now_ms=now + 100))
        await finish(
            store, more[0].id, more[0].lease_epoch, State.CANCELLED, now=now + 101, error=ERR
        )
        for lease in await store.leases_expired(LeasesExpired(now_ms=now + 200)):
            await finish(
                store,
                lease.task_id,
                lease.epoch,
                State.READY,
                now=now + 200,
                error=ERR,
                expired_lease=True,
            )
        for task_id in plain:
            rec = await get(store, task_id)
            if rec.state in (State.FAILED, State.DEAD_LETTERED):
                assert await store.task_retry(TaskRetry(task_id, now + 300)) is State.READY
            elif rec.state in (State.READY, State.SCHEDULED):
                await store.task_cancel(TaskCancel(task_id, now_ms=now + 300))
        history = await assert_history_legal(store)
        seen = {s for states in history.values() for s in states}
        assert {State.READY, State.RUNNING, State.COMPLETED, State.CANCELLED} <= seen
        assert {State.SCHEDULED, State.EXPIRED, State.FAILED, State.DEAD_LETTERED} <= seen
