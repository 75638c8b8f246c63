"""Conformance: what a lease record says and which clock judges it (`tasks_claim` with
`start`, `leases_renew` with `start`, `leases_expired` on the store's clock, the reaper's
`tasks_finish` of an expired unstarted lease), and one-shot waitpoints (`signal_deliver`
to a closed waitpoint, `resume_signals` of the suspension that resumed)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

from ..._conditions import Signal
from ..._states import State
from ...store.contract import Store
from ...store.contract.signals import (
    DeliverOutcome,
    DeliverStatus,
    OnTimeout,
    SignalRow,
    SuspendStatus,
    SuspensionsExpire,
)
from ...store.contract.tasks import (
    ExpiredLease,
    FinishStatus,
    LeaseRef,
    LeasesExpired,
    LeasesRenew,
    TasksClaim,
)
from ._util import ERR, KIND, QUEUE, T0, TTL, add, claim_one, finish, get
from ._waiting import deliver, names, running, suspend, waitpoint

STEP_MS = 300_000  # a wall-clock step, as NTP or an operator makes one


async def _claim(store: Store, *, start: bool, now: int | None = T0, ttl: int = TTL) -> str:
    (row,) = await store.tasks_claim(TasksClaim("w", [QUEUE], [KIND], 1, ttl, now, start=start))
    return row.id


@contextmanager
def _wall_clock_stepped(by_ms: int) -> Iterator[None]:
    """This process's wall clock stepped by `by_ms` (its monotonic clock, as the kernel
    keeps it, unmoved)."""
    real_ns, real_s = time.time_ns, time.time

    def time_ns() -> int:
        return real_ns() + by_ms * 1_000_000

    def time_s() -> float:
        return real_s() + by_ms / 1000

    with mock.patch("time.time_ns", time_ns), mock.patch("time.time", time_s):
        yield


class TasksClaimStartConformance:
    """`tasks_claim(start=...)`: the lease record says whether the handler started."""

    async def test_a_claim_is_started_unless_it_is_a_prefetch(self, store: Store) -> None:
        started = await add(store)
        prefetched = await add(store)
        await _claim(store, start=True, ttl=100)
        await _claim(store, start=False, ttl=100)
        found = await store.leases_expired(LeasesExpired(now_ms=T0 + 101))
        assert [(e.task_id, e.attempt, e.started) for e in found] == [
            (started, 1, True),
            (prefetched, 1, False),
        ]


class LeasesRenewStartConformance:
    """`leases_renew(start=True)`: a prefetched lease is marked started before its handler."""

    async def test_a_renewal_with_start_marks_the_lease_started(self, store: Store) -> None:
        task_id = await add(store)
        row = await claim_one_unstarted(store)
        ref = LeaseRef(task_id, row)
        (out,) = await store.leases_renew(LeasesRenew([ref], 100, T0 + 1, start=True))
        assert out.held
        # A plain renewal later does not unmark it.
        await store.leases_renew(LeasesRenew([ref], 100, T0 + 2))
        (lease,) = await store.leases_expired(LeasesExpired(now_ms=T0 + 200))
        assert (lease.task_id, lease.started) == (task_id, True)

    async def test_a_lost_lease_is_not_marked(self, store: Store) -> None:
        task_id = await add(store)
        epoch = await claim_one_unstarted(store, ttl=100)
        await finish(
            store, task_id, epoch, State.READY, now=T0 + 200, release=True, expired_lease=True
        )
        (out,) = await store.leases_renew(
            LeasesRenew([LeaseRef(task_id, epoch)], 100, T0 + 201, start=True)
        )
        assert not out.held
        assert (await get(store, task_id)).state is State.READY


async def claim_one_unstarted(store: Store, *, ttl: int = TTL) -> int:
    """Claim the one ready task as a prefetch; its lease epoch."""
    (row,) = await store.tasks_claim(TasksClaim("w", [QUEUE], [KIND], 1, ttl, T0, start=False))
    return row.lease_epoch


class TasksFinishReapedUnstartedConformance:
    """The reaper's finish of an unstarted lease: back to ready, uncharged, fenced."""

    async def test_an_unstarted_reclaim_charges_no_attempt(self, store: Store) -> None:
        task_id = await add(store, max_attempts=1)
        epoch = await claim_one_unstarted(store, ttl=100)
        (lease,) = await store.leases_expired(LeasesExpired(now_ms=T0 + 101))
        assert lease == ExpiredLease(task_id, KIND, epoch, 1, 1, b"{}", "w", False, False)
        out = await finish(
            store, task_id, epoch, State.READY, now=T0 + 101, release=True, expired_lease=True
        )
        assert out.status is FinishStatus.APPLIED
        rec = await get(store, task_id)
        assert (rec.state, rec.attempts, rec.lease_owner) == (State.READY, 0, None)
        # The old holder is fenced; the next claim is attempt 1 again, at a new epoch.
        late = await finish(store, task_id, epoch, State.COMPLETED, now=T0 + 102, result=b"1")
        assert late.status is FinishStatus.LEASE_LOST
        again = await claim_one(store, now=T0 + 103)
        assert (again.attempt, again.lease_epoch) == (1, epoch + 1)

    async def test_a_started_reclaim_counts(self, store: Store) -> None:
        task_id = await add(store, max_attempts=1)
        row = await claim_one(store, ttl=100)
        (lease,) = await store.leases_expired(LeasesExpired(now_ms=T0 + 101))
        assert (lease.started, lease.attempt) == (True, 1)
        await finish(
            store,
            task_id,
            row.lease_epoch,
            State.DEAD_LETTERED,
            now=T0 + 101,
            error=ERR,
            expired_lease=True,
        )
        rec = await get(store, task_id)
        assert (rec.state, rec.attempts) == (State.DEAD_LETTERED, 1)


