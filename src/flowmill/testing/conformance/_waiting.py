"""Helpers of the waitpoint, signal, suspension and frame conformance modules."""

from __future__ import annotations

import itertools
import os
from typing import Any

from ..._conditions import Condition, encode_condition
from ..._states import State
from ...store.contract import Store
from ...store.contract.signals import (
    DeliverOutcome,
    FrameAppend,
    FrameRef,
    OnTimeout,
    SignalDeliver,
    SuspendStatus,
    TaskSuspend,
    WaitpointCreate,
    WaitpointRow,
)
from ...store.contract.tasks import (
    ClaimedRow,
)
from ._util import (
    KIND,
    T0,
    add,
    all_events,
    claim_one,
)

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
