"""Conformance: waitpoints (`waitpoint_create`, `waitpoint_get`, `waitpoints_list`) and signals
(`signal_deliver`)."""

from __future__ import annotations

import pytest

from ..._conditions import Count, Signal
from ..._states import State
from ...errors import LeaseLost
from ...store.contract import Store
from ...store.contract.signals import (
    DeliverOutcome,
    DeliverStatus,
    SignalRow,
    SuspendStatus,
    SuspensionsExpire,
    WaitpointCreate,
    WaitpointInfo,
    WaitpointRow,
    WaitpointsList,
)
from ...store.contract.tasks import (
    TaskCancel,
)
from ._util import (
    ERR,
    T0,
    add,
    claim_one,
    finish,
    get,
    state_of,
)
from ._waiting import (
    HOUR,
    deliver,
    detailed,
    names,
    running,
    suspend,
    waitpoint,
    wp_id,
)


class WaitpointCreateConformance:
    """`waitpoint_create` (and reading it back with `waitpoint_get`)."""

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


class SignalDeliverConformance:
    """`signal_deliver`: rejections, duplicates, buffering."""

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
        # Consumed now, and the waitpoint closed: the next wait needs a new waitpoint.
        wp2 = await waitpoint(store, row, "second")
        assert await suspend(store, row, Signal("go", wp2), now=T0 + 3) is SuspendStatus.SUSPENDED
        assert await store.resume_signals(row.id) == []
        assert (await deliver(store, wp, "go", now=T0 + 4)).status is DeliverStatus.CLOSED
        out = await deliver(store, wp2, "go", b'"late"', now=T0 + 4)
        assert out.resumed
        assert await store.resume_signals(row.id) == [SignalRow(wp2.id, "go", b'"late"', T0 + 4)]
        assert [s for s, _ in await detailed(store, row.id)] == [
            State.READY,
            State.RUNNING,
            State.SUSPENDED,
            State.READY,
        ]

    async def test_signals_after_a_resume_are_closed_out(self, store: Store) -> None:
        row = await running(store)
        wp = await waitpoint(store, row)
        await suspend(store, row, Signal("go", wp))
        assert (await deliver(store, wp, "go")).resumed
        out = await deliver(store, wp, "more")  # one-shot: its suspension has resumed
        assert out == DeliverOutcome(
            DeliverStatus.CLOSED, "waitpoint closed: its suspension resumed", False
        )
        assert await names(store, row.id) == ["go"]
        again = await claim_one(store)
        assert await names(store, row.id) == ["go"]
        # Nothing was kept for a later suspension: it waits for signals of its own.
        wp2 = await waitpoint(store, again, "next")
        assert await suspend(store, again, Signal("more", wp2)) is SuspendStatus.SUSPENDED
        assert (await deliver(store, wp2, "more")).resumed
        assert await names(store, row.id) == ["more"]


class WaitpointsListConformance:
    """`waitpoints_list`: a task's waitpoints, oldest first, with state and signals."""

    async def test_lists_state_and_signals(self, store: Store) -> None:
        row = await running(store, max_attempts=1)
        a = await waitpoint(store, row, "approval", expires_in=HOUR, now=T0 + 1)
        b = await waitpoint(store, row, "second", expires_in=1_000, now=T0 + 2)
        other = await running(store)
        await waitpoint(store, other, "approval")
        listed = await store.waitpoints_list(WaitpointsList(row.id))
        assert listed == [
            WaitpointInfo(a.id, row.id, "approval", T0 + 1, T0 + 1 + HOUR, None, None, ()),
            WaitpointInfo(b.id, row.id, "second", T0 + 2, T0 + 1_002, None, None, ()),
        ]
        assert [w.state(T0 + 10) for w in listed] == ["pending", "pending"]
        assert listed[1].state(T0 + 1_002) == "expired"
        # Bytes that are not text, long enough for a multi-byte length on every encoding.
        payload = b"\x00\xff" + bytes(range(256)) * 2
        assert await suspend(store, row, Signal("go", a), now=T0 + 3) is SuspendStatus.SUSPENDED
        assert (await deliver(store, a, "go", payload, now=T0 + 4)).resumed
        got_a, got_b = await store.waitpoints_list(WaitpointsList(row.id))
        assert got_a.signals == (SignalRow(a.id, "go", payload, T0 + 4),)
        assert got_a.closed_reason == "resumed"
        assert got_a.closed_at_ms in (None, T0 + 4)  # Redis does not record the instant
        assert got_a.state(T0 + 10) == "delivered"
        assert (got_b.signals, got_b.closed_reason) == ((), None)  # not named: still open
        assert got_b.state(T0 + 10) == "pending"

    async def test_a_buffered_signal_is_listed_before_any_suspension(self, store: Store) -> None:
        row = await running(store)
        wp = await waitpoint(store, row, "k")
        out = await deliver(store, wp, "early", b"1", now=T0 + 5)
        assert (out.status, out.resumed) == (DeliverStatus.ACCEPTED, False)
        (got,) = await store.waitpoints_list(WaitpointsList(row.id))
        assert got.signals == (SignalRow(wp.id, "early", b"1", T0 + 5),)
        assert (got.closed_reason, got.state(T0 + 6)) == (None, "delivered")

    async def test_a_timed_out_suspension_closes_its_waitpoint(self, store: Store) -> None:
        row = await running(store)
        wp = await waitpoint(store, row, "k")
        await suspend(store, row, Signal("go", wp), timeout_ms=1_000)
        assert await store.suspensions_expire(SuspensionsExpire(now_ms=T0 + 1_000)) == 1
        (got,) = await store.waitpoints_list(WaitpointsList(row.id))
        assert (got.closed_reason, got.signals, got.state(T0 + 1_001)) == (
            "timed out",
            (),
            "closed",
        )
        assert got.closed_at_ms in (None, T0 + 1_000)

    async def test_unknown_task_and_limit(self, store: Store) -> None:
        assert await store.waitpoints_list(WaitpointsList("no-such-task")) == []
        row = await running(store)
        first = await waitpoint(store, row, "b", now=T0 + 1)
        await waitpoint(store, row, "a", now=T0 + 2)
        assert [w.id for w in await store.waitpoints_list(WaitpointsList(row.id, 1))] == [first.id]
        assert await store.waitpoints_list(WaitpointsList(row.id, 0)) == []