class LeasesExpiredClockConformance:
    """`leases_expired` on the store's own clock: a wall-clock step expires no lease."""

    async def test_a_wall_clock_step_forward_expires_no_lease(self, store: Store) -> None:
        now = await store.now_ms()
        await add(store, now=now)
        await _claim(store, start=True, now=None, ttl=60_000)
        with _wall_clock_stepped(+STEP_MS):
            assert await store.leases_expired(LeasesExpired()) == []

    async def test_a_lease_taken_behind_the_wall_clock_is_not_expired(self, store: Store) -> None:
        now = await store.now_ms()
        await add(store, now=now)
        with _wall_clock_stepped(-STEP_MS):
            task_id = await _claim(store, start=True, now=None, ttl=60_000)
            (renewed,) = await store.leases_renew(LeasesRenew([LeaseRef(task_id, 1)], 60_000, None))
            assert renewed.held
        assert await store.leases_expired(LeasesExpired()) == []
        # The reaper's finish is judged on the same clock: it does not apply.
        out = await finish(store, task_id, 1, State.READY, now=None, error=ERR, expired_lease=True)
        assert out.status is FinishStatus.LEASE_LOST
        assert (await get(store, task_id)).state is State.RUNNING


class SignalDeliverClosedConformance:
    """`signal_deliver` to a one-shot waitpoint whose suspension has resolved: CLOSED."""

    async def test_resumed_closes_the_waitpoint(self, store: Store) -> None:
        row = await running(store)
        wp = await waitpoint(store, row)
        await suspend(store, row, Signal("go", wp))
        assert (await deliver(store, wp, "go", key="k1")).resumed
        for name in ("go", "noise"):
            out = await deliver(store, wp, name, key=f"late-{name}")
            assert out == DeliverOutcome(
                DeliverStatus.CLOSED, "waitpoint closed: its suspension resumed", False
            )
        # A repeat of the signal that resumed it is still answered as a duplicate.
        assert (await deliver(store, wp, "go", key="k1")).status is DeliverStatus.DUPLICATE
        assert await names(store, row.id) == ["go"]

    async def test_already_satisfied_closes_the_waitpoint(self, store: Store) -> None:
        row = await running(store)
        wp = await waitpoint(store, row)
        await deliver(store, wp, "go")
        assert await suspend(store, row, Signal("go", wp)) is SuspendStatus.ALREADY_SATISFIED
        assert (await deliver(store, wp, "go")).status is DeliverStatus.CLOSED

    async def test_a_timeout_closes_the_waitpoint(self, store: Store) -> None:
        row = await running(store)
        wp = await waitpoint(store, row)
        await suspend(store, row, Signal("go", wp), timeout_ms=50, on_timeout=OnTimeout.RESUME)
        assert await store.suspensions_expire(SuspensionsExpire(now_ms=T0 + 50)) == 1
        out = await deliver(store, wp, "go", now=T0 + 60)
        assert out == DeliverOutcome(
            DeliverStatus.CLOSED, "waitpoint closed: its suspension timed out", False
        )
        assert (await get(store, row.id)).state is State.READY

    async def test_only_the_waitpoints_a_condition_names_close(self, store: Store) -> None:
        row = await running(store)
        first = await waitpoint(store, row, "first")
        later = await waitpoint(store, row, "later")
        await suspend(store, row, Signal("go", first))
        assert (await deliver(store, first, "go")).resumed
        out = await deliver(store, later, "done")  # not that suspension's: still open
        assert (out.status, out.resumed) == (DeliverStatus.ACCEPTED, False)

    async def test_a_condition_on_any_waitpoint_closes_them_all(self, store: Store) -> None:
        row = await running(store)
        a = await waitpoint(store, row, "a")
        b = await waitpoint(store, row, "b")
        await suspend(store, row, Signal("go"))
        assert (await deliver(store, a, "go")).resumed
        assert (await deliver(store, a, "go")).status is DeliverStatus.CLOSED
        assert (await deliver(store, b, "go")).status is DeliverStatus.CLOSED


class ResumeSignalsConformance:
    """`resume_signals`: exactly the signals of the suspension that resumed."""

    async def test_no_signal_leaks_into_a_later_suspension(self, store: Store) -> None:
        row = await running(store, max_attempts=1)
        first = await waitpoint(store, row, "first")
        await suspend(store, row, Signal("approved", first))
        await deliver(store, first, "noise", b"0", now=T0 + 1)
        assert (await deliver(store, first, "approved", b"1", now=T0 + 2)).resumed
        assert await store.resume_signals(row.id) == [
            SignalRow(first.id, "noise", b"0", T0 + 1),
            SignalRow(first.id, "approved", b"1", T0 + 2),
        ]
        again = await claim_one(store, now=T0 + 3)
        second = await waitpoint(store, again, "second")
        for i in range(4):  # late signals to the first waitpoint: none is recorded
            out = await deliver(store, first, "approved", b"9", now=T0 + 4 + i)
            assert out.status is DeliverStatus.CLOSED
        assert await suspend(store, again, Signal("done", second), now=T0 + 10) is (
            SuspendStatus.SUSPENDED
        )
        assert (await deliver(store, second, "done", b"2", now=T0 + 11)).resumed
        assert await store.resume_signals(row.id) == [SignalRow(second.id, "done", b"2", T0 + 11)]
