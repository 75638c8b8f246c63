"""Conformance: suspensions (`task_suspend`, `resume_signals`) and their timeouts
(`suspensions_expire`)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from ..._conditions import Condition, Count, Signal, encode_condition
from ..._states import Phase, State
from ...errors import LeaseLost
from ...store.contract import Store
from ...store.contract.signals import (
    DeliverOutcome,
    DeliverStatus,
    OnTimeout,
    SignalRow,
    SuspendStatus,
    SuspensionsExpire,
    TaskSuspend,
)
from ...store.contract.tasks import (
    HooksClaim,
    LeaseRef,
    TaskCancel,
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
    state_of,
    task,
)
from ._waiting import (
    HOUR,
    append,
    deliver,
    detailed,
    names,
    running,
    suspend,
    waitpoint,
)
from .wake import wait_until_woken


class TaskSuspendConformance:
    """`task_suspend` and the resume a delivered signal makes."""

    async def test_suspend_then_deliver_resumes_once(self, store: Store) -> None:
        row = await running(store, max_attempts=1)
        wp = await waitpoint(store, row)
        status = await suspend(store, row, Signal("go", wp), now=T0 + 10)
        assert status is SuspendStatus.SUSPENDED
        rec = await get(store, row.id)
        assert rec.state is State.SUSPENDED
        assert (rec.lease_owner, rec.lease_expires_at_ms) == (None, None)
        assert rec.attempts == 0  # given back, as by a release
        assert await claim(store) == []
        # The old lease is gone: its writes are refused.
        with pytest.raises(LeaseLost):
            await append(store, row)
        first = await deliver(store, wp, "go", b"1", now=T0 + 20)
        assert first == DeliverOutcome(DeliverStatus.ACCEPTED, None, True)
        rec = await get(store, row.id)
        assert (rec.state, rec.phase) == (State.READY, Phase.EXECUTE)
        second = await deliver(store, wp, "go", b"2", now=T0 + 30)
        # One-shot: the waitpoint closed when its suspension resumed; nothing is recorded.
        assert second == DeliverOutcome(
            DeliverStatus.CLOSED, "waitpoint closed: its suspension resumed", False
        )
        history = await detailed(store, row.id)
        assert [s for s, _ in history] == [
            State.READY,
            State.RUNNING,
            State.SUSPENDED,
            State.READY,
        ]
        assert history[-1] == (State.READY, "resumed")
        again = await claim_one(store, now=T0 + 40)
        # The attempt given back is the one run again: max_attempts=1 is not spent.
        assert (again.id, again.attempt, again.lease_epoch) == (row.id, 1, row.lease_epoch + 1)
        assert await store.resume_signals(row.id) == [SignalRow(wp.id, "go", b"1", T0 + 20)]

    @pytest.mark.parametrize(
        ("make", "sends", "resumes_at"),
        [
            ("any", ["b"], 0),
            ("any", ["x", "a"], 1),
            ("all", ["a", "x", "b"], 2),
            ("all", ["b", "b", "a"], 2),
            ("count", ["yes", "no", "yes", "yes"], 3),
            ("waitpoint", ["go@1", "go@2"], 1),
            ("wildcard", ["anything@2"], 0),
        ],
    )
    async def test_conditions(
        self, store: Store, make: str, sends: list[str], resumes_at: int
    ) -> None:
        row = await running(store)
        wp1 = await waitpoint(store, row, "one")
        wp2 = await waitpoint(store, row, "two")
        condition: Condition = {
            "any": Signal("a") | Signal("b"),
            "all": Signal("a", wp1) & Signal("b", wp1),
            "count": Count(3, Signal("yes")),
            "waitpoint": Signal("go", wp2),
            "wildcard": Signal("*", wp2),
        }[make]
        assert await suspend(store, row, condition) is SuspendStatus.SUSPENDED
        outs = []
        for i, send in enumerate(sends):
            name, _, which = send.partition("@")
            outs.append(await deliver(store, wp2 if which == "2" else wp1, name, now=T0 + i))
        assert [o.resumed for o in outs] == [i == resumes_at for i in range(len(sends))]
        assert all(o.status is DeliverStatus.ACCEPTED for o in outs)
        # Every signal received up to the resume is consumed by it, in arrival order.
        assert await names(store, row.id) == [s.partition("@")[0] for s in sends][: resumes_at + 1]
        assert await state_of(store, row.id) is State.READY

    async def test_unrelated_buffered_signals_do_not_satisfy(self, store: Store) -> None:
        row = await running(store)
        wp = await waitpoint(store, row)
        await deliver(store, wp, "other")
        assert await suspend(store, row, Signal("go", wp)) is SuspendStatus.SUSPENDED
        assert (await deliver(store, wp, "go")).resumed
        assert await names(store, row.id) == ["other", "go"]

    async def test_suspend_is_fenced(self, store: Store) -> None:
        task_id = await add(store)
        first = await claim_one(store)
        wp = await waitpoint(store, first)
        await finish(store, task_id, first.lease_epoch, State.READY, error=ERR)
        second = await claim_one(store)
        with pytest.raises(LeaseLost):
            await suspend(store, first, Signal("go", wp))
        rec = await get(store, task_id)
        assert (rec.state, rec.lease_epoch, rec.attempts) == (State.RUNNING, second.lease_epoch, 2)
        # Nothing was stored: a signal does not resume (nor consume for) the refused suspend.
        assert (await deliver(store, wp, "go")).resumed is False
        assert await store.resume_signals(task_id) == []
        await finish(store, task_id, second.lease_epoch, State.COMPLETED, result=b"1")
        with pytest.raises(LeaseLost):
            await suspend(store, second, Signal("go", wp))
        with pytest.raises(LeaseLost):
            await store.task_suspend(TaskSuspend("no-such-task", 1, encode_condition(Signal("go"))))
        assert await state_of(store, task_id) is State.COMPLETED

    async def test_a_cancel_requested_while_running_wins_over_suspend(self, store: Store) -> None:
        row = await running(store)
        wp = await waitpoint(store, row)
        out = await store.task_cancel(TaskCancel(row.id, now_ms=T0))
        assert out.requested
        status = await suspend(store, row, Signal("go", wp))
        assert status is SuspendStatus.CANCEL_REQUESTED
        rec = await get(store, row.id)
        assert (rec.state, rec.cancel_requested) == (State.RUNNING, True)  # nothing written
        assert (await deliver(store, wp, "go")).resumed is False
        out2 = await finish(store, row.id, row.lease_epoch, State.CANCELLED, error=ERR)
        assert out2.state is State.CANCELLED

    async def test_a_refused_suspend_consumes_nothing(self, store: Store) -> None:
        task_id = await add(store)
        first = await claim_one(store)
        wp = await waitpoint(store, first)
        await deliver(store, wp, "go")
        await finish(store, task_id, first.lease_epoch, State.READY, error=ERR)
        second = await claim_one(store)
        with pytest.raises(LeaseLost):
            await suspend(store, first, Signal("go", wp))
        assert await store.resume_signals(task_id) == []
        assert await suspend(store, second, Signal("go", wp)) is SuspendStatus.ALREADY_SATISFIED
        assert await names(store, task_id) == ["go"]

    async def test_suspend_and_resume_many_times(self, store: Store) -> None:
        row = await running(store, max_attempts=1)
        for i in range(3):
            wp = await waitpoint(store, row, f"step-{i}")  # one-shot: a waitpoint per wait
            assert await suspend(store, row, Signal(f"s{i}", wp)) is SuspendStatus.SUSPENDED
            assert (await deliver(store, wp, f"s{i}")).resumed
            row = await claim_one(store)
            assert row.attempt == 1
            assert await names(store, row.id) == [f"s{i}"]
        await finish(store, row.id, row.lease_epoch, State.COMPLETED, result=b"1")

    async def test_resume_wakes_workers(self, store: Store) -> None:
        now = await store.now_ms()
        row = await running(store, now)
        wp = await waitpoint(store, row, now=now)
        await suspend(store, row, Signal("go", wp), now=now)
        await wait_until_woken(store.wait_for_work, lambda: deliver(store, wp, "go", now=now))

    async def test_a_thousand_waitpoints_signalled_three_times_resume_once(
        self, store: Store
    ) -> None:
        n = 1000
        await insert(store, *(task() for _ in range(n)))
        rows = await claim(store, limit=n)
        assert len(rows) == n
        wps = await asyncio.gather(*(waitpoint(store, r) for r in rows))
        statuses = await asyncio.gather(
            *(suspend(store, r, Signal("go", w)) for r, w in zip(rows, wps, strict=True))
        )
        assert set(statuses) == {SuspendStatus.SUSPENDED}
        sends = [(w, i) for w in wps for i in range(3)]
        outs = await asyncio.gather(
            *(deliver(store, w, "go", key=f"k{i}", now=T0 + i) for w, i in sends)
        )
        # One-shot: the first signal of each waitpoint resumes its task, the rest are closed.
        assert {o.status for o in outs} == {DeliverStatus.ACCEPTED, DeliverStatus.CLOSED}
        accepted = Counter(
            w.task_id
            for (w, _), o in zip(sends, outs, strict=True)
            if o.status is DeliverStatus.ACCEPTED
        )
        assert len(accepted) == n and set(accepted.values()) == {1}
        resumed = Counter(w.task_id for (w, _), o in zip(sends, outs, strict=True) if o.resumed)
        assert len(resumed) == n and set(resumed.values()) == {1}
        events = Counter(e.task_id for e in await all_events(store) if e.detail == "resumed")
        assert len(events) == n and set(events.values()) == {1}
        assert len(await claim(store, limit=2 * n)) == n


class SuspensionsExpireConformance:
    """`suspensions_expire`: what a suspension's timeout does to its task."""

    async def test_fail(self, store: Store) -> None:
        row = await running(store)
        wp = await waitpoint(store, row)
        await suspend(store, row, Signal("go", wp), timeout_ms=1_000)
        assert await store.suspensions_expire(SuspensionsExpire(now_ms=T0 + 999)) == 0
        assert await state_of(store, row.id) is State.SUSPENDED
        assert await store.suspensions_expire(SuspensionsExpire(now_ms=T0 + 1_000)) == 1
        rec = await get(store, row.id)
        assert rec.state is State.FAILED and rec.finished_at_ms == T0 + 1_000
        assert rec.error is not None
        assert (rec.error.type, rec.error.category) == ("SuspendTimeout", "suspend_timeout")
        (res,) = await store.results_get([row.id])
        assert (res.state, res.result, res.error) == (State.FAILED, None, rec.error)
        assert await store.suspensions_expire(SuspensionsExpire(now_ms=T0 + 9_000)) == 0
        out = await deliver(store, wp, "go", now=T0 + 2_000)
        assert (out.status, out.reason) == (DeliverStatus.REJECTED, "task already ended (failed)")

    async def test_expire(self, store: Store) -> None:
        row = await running(store)
        await suspend(store, row, Signal("go"), timeout_ms=50, on_timeout=OnTimeout.EXPIRE)
        assert await store.suspensions_expire(SuspensionsExpire(now_ms=T0 + 50)) == 1
        rec = await get(store, row.id)
        assert (rec.state, rec.finished_at_ms) == (State.EXPIRED, T0 + 50)
        (res,) = await store.results_get([row.id])
        assert res.state is State.EXPIRED and res.error is not None

    async def test_resume_consumes_no_signals(self, store: Store) -> None:
        row = await running(store)
        wp = await waitpoint(store, row)
        await deliver(store, wp, "other")
        await suspend(store, row, Signal("go", wp), timeout_ms=50, on_timeout=OnTimeout.RESUME)
        assert await store.suspensions_expire(SuspensionsExpire(now_ms=T0 + 50)) == 1
        rec = await get(store, row.id)
        assert (rec.state, rec.phase, rec.finished_at_ms) == (State.READY, Phase.EXECUTE, None)
        assert await store.results_get([row.id]) == []
        again = await claim_one(store, now=T0 + 60)
        assert again.attempt == 1
        assert await store.resume_signals(row.id) == []
        # The timeout closed the waitpoint: the signal received before it went with the
        # timed-out suspension and does not leak into the next one.
        assert await suspend(store, again, Signal("other")) is SuspendStatus.SUSPENDED
        # A signal now goes nowhere: the timed-out suspension does not resume again.
        out = await deliver(store, wp, "go", now=T0 + 70)
        assert out == DeliverOutcome(
            DeliverStatus.CLOSED, "waitpoint closed: its suspension timed out", False
        )
        assert await state_of(store, row.id) is State.SUSPENDED

    async def test_cancel_is_an_operator_cancel(self, store: Store) -> None:
        parent = await running(store, kind="orch", has_on_cancel=True)
        child = task(parent_id=parent.id)
        await store.tasks_insert(
            TasksInsert([child], "skip", T0, LeaseRef(parent.id, parent.lease_epoch))
        )
        await suspend(store, parent, Signal("go"), timeout_ms=10, on_timeout=OnTimeout.CANCEL)
        assert await store.suspensions_expire(SuspensionsExpire(now_ms=T0 + 10)) == 1
        rec = await get(store, parent.id)
        assert rec.state is State.CANCELLED and rec.error is not None
        assert rec.error.category == "cancelled"
        (res,) = await store.results_get([parent.id])
        assert res.state is State.CANCELLED
        assert await state_of(store, child.id) is State.CANCELLED  # the cascade
        hooks = await store.hooks_claim(HooksClaim("h", ["orch"], 10, 30_000, T0 + 20))
        assert [(h.task_id, h.hook, h.state) for h in hooks] == [
            (parent.id, "on_cancel", State.CANCELLED)
        ]

    @pytest.mark.parametrize(
        ("behaviour", "state", "parent_state"),
        [
            (OnTimeout.FAIL, State.FAILED, State.FAILED),
            (OnTimeout.EXPIRE, State.EXPIRED, State.FAILED),
            (OnTimeout.CANCEL, State.CANCELLED, State.READY),
        ],
    )
    async def test_an_ended_child_counts_against_its_parent(
        self, store: Store, behaviour: OnTimeout, state: State, parent_state: State
    ) -> None:
        parent = await running(store, kind="orch")
        child = task(parent_id=parent.id)
        await store.tasks_insert(
            TasksInsert([child], "skip", T0, LeaseRef(parent.id, parent.lease_epoch))
        )
        waited = await store.task_wait_children(
            TaskWaitChildren(parent.id, parent.lease_epoch, b"{}", T0)
        )
        assert waited is State.WAITING_CHILDREN
        row = await claim_one(store)
        assert row.id == child.id
        await suspend(store, row, Signal("go"), timeout_ms=10, on_timeout=behaviour)
        assert await store.suspensions_expire(SuspensionsExpire(now_ms=T0 + 10)) == 1
        assert await state_of(store, child.id) is state
        assert await state_of(store, parent.id) is parent_state

    async def test_a_cascade_cancel_resolves_a_suspended_child(self, store: Store) -> None:
        parent = await running(store, kind="orch")
        child = task(parent_id=parent.id)
        await store.tasks_insert(
            TasksInsert([child], "skip", T0, LeaseRef(parent.id, parent.lease_epoch))
        )
        await store.task_wait_children(TaskWaitChildren(parent.id, parent.lease_epoch, b"{}", T0))
        row = await claim_one(store)
        wp = await waitpoint(store, row)
        await suspend(store, row, Signal("go", wp), timeout_ms=10, on_timeout=OnTimeout.RESUME)
        await store.task_cancel(TaskCancel(parent.id, now_ms=T0 + 1))
        assert await state_of(store, child.id) is State.CANCELLED
        assert await store.suspensions_expire(SuspensionsExpire(now_ms=T0 + 100)) == 0
        assert (await deliver(store, wp, "go", now=T0 + 2)).status is DeliverStatus.REJECTED
        assert await state_of(store, child.id) is State.CANCELLED

    async def test_a_resumed_suspension_never_times_out(self, store: Store) -> None:
        row = await running(store)
        wp = await waitpoint(store, row)
        await suspend(store, row, Signal("go", wp), timeout_ms=10)
        assert (await deliver(store, wp, "go", now=T0 + 5)).resumed
        assert await store.suspensions_expire(SuspensionsExpire(now_ms=T0 + 100)) == 0
        assert await state_of(store, row.id) is State.READY

    async def test_limit_and_order(self, store: Store) -> None:
        rows = []
        for timeout in (30, 10, 20, 40):
            row = await running(store)
            await suspend(store, row, Signal("go"), timeout_ms=timeout)
            rows.append(row)
        no_timeout = await running(store)
        await suspend(store, no_timeout, Signal("go"))
        assert await store.suspensions_expire(SuspensionsExpire(limit=2, now_ms=T0 + 35)) == 2
        states = [await state_of(store, r.id) for r in rows]
        assert states == [State.SUSPENDED, State.FAILED, State.FAILED, State.SUSPENDED]
        assert await store.suspensions_expire(SuspensionsExpire(limit=2, now_ms=T0 + 35)) == 1
        assert await store.suspensions_expire(SuspensionsExpire(now_ms=T0 + HOUR)) == 1
        assert await state_of(store, no_timeout.id) is State.SUSPENDED

    async def test_timeouts_wake_waiters(self, store: Store) -> None:
        now = await store.now_ms()
        ends = await running(store, now)
        await suspend(store, ends, Signal("go"), timeout_ms=10, now=now)
        await wait_until_woken(
            store.wait_for_finish,
            lambda: store.suspensions_expire(SuspensionsExpire(now_ms=now + 10)),
        )
        resumes = await running(store, now)
        await suspend(store, resumes, Signal("go"), timeout_ms=10, on_timeout=OnTimeout.RESUME)
        await wait_until_woken(
            store.wait_for_work,
            lambda: store.suspensions_expire(SuspensionsExpire(now_ms=now + 20)),
        )
