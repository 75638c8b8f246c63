"""Waitpoints, signals, suspensions, output frames and meta values in the PostgreSQL store.

Signals and suspensions lock the task row (`FOR UPDATE`) before they read anything else:
every write that concerns a task's signals holds that lock, so the statements after it
see all of them, and "condition satisfied" and "task resumed" commit together, once. A
frame's sequence number comes from a per-attempt counter row bumped by an upsert in the
same statement as the frame: gapless, in commit order, without locking the task.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import AsyncConnection

from ..._conditions import decode_condition, satisfied
from ..._states import TERMINAL, State
from ...errors import FrameTooLarge, LeaseLost, TaskNotFound
from .._common.serde import encode_error
from .._common.suspend_errors import (
    SUSPEND_CANCEL_ERROR,
    SUSPEND_EXPIRED_ERROR,
    SUSPEND_TIMEOUT_ERROR,
)
from .._common.waitpoints import closed_reason, owned_waitpoints
from ..contract.signals import (
    MAX_FRAME_BYTES,
    DeliverOutcome,
    DeliverStatus,
    FrameAppend,
    FrameRef,
    FrameRow,
    FramesPage,
    FramesRead,
    OnTimeout,
    SignalDeliver,
    SignalRow,
    SuspendStatus,
    SuspensionsExpire,
    TaskSuspend,
    WaitpointCreate,
    WaitpointInfo,
    WaitpointRow,
    WaitpointsList,
)
from ._text import dec, enc, enc_opt

if TYPE_CHECKING:
    from .._common.wake import Pulse
    from ._sql import Queries
    from ._tree import Tree
from ._signals_sql import SignalQueries

T = TypeVar("T")

Conn = AsyncConnection[Any]

_PIPELINE = psycopg.AsyncPipeline.is_supported()


def _pipeline(conn: Conn) -> contextlib.AbstractAsyncContextManager[Any]:
    """Send a transaction's statements without waiting for each reply where libpq can:
    the lock, the reads after it and the final write with COMMIT go as two round trips."""
    return conn.pipeline() if _PIPELINE else contextlib.nullcontext()


def _owned(condition: dict[str, Any]) -> list[str] | None:
    """The waitpoints a suspension with this condition owns (None: all of its task's)."""
    owned = owned_waitpoints(condition)
    return None if owned is None else sorted(owned)


def _waitpoint(row: Any) -> WaitpointRow:
    i, task_id, key, expires_at, created_at = row
    return WaitpointRow(i, task_id, dec(key), int(expires_at), int(created_at))


def suspend_detail(p: TaskSuspend) -> str:
    """The detail of a `suspended` event: what ends the wait if no signal does."""
    if p.timeout_ms is None:
        return "no timeout"
    return f"timeout {p.timeout_ms} ms: {OnTimeout(p.on_timeout).value}"


class PostgresSignalsMixin:
    """The `SignalsStore` operations of `PostgresStore`."""

    if TYPE_CHECKING:
        _sq: SignalQueries
        _q: Queries
        _tree: Tree
        _frames: Pulse
        work_channel: str
        finish_channel: str
        frames_channel: str

        async def _run(self, job: Callable[[Conn], Awaitable[T]], *, idempotent: bool) -> T: ...

        async def _wait(self, pulse: Pulse, timeout_s: float) -> None: ...

    # -- waitpoints ------------------------------------------------------------------------

    async def waitpoint_create(self, p: WaitpointCreate) -> WaitpointRow:
        params = {
            "now": p.now_ms,
            "task": p.task_id,
            "epoch": p.epoch,
            "id": p.waitpoint_id,
            "key": enc(p.key),
            "expires_in": p.expires_in_ms,
        }

        async def job(conn: Conn) -> WaitpointRow:
            row = await (await conn.execute(self._sq.waitpoint_create, params)).fetchone()
            assert row is not None
            if not row[0]:
                raise LeaseLost(p.task_id, p.epoch)
            if row[1] is not None:
                return _waitpoint(row[1:])
            # The key was taken (now, or by a create this one waited for): a new statement
            # sees that committed row.
            cur = await conn.execute(self._sq.waitpoint_by_key, params)
            existing = await cur.fetchone()
            assert existing is not None
            return _waitpoint(existing)

        # A create that ran and lost its reply returns the same row when run again.
        return await self._run(job, idempotent=True)

    async def waitpoint_get(self, waitpoint_id: str) -> WaitpointRow | None:
        async def job(conn: Conn) -> WaitpointRow | None:
            cur = await conn.execute(self._sq.waitpoint_get, {"id": waitpoint_id})
            row = await cur.fetchone()
            return None if row is None else _waitpoint(row)

        return await self._run(job, idempotent=True)

    # -- signals ---------------------------------------------------------------------------

    async def waitpoints_list(self, p: WaitpointsList) -> list[WaitpointInfo]:
        params = {"task": p.task_id, "limit": p.limit}

        async def job(conn: Conn) -> list[WaitpointInfo]:
            wps = await (await conn.execute(self._sq.waitpoints_list, params)).fetchall()
            if not wps:
                return []
            # One statement, one snapshot: a signal consumed meanwhile is seen once.
            rows = await (await conn.execute(self._sq.waitpoint_signals, params)).fetchall()
            signals: dict[str, list[SignalRow]] = {}
            for _seq, wp, name, payload, at in rows:
                signals.setdefault(wp, []).append(SignalRow(wp, dec(name), payload, int(at)))
            return [
                WaitpointInfo(
                    i,
                    t,
                    dec(k),
                    int(created),
                    int(expires),
                    why,
                    None if closed is None else int(closed),
                    tuple(signals.get(i, ())),
                )
                for i, t, k, created, expires, why, closed in wps
            ]

        return await self._run(job, idempotent=True)

    async def signal_deliver(self, p: SignalDeliver) -> DeliverOutcome:
        params = {
            "now": p.now_ms,
            "wp": p.waitpoint_id,
            "name": enc(p.name),
            "payload": p.payload,
            "key": enc_opt(p.idempotency_key),
        }

        async def job(conn: Conn) -> DeliverOutcome:
            async with _pipeline(conn), conn.transaction():
                await conn.execute(self._sq.signal_deliver_lock, {"wp": p.waitpoint_id})
                cur = await conn.execute(self._sq.signal_deliver, params)
                row = await cur.fetchone()
                assert row is not None
                (
                    task_id,
                    expires_at,
                    state,
                    now,
                    seen,
                    seq,
                    sid,
                    condition,
                    wps,
                    names,
                    closed_at,
                    why_closed,
                ) = row
                if task_id is None:
                    return DeliverOutcome(DeliverStatus.REJECTED, "unknown waitpoint")
                # A repeat of a signal already recorded is answered as such even once the
                # waitpoint has expired or the task has ended: the sender may only have lost
                # the first reply.
                if seen:
                    return DeliverOutcome(DeliverStatus.DUPLICATE)
                if expires_at <= now:
                    return DeliverOutcome(DeliverStatus.REJECTED, "waitpoint expired")
                if State(state) in TERMINAL:
                    return DeliverOutcome(DeliverStatus.REJECTED, f"task already ended ({state})")
                if closed_at is not None:
                    return DeliverOutcome(DeliverStatus.CLOSED, closed_reason(why_closed))
                if seq is None:
                    return DeliverOutcome(DeliverStatus.DUPLICATE)
                if sid is None:
                    return DeliverOutcome(DeliverStatus.ACCEPTED)  # buffered
                # (This statement's snapshot does not show the signal it inserted: it is last.)
                seen_keys = [(w, dec(n)) for w, n in zip(wps, names, strict=True)]
                seen_keys.append((p.waitpoint_id, p.name))
                wanted = decode_condition(condition)
                if not satisfied(wanted, seen_keys):
                    return DeliverOutcome(DeliverStatus.ACCEPTED)
                ids = _owned(wanted)
                await conn.execute(
                    self._sq.resume if ids is not None else self._sq.resume_any,
                    {
                        "sid": sid,
                        "task": task_id,
                        "last": seq,
                        "now": now,
                        "ids": ids,
                        "work_channel": self.work_channel,
                    },
                )
                return DeliverOutcome(DeliverStatus.ACCEPTED, resumed=True)

        # Not run again after a lost connection: a signal without a key would count twice.
        return await self._run(job, idempotent=False)

    # -- suspensions -----------------------------------------------------------------------

    async def task_suspend(self, p: TaskSuspend) -> SuspendStatus:
        condition = decode_condition(p.condition)  # a bad condition fails before any write

        async def job(conn: Conn) -> SuspendStatus:
            async with _pipeline(conn), conn.transaction():
                locked = await conn.execute(
                    self._sq.task_suspend_lock,
                    {"now": p.now_ms, "task": p.task_id, "epoch": p.epoch},
                )
                unconsumed = await conn.execute(self._sq.unconsumed, {"task": p.task_id})
                row = await locked.fetchone()
                if row is None:
                    raise LeaseLost(p.task_id, p.epoch)
                attempt, now, cancel_requested = row
                signals = await unconsumed.fetchall()
                if cancel_requested:
                    return SuspendStatus.CANCEL_REQUESTED
                params = {
                    "task": p.task_id,
                    "condition": p.condition.decode(),
                    "timeout_at": None if p.timeout_ms is None else now + p.timeout_ms,
                    "on_timeout": OnTimeout(p.on_timeout).value,
                    "attempt": attempt,
                    "now": now,
                }
                if satisfied(condition, [(w, dec(n)) for _, w, n in signals]):
                    params["last"] = signals[-1][0]
                    params["ids"] = ids = _owned(condition)
                    await conn.execute(
                        self._sq.task_suspend_satisfied
                        if ids is not None
                        else self._sq.task_suspend_satisfied_any,
                        params,
                    )
                    return SuspendStatus.ALREADY_SATISFIED
                params["detail"] = suspend_detail(p)
                await conn.execute(self._sq.task_suspend, params)
                return SuspendStatus.SUSPENDED

        return await self._run(job, idempotent=False)

    async def suspensions_expire(self, p: SuspensionsExpire) -> int:
        if p.limit <= 0:
            return 0

        async def job(conn: Conn) -> int:
            cur = await conn.execute(
                self._sq.suspensions_expire_due, {"now": p.now_ms, "limit": p.limit}
            )
            due = await cur.fetchall()
            if not due:
                return 0
            ids, now = sorted(r[0] for r in due), int(due[0][1])
            async with conn.transaction():
                await conn.execute(self._sq.lock_parents, {"ids": ids})
                cur = await conn.execute(self._sq.suspensions_expire_lock, {"ids": ids, "now": now})
                rows = await cur.fetchall()
                if not rows:
                    return 0
                await conn.execute(
                    self._sq.resolve_timeouts, {"ids": [r[0] for r in rows], "now": now}
                )
                return await self._apply_timeouts(conn, rows, now)

        return await self._run(job, idempotent=True)

    async def _apply_timeouts(self, conn: Conn, rows: list[Any], now: int) -> int:
        moved: list[tuple[str, State, str | None, str]] = []  # (id, target, error, detail)
        cancelled: list[str] = []
        ended: list[tuple[str, str, State]] = []
        for sid, task_id, _, _, condition in rows:
            await conn.execute(
                self._sq.close_waitpoints,
                {
                    "now": now,
                    "task": task_id,
                    "ids": _owned(decode_condition(condition)),
                    "sid": sid,
                },
            )
        for _, task_id, on_timeout, parent_id, _ in rows:
            behaviour = OnTimeout(on_timeout)
            if behaviour is OnTimeout.CANCEL:
                cancelled.append(task_id)
            elif behaviour is OnTimeout.RESUME:
                moved.append((task_id, State.READY, None, "suspend timeout: resumed"))
            else:
                fail = behaviour is OnTimeout.FAIL
                target = State.FAILED if fail else State.EXPIRED
                error = SUSPEND_TIMEOUT_ERROR if fail else SUSPEND_EXPIRED_ERROR
                moved.append((task_id, target, encode_error(error), error.category))
                if parent_id is not None:
                    ended.append((parent_id, task_id, target))
        if moved:
            await conn.execute(
                self._sq.suspensions_expire,
                {
                    "ids": [m[0] for m in moved],
                    "targets": [m[1].value for m in moved],
                    "errors": [m[2] for m in moved],
                    "details": [m[3] for m in moved],
                    "now": now,
                    "work_channel": self.work_channel,
                    "finish_channel": self.finish_channel,
                },
            )
        for task_id in cancelled:  # exactly an operator cancel: hooks, cascade, the join
            await self._tree.cancel_task(
                conn, self._q.task_cancel, task_id, SUSPEND_CANCEL_ERROR, now
            )
        if ended:
            await self._tree.children_ended(conn, ended, now)
        return len(rows)

    async def resume_signals(self, task_id: str) -> list[SignalRow]:
        async def job(conn: Conn) -> list[SignalRow]:
            cur = await conn.execute(self._sq.resume_signals, {"id": task_id})
            return [SignalRow(w, dec(n), pl, int(a)) for w, n, pl, a in await cur.fetchall()]

        return await self._run(job, idempotent=True)

    # -- frames ----------------------------------------------------------------------------

    async def frames_append(self, p: FrameAppend) -> FrameRef:
        if len(p.payload) > MAX_FRAME_BYTES:
            raise FrameTooLarge("an output frame", len(p.payload), MAX_FRAME_BYTES)
        params = {
            "now": p.now_ms,
            "task": p.task_id,
            "epoch": p.epoch,
            "frame_type": enc(p.frame_type),
            "payload": p.payload,
            "metadata": p.metadata,
            "frames_channel": self.frames_channel,
        }

        async def job(conn: Conn) -> FrameRef:
            row = await (await conn.execute(self._sq.frames_append, params)).fetchone()
            if row is None:
                raise LeaseLost(p.task_id, p.epoch)
            return FrameRef(int(row[0]), int(row[1]))

        # Not run again after a lost connection: the frame would be appended twice.
        return await self._run(job, idempotent=False)

    async def frames_read(self, p: FramesRead) -> FramesPage:
        params = {
            "task": p.task_id,
            "attempt": p.attempt,
            "after": p.after,
            "limit": max(0, p.limit),
        }

        async def job(conn: Conn) -> FramesPage:
            rows = await (await conn.execute(self._sq.frames_read, params)).fetchall()
            if not rows:
                raise TaskNotFound(p.task_id)
            state, current, attempt = State(rows[0][0]), int(rows[0][1]), rows[0][2]
            frames = [
                FrameRow(int(r[3]), dec(r[4]), r[5], r[6], int(r[7]))
                for r in rows
                if r[3] is not None
            ]
            live = state is State.RUNNING and attempt is not None and attempt == current
            return FramesPage(attempt, frames, live)

        return await self._run(job, idempotent=True)

    async def wait_for_frames(self, timeout_s: float) -> None:
        await self._wait(self._frames, timeout_s)

    # -- meta ------------------------------------------------------------------------------

    async def meta_get_or_set(self, key: str, value: str) -> str:
        params = {"key": enc(key), "value": enc(value)}

        async def job(conn: Conn) -> str:
            # Two statements: the second sees a value another caller committed while the
            # insert waited for it.
            await conn.execute(self._sq.meta_get_or_set_insert, params)
            row = await (await conn.execute(self._sq.meta_get_or_set_read, params)).fetchone()
            assert row is not None
            return dec(row[0])

        return await self._run(job, idempotent=True)
