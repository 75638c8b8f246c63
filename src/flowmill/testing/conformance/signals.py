"""Conformance: waitpoints, signals, suspend/resume, suspension timeouts, output frames,
progress events and meta values (the `SignalsStore` contract)."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import Counter
from typing import Any

import pytest

from ..._conditions import Condition, Count, Signal, encode_condition
from ..._states import Phase, State
from ...errors import FrameTooLarge, LeaseLost, PayloadError, TaskNotFound
from ...store.contract import Store
from ...store.contract.signals import (
    MAX_FRAME_BYTES,
    DeliverOutcome,
    DeliverStatus,
    FrameAppend,
    FrameRef,
    FramesRead,
    OnTimeout,
    SignalDeliver,
    SignalRow,
    SuspendStatus,
    SuspensionsExpire,
    TaskSuspend,
    WaitpointCreate,
    WaitpointRow,
)
from ...store.contract.tasks import (
    ClaimedRow,
    HooksClaim,
    LeaseRef,
    TaskCancel,
    TaskProgress,
    TasksInsert,
    TaskWaitChildren,
)
from ._util import (
    ERR,
    KIND,
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
from .wake import wait_until_woken

HOUR = 3_600_000
_PREFIX = os.urandom(4).hex()
_COUNTER = itertools.count()


def wp_id() -> str:
    return f"wp-{_PREFIX}-{next(_COUNTER):08d}"


async def running(store: Store, now: int = T0, **kw: Any) -> ClaimedRow:
    """A fresh task, claimed (the only claimable one of its kind)."""
    task_id = await add(store, now, **kw)
    row = await claim_one(store, now=now, kinds=(str(kw.get("kind", KIND)),))
    assert row.id == task_id
    return row


async def waitpoint(
    store: Store, row: ClaimedRow, key: str = "k", *, expires_in: int = HOUR, now: int = T0
) -> WaitpointRow:
    return await store.waitpoint_create(
        WaitpointCreate(row.id, row.lease_epoch, wp_id(), key, expires_in, now)
    )


async def suspend(
    store: Store,
    row: ClaimedRow,
    condition: Condition,
    *,
    timeout_ms: int | None = None,
    on_timeout: OnTimeout = OnTimeout.FAIL,
    now: int = T0,
) -> SuspendStatus:
    return await store.task_suspend(
        TaskSuspend(
            row.id, row.lease_epoch, encode_condition(condition), timeout_ms, on_timeout, now
        )
    )


async def deliver(
    store: Store,
    wp: WaitpointRow | str,
    name: str,
    payload: bytes = b"null",
    *,
    key: str | None = None,
    now: int = T0,
) -> DeliverOutcome:
    wid = wp if isinstance(wp, str) else wp.id
    return await store.signal_deliver(SignalDeliver(wid, name, payload, key, now))


async def names(store: Store, task_id: str) -> list[str]:
    return [s.name for s in await store.resume_signals(task_id)]


async def detailed(store: Store, task_id: str) -> list[tuple[State, str | None]]:
    return [(e.state, e.detail) for e in await all_events(store) if e.task_id == task_id]


async def append(
    store: Store, row: ClaimedRow, payload: bytes = b"x", *, frame_type: str = "log", **kw: Any
) -> FrameRef:
    return await store.frames_append(
        FrameAppend(row.id, row.lease_epoch, frame_type, payload, kw.get("metadata"), T0)
    )


class WaitpointConformance:
    """waitpoint_create / waitpoint_get: fenced, idempotent per (task, key)."""

    async def test_create_and_get(self, store: Store) -> None:
        row = await running(store)
        wid = wp_id()
        wp = await store.waitpoint_create(
            WaitpointCreate(row.id, row.lease_epoch, wid, "approval", 60_000, T0 + 5)
        )
        assert wp == WaitpointRow(wid, row.id, "approval", T0 + 60_005, T0 + 5)
        assert await store.waitpoint_get(wid) == wp
        assert await store.waitpoint_get("wp-no-such") is None

    async def test_the_same_key_returns_the_existing_waitpoint(self, store: Store) -> None:
        row = await running(store)
        first = await waitpoint(store, row, "approval")
        again = await store.waitpoint_create(
            WaitpointCreate(row.id, row.lease_epoch, wp_id(), "approval", 5 * HOUR, T0 + 99)
        )
        assert again == first
        other = await waitpoint(store, row, "second")
        assert other.id != first.id
        # Keys belong to one task: another task's "approval" is its own waitpoint.
        row2 = await running(store)
        theirs = await waitpoint(store, row2, "approval")
        assert theirs.id != first.id and theirs.task_id == row2.id

    async def test_create_is_fenced(self, store: Store) -> None:
        task_id = await add(store)
        first = await claim_one(store)
        await finish(store, task_id, first.lease_epoch, State.READY, error=ERR)
        second = await claim_one(store)
        wid = wp_id()
        with pytest.raises(LeaseLost):
            await store.waitpoint_create(
                WaitpointCreate(task_id, first.lease_epoch, wid, "k", HOUR, T0)
            )
        assert await store.waitpoint_get(wid) is None
        await finish(store, task_id, second.lease_epoch, State.COMPLETED, result=b"1")
        with pytest.raises(LeaseLost):  # the right epoch, but no longer running
            await store.waitpoint_create(
                WaitpointCreate(task_id, second.lease_epoch, wid, "k", HOUR, T0)
            )
        with pytest.raises(LeaseLost):
            await store.waitpoint_create(WaitpointCreate("no-such-task", 1, wid, "k", HOUR, T0))
        assert await store.waitpoint_get(wid) is None


class SignalConformance:
    """signal_deliver: rejected, duplicate, buffered, resuming."""

    async def test_unknown_waitpoint_is_rejected(self, store: Store) -> None:
        out = await deliver(store, "wp-no-such", "go")
        assert out == DeliverOutcome(DeliverStatus.REJECTED, "unknown waitpoint", False)

    async def test_expired_waitpoint_is_rejected_on_the_store_clock(self, store: Store) -> None:
        row = await running(store)
        wp = await waitpoint(store, row, expires_in=1_000)
        assert await suspend(store, row, Signal("go", wp)) is SuspendStatus.SUSPENDED
        out = await deliver(store, wp, "go", now=T0 + 1_000)
        assert out == DeliverOutcome(DeliverStatus.REJECTED, "waitpoint expired", False)
        assert await state_of(store, row.id) is State.SUSPENDED
        out = await deliver(store, wp, "go", now=T0 + 999)
        assert (out.status, out.resumed) == (DeliverStatus.ACCEPTED, True)

    async def test_a_signal_to_an_ended_task_is_rejected(self, store: Store) -> None:
        row = await running(store)
        wp = await waitpoint(store, row)
        await finish(store, row.id, row.lease_epoch, State.COMPLETED, result=b"1")
        out = await deliver(store, wp, "go")
        assert out == DeliverOutcome(
            DeliverStatus.REJECTED, "task already ended (completed)", False
        )
        assert await state_of(store, row.id) is State.COMPLETED
        assert await store.resume_signals(row.id) == []

    async def test_a_suspended_task_cancelled_rejects_signals(self, store: Store) -> None:
        row = await running(store)
        wp = await waitpoint(store, row)
        await suspend(store, row, Signal("go", wp), timeout_ms=1_000)
        cancelled = await store.task_cancel(TaskCancel(row.id, "operator", T0 + 1))
        assert cancelled.state is State.CANCELLED
        out = await deliver(store, wp, "go", now=T0 + 2)
        assert (out.status, out.reason) == (
            DeliverStatus.REJECTED,
            "task already ended (cancelled)",
        )
        # The cancel resolved the suspension: its timeout does nothing any more.
        assert await store.suspensions_expire(SuspensionsExpire(now_ms=T0 + 5_000)) == 0
        assert await state_of(store, row.id) is State.CANCELLED

    async def test_duplicates_by_idempotency_key(self, store: Store) -> None:
        row = await running(store)
        wp = await waitpoint(store, row, "a")
        wp2 = await waitpoint(store, row, "b")
        assert await suspend(store, row, Count(3, Signal("vote"))) is SuspendStatus.SUSPENDED
        first = await deliver(store, wp, "vote", b'{"v": 1}', key="ana")
        assert first == DeliverOutcome(DeliverStatus.ACCEPTED, None, False)
        dup = await deliver(store, wp, "vote", b'{"v": 2}', key="ana")
        assert dup == DeliverOutcome(DeliverStatus.DUPLICATE, None, False)
        # The key is per waitpoint; without a key nothing is a duplicate.
        assert (await deliver(store, wp2, "vote", key="ana")).status is DeliverStatus.ACCEPTED
        assert await state_of(store, row.id) is State.SUSPENDED
        last = await deliver(store, wp, "vote", b'{"v": 3}')
        assert (last.status, last.resumed) == (DeliverStatus.ACCEPTED, True)
        got = await store.resume_signals(row.id)
        assert [(s.waitpoint_id, s.payload) for s in got] == [
            (wp.id, b'{"v": 1}'),
            (wp2.id, b"null"),
            (wp.id, b'{"v": 3}'),
        ]
        # A repeat after the task ended (the sender lost the reply) is still a duplicate.
        again = await claim_one(store)
        await finish(store, row.id, again.lease_epoch, State.COMPLETED, result=b"1")
        assert (await deliver(store, wp, "vote", key="ana")).status is DeliverStatus.DUPLICATE
        assert (await deliver(store, wp, "vote", key="bob")).status is DeliverStatus.REJECTED

    async def test_signals_are_buffered_while_the_task_is_not_suspended(self, store: Store) -> None:
        row = await running(store)
        wp = await waitpoint(store, row)
        out = await deliver(store, wp, "go", b'"early"', now=T0 + 1)
        assert out == DeliverOutcome(DeliverStatus.ACCEPTED, None, False)
        assert await store.resume_signals(row.id) == []  # received, not yet consumed
        status = await suspend(store, row, Signal("go", wp), now=T0 + 2)
        assert status is SuspendStatus.ALREADY_SATISFIED
        # Nothing moved: the lease is kept and the attempt goes on.
        rec = await get(store, row.id)
        assert (rec.state, rec.lease_epoch, rec.lease_owner) == (
            State.RUNNING,
            row.lease_epoch,
            "worker-1",
        )
        assert rec.attempts == 1
        assert await store.resume_signals(row.id) == [SignalRow(wp.id, "go", b'"early"', T0 + 1)]
        # Consumed now: the same condition waits for a new signal.
        assert await suspend(store, row, Signal("go", wp), now=T0 + 3) is SuspendStatus.SUSPENDED
        assert await store.resume_signals(row.id) == []
        out = await deliver(store, wp, "go", b'"late"', now=T0 + 4)
        assert out.resumed
        assert await store.resume_signals(row.id) == [SignalRow(wp.id, "go", b'"late"', T0 + 4)]
        assert [s for s, _ in await detailed(store, row.id)] == [
            State.READY,
            State.RUNNING,
            State.SUSPENDED,
            State.READY,
        ]

    async def test_signals_after_a_resume_wait_for_the_next_suspension(self, store: Store) -> None:
        row = await running(store)
        wp = await waitpoint(store, row)
        await suspend(store, row, Signal("go", wp))
        assert (await deliver(store, wp, "go")).resumed
        out = await deliver(store, wp, "more")  # the task is ready: buffered
        assert (out.status, out.resumed) == (DeliverStatus.ACCEPTED, False)
        assert await names(store, row.id) == ["go"]
        again = await claim_one(store)
        assert await names(store, row.id) == ["go"]
        status = await suspend(store, again, Signal("more", wp))
        assert status is SuspendStatus.ALREADY_SATISFIED
        assert await names(store, row.id) == ["more"]


class SuspendConformance:
    """task_suspend: fenced; the lease and the attempt are given back; resumed once."""

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
        assert (second.status, second.resumed) == (DeliverStatus.ACCEPTED, False)
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
        wp = await waitpoint(store, row)
        for i in range(3):
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
        assert {o.status for o in outs} == {DeliverStatus.ACCEPTED}
        resumed = Counter(w.task_id for (w, _), o in zip(sends, outs, strict=True) if o.resumed)
        assert len(resumed) == n and set(resumed.values()) == {1}
        events = Counter(e.task_id for e in await all_events(store) if e.detail == "resumed")
        assert len(events) == n and set(events.values()) == {1}
        assert len(await claim(store, limit=2 * n)) == n


class SuspendTimeoutConformance:
    """suspensions_expire: each on_timeout behaviour, at an explicit now."""

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
        # The signal received before is still there for the next suspension.
        assert await suspend(store, again, Signal("other", wp)) is SuspendStatus.ALREADY_SATISFIED
        assert await names(store, row.id) == ["other"]
        # A signal now goes nowhere: the timed-out suspension does not resume again.
        out = await deliver(store, wp, "go", now=T0 + 70)
        assert (out.status, out.resumed) == (DeliverStatus.ACCEPTED, False)
        assert await state_of(store, row.id) is State.RUNNING

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


class FramesConformance:
    """frames_append / frames_read / wait_for_frames: per-attempt sequences, fenced."""

    async def test_append_and_read(self, store: Store) -> None:
        row = await running(store)
        refs = [
            await store.frames_append(
                FrameAppend(row.id, row.lease_epoch, "token", f"f{i}".encode(), None, T0 + i)
            )
            for i in range(5)
        ]
        assert refs == [FrameRef(1, i) for i in range(1, 6)]
        meta = await append(store, row, b"\x00\xff", frame_type="bin", metadata=b'{"a": 1}')
        assert meta == FrameRef(1, 6)
        page = await store.frames_read(FramesRead(row.id))
        assert (page.attempt, page.live) == (1, True)
        assert [(f.seq, f.frame_type, f.payload, f.at_ms) for f in page.frames[:5]] == [
            (i + 1, "token", f"f{i}".encode(), T0 + i) for i in range(5)
        ]
        last = page.frames[5]
        assert (last.frame_type, last.payload, last.metadata) == ("bin", b"\x00\xff", b'{"a": 1}')
        assert page.frames[0].metadata is None
        # Paging: after a seq, up to a limit.
        part = await store.frames_read(FramesRead(row.id, 1, after=2, limit=2))
        assert [f.seq for f in part.frames] == [3, 4]
        rest = await store.frames_read(FramesRead(row.id, None, after=4, limit=100))
        assert [f.seq for f in rest.frames] == [5, 6]
        assert (await store.frames_read(FramesRead(row.id, after=6))).frames == []
        await finish(store, row.id, row.lease_epoch, State.COMPLETED, result=b"1")
        done = await store.frames_read(FramesRead(row.id))
        assert (done.attempt, done.live, len(done.frames)) == (1, False, 6)

    async def test_concurrent_appends_get_gapless_sequence_numbers(self, store: Store) -> None:
        row = await running(store)
        refs = await asyncio.gather(*(append(store, row, str(i).encode()) for i in range(200)))
        assert sorted(r.seq for r in refs) == list(range(1, 201))
        assert {r.attempt for r in refs} == {1}
        by_seq = {r.seq: str(i).encode() for i, r in enumerate(refs)}
        frames = []
        after = 0
        while page := (await store.frames_read(FramesRead(row.id, after=after, limit=64))).frames:
            frames.extend(page)
            after = page[-1].seq
        assert [f.seq for f in frames] == list(range(1, 201))
        assert [f.payload for f in frames] == [by_seq[s] for s in range(1, 201)]

    async def test_append_is_fenced(self, store: Store) -> None:
        task_id = await add(store)
        first = await claim_one(store)
        await finish(store, task_id, first.lease_epoch, State.READY, error=ERR)
        second = await claim_one(store)
        with pytest.raises(LeaseLost):
            await append(store, first)
        assert (await store.frames_read(FramesRead(task_id))).frames == []
        await finish(store, task_id, second.lease_epoch, State.COMPLETED, result=b"1")
        with pytest.raises(LeaseLost):
            await append(store, second)
        with pytest.raises(LeaseLost):
            await store.frames_append(FrameAppend("no-such-task", 1, "log", b"x"))
        page = await store.frames_read(FramesRead(task_id))
        assert (page.attempt, page.frames, page.live) == (2, [], False)

    async def test_frame_too_large(self, store: Store) -> None:
        row = await running(store)
        with pytest.raises(FrameTooLarge) as info:
            await append(store, row, b"x" * (MAX_FRAME_BYTES + 1))
        assert isinstance(info.value, PayloadError)
        assert (info.value.size, info.value.limit) == (MAX_FRAME_BYTES + 1, MAX_FRAME_BYTES)
        assert (await store.frames_read(FramesRead(row.id))).frames == []
        assert await append(store, row, b"x" * MAX_FRAME_BYTES) == FrameRef(1, 1)

    async def test_attempts_and_the_latest_one(self, store: Store) -> None:
        task_id = await add(store)
        empty = await store.frames_read(FramesRead(task_id))
        assert (empty.attempt, empty.frames, empty.live) == (None, [], False)
        first = await claim_one(store)
        assert (await store.frames_read(FramesRead(task_id))).attempt == 1
        await append(store, first, b"a1")
        await append(store, first, b"a2")
        await finish(store, task_id, first.lease_epoch, State.READY, error=ERR)
        second = await claim_one(store)
        # The new attempt has no frames yet: the latest attempt with frames is read.
        page = await store.frames_read(FramesRead(task_id))
        assert (page.attempt, [f.payload for f in page.frames], page.live) == (
            1,
            [b"a1", b"a2"],
            False,
        )
        assert await append(store, second, b"b1") == FrameRef(2, 1)
        page = await store.frames_read(FramesRead(task_id))
        assert (page.attempt, [f.payload for f in page.frames], page.live) == (2, [b"b1"], True)
        old = await store.frames_read(FramesRead(task_id, attempt=1))
        assert (old.attempt, len(old.frames), old.live) == (1, 2, False)
        none = await store.frames_read(FramesRead(task_id, attempt=7))
        assert (none.attempt, none.frames, none.live) == (7, [], False)
        with pytest.raises(TaskNotFound):
            await store.frames_read(FramesRead("no-such-task"))

    async def test_a_suspended_attempt_goes_on_after_the_resume(self, store: Store) -> None:
        row = await running(store)
        wp = await waitpoint(store, row)
        await append(store, row, b"before")
        await suspend(store, row, Signal("go", wp))
        page = await store.frames_read(FramesRead(row.id))
        assert (page.attempt, page.live) == (1, False)
        await deliver(store, wp, "go")
        again = await claim_one(store)
        assert await append(store, again, b"after") == FrameRef(1, 2)
        page = await store.frames_read(FramesRead(row.id))
        assert (page.attempt, [f.payload for f in page.frames], page.live) == (
            1,
            [b"before", b"after"],
            True,
        )

    async def test_wait_for_frames(self, store: Store) -> None:
        now = await store.now_ms()
        row = await running(store, now)
        await wait_until_woken(store.wait_for_frames, lambda: append(store, row))
        for _ in range(2):
            await asyncio.wait_for(store.wait_for_frames(0.01), 5.0)


class ProgressEventConformance:
    """task_progress records a `running` event that says how far the task got."""

    async def test_progress_writes_an_event(self, store: Store) -> None:
        row = await running(store)
        await store.task_progress(TaskProgress(row.id, row.lease_epoch, 40.0, "loading", T0 + 1))
        await store.task_progress(TaskProgress(row.id, row.lease_epoch, 62.5, None, T0 + 2))
        events = [e for e in await all_events(store) if e.task_id == row.id]
        assert [(e.state, e.detail, e.at_ms) for e in events[2:]] == [
            (State.RUNNING, "progress 40%: loading", T0 + 1),
            (State.RUNNING, "progress 62.5%", T0 + 2),
        ]
        with pytest.raises(LeaseLost):
            await store.task_progress(TaskProgress(row.id, row.lease_epoch + 1, 50.0))
        assert len([e for e in await all_events(store) if e.task_id == row.id]) == 4


class MetaConformance:
    """meta_get_or_set: the first value stored wins, even under a race."""

    async def test_get_or_set(self, store: Store) -> None:
        assert await store.meta_get_or_set("conformance-a", "one") == "one"
        assert await store.meta_get_or_set("conformance-a", "two") == "one"
        assert await store.meta_get_or_set("conformance-b", "ключ 🚀") == "ключ 🚀"

    async def test_race(self, store: Store) -> None:
        got = await asyncio.gather(
            *(store.meta_get_or_set("conformance-race", f"v{i}") for i in range(20))
        )
        assert len(set(got)) == 1 and got[0] in {f"v{i}" for i in range(20)}
        assert await store.meta_get_or_set("conformance-race", "late") == got[0]


class SignalsConformance(
    WaitpointConformance,
    SignalConformance,
    SuspendConformance,
    SuspendTimeoutConformance,
    FramesConformance,
    ProgressEventConformance,
    MetaConformance,
):
    """Every behaviour of the `SignalsStore` contract."""
