"""The reaper's interval (issue 13 item 8): a worker option with a default that follows the
lease TTL, kept exactly by the maintenance loop, so a dead worker's lease is reclaimed
within TTL + one reap interval of its last renewal. Driven by the manual clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

import flowmill as fm
from flowmill.store._front import StoreEvent
from flowmill.store.contract.tasks import TasksClaim

from ..conftest import eventually


@pytest.mark.parametrize(
    ("ttl_s", "reap_s"),
    [(30, 10.0), (3, 1.0), (6, 2.0), (1, 1.0), (300, 10.0)],
)
def test_the_default_reap_interval_follows_the_lease_ttl(
    app: fm.App, ttl_s: int, reap_s: float
) -> None:
    w = app.worker(lease_ttl=timedelta(seconds=ttl_s))
    assert w.maintenance.reap_s == reap_s


def test_an_explicit_reap_interval_is_kept_and_must_be_positive(app: fm.App) -> None:
    w = app.worker(reap_interval=timedelta(seconds=45), lease_ttl=timedelta(seconds=5))
    assert w.maintenance.reap_s == 45.0
    for bad in (timedelta(0), timedelta(seconds=-1)):
        with pytest.raises(fm.ConfigurationError, match="reap_interval must be > 0"):
            app.worker(reap_interval=bad)


class _Loop:
    """A worker's maintenance loop alone, stepped by the manual clock one second at a time."""

    def __init__(self, app: fm.App, clock: fm.ManualClock, worker: fm.Worker) -> None:
        self.app, self.clock, self.worker = app, clock, worker
        self.full_passes: list[float] = []  # clock seconds at each leases_expired call
        self.start = clock.now

    def seen(self, event: StoreEvent) -> None:
        if event.operation == "leases_expired":
            self.full_passes.append((self.clock.now - self.start).total_seconds())

    async def parked(self) -> None:
        await eventually(lambda: _true(self.clock.sleepers() == 1), what="the loop to sleep")

    async def step(self) -> None:
        await self.clock.advance(timedelta(seconds=1))
        await self.parked()


async def _true(value: bool) -> bool:
    return value


@pytest.fixture
async def loop(app: fm.App, clock: fm.ManualClock) -> AsyncIterator[_Loop]:
    await app.open()
    w = app.worker(
        lease_ttl=timedelta(seconds=5),
        promote_interval=timedelta(seconds=2),
        reap_interval=timedelta(seconds=10),
    )
    state = _Loop(app, clock, w)
    unsubscribe = app.store.subscribe(state.seen)
    task = asyncio.create_task(w.maintenance.loop())
    try:
        await state.parked()
        yield state
    finally:
        unsubscribe()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_full_passes_come_every_reap_interval(loop: _Loop) -> None:
    for _ in range(35):
        await loop.step()
    assert loop.full_passes == [0.0, 10.0, 20.0, 30.0]


async def test_a_dead_workers_lease_is_reclaimed_within_ttl_plus_one_interval(
    app: fm.App, loop: _Loop
) -> None:
    @app.task(name="job")
    async def job(n: int) -> None: ...

    h = await app.submit(job, 1)
    for _ in range(8):
        await loop.step()
    # A worker claims it at t=8 s with a 5 s lease, then dies: the lease expires at 13 s.
    [row] = await app.store.tasks_claim(
        TasksClaim("dead-worker", ["default"], ["job"], 1, 5_000, loop.clock.store_now())
    )
    expires = (row.lease_expires_at_ms - loop.clock.store_now()) / 1000 + 8  # type: ignore[operator]
    assert expires == 13.0
    reclaimed_at = None
    for t in range(9, 40):
        await loop.step()
        if (await app.get(h.id)).state is fm.State.READY:
            reclaimed_at = t
            break
    assert reclaimed_at is not None
    assert expires < reclaimed_at <= expires + 10  # within one reap interval of the expiry
    info = await app.get(h.id)
    assert info.error is not None and info.error.category == "lease_expired"
