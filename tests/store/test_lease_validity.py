"""The lease rule (issue 13 item 8), on every backend: a lease is valid until it is
reclaimed; the epoch fences every write after.

A worker whose lease ran past its TTL (a long GC pause, a slow renewal) keeps it while no
reaper has taken the task back: its renewals, progress, frames and its outcome are
accepted. Once the reaper reclaimed the task, every write of that epoch is `LeaseLost`, and
a renewal in time beats a reaper that listed the lease a moment before. Time is injected
through each operation's `now_ms`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from flowmill._states import State
from flowmill.errors import LeaseLost
from flowmill.store import open_store
from flowmill.store.contract import Store
from flowmill.store.contract.signals import FrameAppend
from flowmill.store.contract.tasks import (
    ClaimedRow,
    ErrorInfo,
    FinishStatus,
    LeaseRef,
    LeasesExpired,
    LeasesRenew,
    TaskProgress,
    TaskWaitChildren,
)
from flowmill.testing.conformance._util import T0, add, claim_one, finish, get

TTL = 1_000
LATE = T0 + 60_000  # a minute past the TTL: long expired, but nobody reaped yet
EXPIRED = ErrorInfo("LeaseExpired", "the lease expired before the attempt ended", "lease_expired")


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = open_store(db_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def _claimed(store: Store, now: int = T0) -> ClaimedRow:
    await add(store, now)
    return await claim_one(store, now=now, ttl=TTL)


async def _reap(store: Store, now: int) -> list[str]:
    """What the worker's reaper does: list expired leases, then finish them (fenced)."""
    expired = await store.leases_expired(LeasesExpired(now_ms=now))
    reaped = []
    for e in expired:
        out = await finish(
            store, e.task_id, e.epoch, State.READY, now=now, error=EXPIRED, expired_lease=True
        )
        if out.status is FinishStatus.APPLIED:
            reaped.append(e.task_id)
    return reaped


async def test_a_lease_past_its_ttl_accepts_every_write_until_reclaimed(store: Store) -> None:
    row = await _claimed(store)
    ref = LeaseRef(row.id, row.lease_epoch)
    [out] = await store.leases_renew(LeasesRenew([ref], TTL, LATE))
    assert (out.held, out.expires_at_ms) == (True, LATE + TTL)
    await store.task_progress(TaskProgress(row.id, row.lease_epoch, 50.0, "late", LATE + 1))
    await store.frames_append(FrameAppend(row.id, row.lease_epoch, "log", b"x", None, LATE + 2))
    done = await finish(store, row.id, row.lease_epoch, State.COMPLETED, now=LATE + 3, result=b"1")
    assert (done.status, done.state) == (FinishStatus.APPLIED, State.COMPLETED)
    rec = await get(store, row.id)
    assert (rec.state, rec.result, rec.progress_pct, rec.attempts) == (
        State.COMPLETED,
        b"1",
        50.0,
        1,
    )
    assert await _reap(store, LATE + 4) == []


@pytest.mark.parametrize("target", [State.COMPLETED, State.FAILED, State.READY])
async def test_a_finish_past_the_ttl_without_a_renewal_is_accepted(
    store: Store, target: State
) -> None:
    row = await _claimed(store)
    assert [e.task_id for e in await store.leases_expired(LeasesExpired(now_ms=LATE))] == [row.id]
    error = None if target is State.COMPLETED else ErrorInfo("E", "m", "handler_error")
    out = await finish(store, row.id, row.lease_epoch, target, now=LATE, error=error)
    assert (out.status, out.state) == (FinishStatus.APPLIED, target)
    # The reaper that listed it a moment ago finds nothing left to reclaim.
    assert await _reap(store, LATE + 1) == []
    assert (await get(store, row.id)).state is target


async def test_after_the_reaper_reclaimed_every_write_of_the_epoch_is_lease_lost(
    store: Store,
) -> None:
    row = await _claimed(store)
    epoch = row.lease_epoch
    assert await _reap(store, T0 + TTL - 1) == []  # not expired yet: nothing reclaimed
    assert await _reap(store, LATE) == [row.id]
    [out] = await store.leases_renew(LeasesRenew([LeaseRef(row.id, epoch)], TTL, LATE + 1))
    assert out.held is False
    with pytest.raises(LeaseLost):
        await store.task_progress(TaskProgress(row.id, epoch, 1.0, None, LATE + 1))
    with pytest.raises(LeaseLost):
        await store.frames_append(FrameAppend(row.id, epoch, "log", b"x", None, LATE + 1))
    with pytest.raises(LeaseLost):
        await store.task_wait_children(TaskWaitChildren(row.id, epoch, b"null", LATE + 1))
    late = await finish(store, row.id, epoch, State.COMPLETED, now=LATE + 1, result=b"1")
    assert late.status is FinishStatus.LEASE_LOST
    rec = await get(store, row.id)
    assert (rec.state, rec.result, rec.lease_epoch) == (State.READY, None, epoch)
    assert rec.error == EXPIRED

    # The next claim takes a new epoch; the old one stays fenced, the new one writes.
    again = await claim_one(store, now=LATE + 2, ttl=TTL)
    assert again.lease_epoch == epoch + 1
    stale = await finish(store, row.id, epoch, State.COMPLETED, now=LATE + 3, result=b"1")
    assert stale.status is FinishStatus.LEASE_LOST
    fresh = await finish(store, row.id, again.lease_epoch, State.COMPLETED, now=LATE + 3)
    assert (fresh.status, fresh.state) == (FinishStatus.APPLIED, State.COMPLETED)


async def test_a_renewal_in_time_beats_a_reaper_that_listed_the_lease(store: Store) -> None:
    row = await _claimed(store)
    listed = await store.leases_expired(LeasesExpired(now_ms=LATE))
    assert [e.task_id for e in listed] == [row.id]
    # The worker renews between the reaper's listing and its finish...
    [out] = await store.leases_renew(LeasesRenew([LeaseRef(row.id, row.lease_epoch)], TTL, LATE))
    assert out.held
    # ...so the reaper's fenced finish no longer applies: the lease is not expired now.
    reaped = await finish(
        store, row.id, row.lease_epoch, State.READY, now=LATE, error=EXPIRED, expired_lease=True
    )
    assert reaped.status is FinishStatus.LEASE_LOST
    done = await finish(store, row.id, row.lease_epoch, State.COMPLETED, now=LATE + 1)
    assert (done.status, done.state) == (FinishStatus.APPLIED, State.COMPLETED)
