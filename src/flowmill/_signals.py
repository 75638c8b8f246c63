"""Waiting on people and systems: waitpoints, signals, suspend/resume, output frames.

A handler (or a claimed task) creates a waitpoint, hands its id and token to the outside
world, and suspends until signals satisfy a condition. The worker's slot and the task's
attempt are given back while it waits; when the condition holds the task runs again from
the top, with the signals in `ctx.resume_signals()`. Code before a suspend must therefore
tolerate running more than once: keep what it decided in the memo or in keys.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec

from ._clock import from_ms
from ._conditions import Condition, encode_condition
from ._runtime import Runtime
from ._tokens import TokenKeys, new_secret
from .errors import ConfigurationError, FrameTooLarge, PayloadTooLarge
from .store.contract.signals import (
    MAX_FRAME_BYTES,
    DeliverOutcome,
    DeliverStatus,
    FrameAppend,
    FrameRef,
    FramesRead,
    OnTimeout,
    SignalDeliver,
    SuspendStatus,
    TaskSuspend,
    WaitpointCreate,
)

SECRET_META_KEY = "waitpoint_secret"  # noqa: S105 - a meta key name
MAX_KEY = 200


@dataclass(frozen=True, slots=True)
class Waitpoint:
    """Give `id` and `token` to whoever should signal: `app.deliver_signal(id, token, ...)`."""

    id: str
    token: str
    key: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class ResumeSignal:
    """A signal that resumed the task: its name, waitpoint and (JSON) payload."""

    name: str
    waitpoint_id: str
    payload: Any
    at: datetime


@dataclass(frozen=True, slots=True)
class Frame:
    """One output frame of an attempt, as `app.frames()` yields it."""

    attempt: int
    seq: int
    frame_type: str
    payload: bytes
    metadata: Any
    at: datetime


def _check_key(what: str, key: str) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY:
        raise ConfigurationError(
            f"{what} must be a non-empty string of at most {MAX_KEY} characters, got {key!r}"
        )
    return key


async def token_keys(app: Runtime) -> TokenKeys:
    """FLOWMILL_SECRET (and _PREVIOUS), else the secret the database keeps for itself."""
    keys = TokenKeys.from_env()
    if keys is not None:
        return keys
    stored = await app.store.meta_get_or_set(SECRET_META_KEY, new_secret().decode())
    found = TokenKeys.from_env(stored=stored.encode())
    assert found is not None
    return found


class Fenced:
    """The signal and frame operations of one attempt (a Context or a ClaimedTask)."""

    def __init__(self, app: Runtime, task_id: str, epoch: int) -> None:
        self._app = app
        self._task_id = task_id
        self._epoch = epoch

    async def create_waitpoint(self, key: str, expires_in: timedelta) -> Waitpoint:
        """A waitpoint for this task; the same key again (after a re-run) returns the same."""
        _check_key("a waitpoint key", key)
        if not isinstance(expires_in, timedelta) or expires_in <= timedelta(0):
            raise ConfigurationError(f"expires_in must be a positive timedelta, got {expires_in!r}")
        app = self._app
        row = await app.store.waitpoint_create(
            WaitpointCreate(
                self._task_id,
                self._epoch,
                f"wp-{os.urandom(12).hex()}",
                key,
                int(expires_in.total_seconds() * 1000),
                app.clock.store_now(),
            )
        )
        keys = await token_keys(app)
        token = keys.sign(row.id, row.task_id, row.expires_at_ms)
        return Waitpoint(row.id, token, row.key, from_ms(row.expires_at_ms))

    async def suspend_status(
        self, condition: Condition, timeout: timedelta | None, on_timeout: OnTimeout
    ) -> SuspendStatus:
        if timeout is not None and (not isinstance(timeout, timedelta) or timeout <= timedelta(0)):
            raise ConfigurationError(f"timeout must be a positive timedelta, got {timeout!r}")
        app = self._app
        return await app.store.task_suspend(
            TaskSuspend(
                self._task_id,
                self._epoch,
                encode_condition(condition),
                None if timeout is None else int(timeout.total_seconds() * 1000),
                OnTimeout(on_timeout),
                app.clock.store_now(),
            )
        )

    async def resume_signals(self) -> list[ResumeSignal]:
        rows = await self._app.store.resume_signals(self._task_id)
        return [
            ResumeSignal(r.name, r.waitpoint_id, msgspec.json.decode(r.payload), from_ms(r.at_ms))
            for r in rows
        ]

    async def append_frame(
        self, frame_type: str, payload: bytes, metadata: Mapping[str, Any] | None = None
    ) -> FrameRef:
        """Append to this attempt's output stream (tokens, log lines...), fenced."""
        _check_key("frame_type", frame_type)
        if not isinstance(payload, bytes | bytearray):
            raise ConfigurationError(f"a frame payload is bytes, got {type(payload).__name__}")
        if len(payload) > MAX_FRAME_BYTES:
            raise FrameTooLarge("frame", len(payload), MAX_FRAME_BYTES)
        meta = None if metadata is None else msgspec.json.encode(dict(metadata))
        app = self._app
        return await app.store.frames_append(
            FrameAppend(
                self._task_id, self._epoch, frame_type, bytes(payload), meta, app.clock.store_now()
            )
        )


async def deliver_signal(
    app: Runtime,
    waitpoint_id: str,
    token: str,
    name: str,
    payload: Any = None,
    idempotency_key: str | None = None,
) -> DeliverOutcome:
    """Check the token, then hand the signal to the store (which may resume the task)."""
    _check_key("a signal name", name)
    if idempotency_key is not None:
        _check_key("idempotency_key", idempotency_key)
    try:
        data = msgspec.json.encode(payload)
    except (TypeError, msgspec.EncodeError) as exc:
        raise ConfigurationError(f"a signal payload must be JSON: {exc}") from exc
    if len(data) > app.max_payload_bytes:
        raise PayloadTooLarge("signal payload", len(data), app.max_payload_bytes)
    await app.open()
    row = await app.store.waitpoint_get(waitpoint_id) if isinstance(waitpoint_id, str) else None
    if row is None:
        return DeliverOutcome(DeliverStatus.REJECTED, "unknown waitpoint")
    keys = await token_keys(app)
    why = keys.verify(token, row.id, row.task_id, row.expires_at_ms)
    if why is not None:
        return DeliverOutcome(DeliverStatus.REJECTED, why)
    return await app.store.signal_deliver(
        SignalDeliver(waitpoint_id, name, data, idempotency_key, app.clock.store_now())
    )


async def tail_frames(
    app: Runtime,
    task_id: str,
    *,
    attempt: int | None,
    after: int,
    follow: bool,
    page: int = 500,
) -> AsyncGenerator[Frame, None]:
    """Frames of an attempt in order; with `follow`, waits for new ones until it ends."""
    await app.open()
    while True:
        got = await app.store.frames_read(FramesRead(task_id, attempt, after, page))
        if got.attempt is not None:
            attempt = got.attempt
        for f in got.frames:
            after = f.seq
            meta = None if f.metadata is None else msgspec.json.decode(f.metadata)
            yield Frame(got.attempt or 0, f.seq, f.frame_type, f.payload, meta, from_ms(f.at_ms))
        if len(got.frames) == page:
            continue
        if not follow or (not got.live and got.attempt is not None):
            return
        await app.store.wait_for_frames(0.5)
