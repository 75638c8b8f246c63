"""Waitpoints, signals, suspensions, output frames and meta values in the SQLite store.

Every write runs on the single writer thread inside the group transaction, so recording a
signal, judging the suspension's condition and resuming the task happen together, and a
frame's sequence number is the next one of its attempt with no gap.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..._conditions import decode_condition, satisfied
from ..._states import TERMINAL, State
from ...errors import FrameTooLarge, LeaseLost, TaskNotFound
from .._common import wake as _wake
from .._common.serde import encode_error
from .._common.suspend_errors import (
    SUSPEND_CANCEL_ERROR,
    SUSPEND_CANCEL_REASON,
    SUSPEND_EXPIRED_ERROR,
    SUSPEND_TIMEOUT_ERROR,
)
from .._common.waitpoints import RESUMED, TIMED_OUT, closed_reason, owned_waitpoints
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
from . import _tree
from ._reads import waitpoints_list
from ._sql import EVENT_SQL
from ._tasks import cancelled_tasks
from ._threads import Job, Tx

SATISFIED = "satisfied"
TIMEOUT = "timeout"

_RESULT_SQL = (
    "INSERT OR REPLACE INTO fm_results (task_id, state, result, error, finished_at) "
    "VALUES (?, ?, NULL, ?, ?)"
)


def _now(now_ms: int | None) -> int:
    return now_ms if now_ms is not None else time.time_ns() // 1_000_000


class SQLiteSignalsMixin:
    """The `SignalsStore` operations of `SQLiteStore`."""

    if TYPE_CHECKING:
        _bus: _wake.WakeBus

        async def _write(self, job: Job) -> Any: ...

        async def _read(self, job: Job) -> Any: ...

    async def waitpoint_create(self, p: WaitpointCreate) -> WaitpointRow:
        result: WaitpointRow = await self._write(lambda c, tx: waitpoint_create(c, p))
        return result

    async def waitpoint_get(self, waitpoint_id: str) -> WaitpointRow | None:
        def job(c: sqlite3.Connection, tx: Tx) -> WaitpointRow | None:
            row = c.execute(
                "SELECT id, task_id, key, expires_at, created_at FROM fm_waitpoints WHERE id = ?",
                (waitpoint_id,),
            ).fetchone()
            return None if row is None else WaitpointRow(*row)

        result: WaitpointRow | None = await self._read(job)
        return result

    async def waitpoints_list(self, p: WaitpointsList) -> list[WaitpointInfo]:
        result: list[WaitpointInfo] = await self._read(lambda c, tx: waitpoints_list(c, p))
        return result

    async def signal_deliver(self, p: SignalDeliver) -> DeliverOutcome:
        result: DeliverOutcome = await self._write(lambda c, tx: signal_deliver(c, tx, p))
        return result

    async def task_suspend(self, p: TaskSuspend) -> SuspendStatus:
        condition = decode_condition(p.condition)  # a bad condition fails before any write
        result: SuspendStatus = await self._write(lambda c, tx: task_suspend(c, p, condition))
        return result

    async def suspensions_expire(self, p: SuspensionsExpire) -> int:
        if p.limit <= 0:
            return 0
        result: int = await self._write(lambda c, tx: suspensions_expire(c, tx, p))
        return result

    async def resume_signals(self, task_id: str) -> list[SignalRow]:
        result: list[SignalRow] = await self._read(lambda c, tx: resume_signals(c, task_id))
        return result

    async def frames_append(self, p: FrameAppend) -> FrameRef:
        if len(p.payload) > MAX_FRAME_BYTES:
            raise FrameTooLarge("an output frame", len(p.payload), MAX_FRAME_BYTES)
        result: FrameRef = await self._write(lambda c, tx: frames_append(c, tx, p))
        return result

    async def frames_read(self, p: FramesRead) -> FramesPage:
        result: FramesPage = await self._read(lambda c, tx: frames_read(c, p))
        return result

    async def wait_for_frames(self, timeout_s: float) -> None:
        self._bus.listen(asyncio.get_running_loop())
        await self._bus.frames.wait(timeout_s)

    async def meta_get_or_set(self, key: str, value: str) -> str:
        def job(c: sqlite3.Connection, tx: Tx) -> str:
            c.execute(
                "INSERT INTO fm_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                (key, value),
            )
            row = c.execute("SELECT value FROM fm_meta WHERE key = ?", (key,)).fetchone()
            return str(row[0])

        result: str = await self._write(job)
        return result


# -- jobs: each runs on the writer (or reader) thread, inside the group transaction -----


def _fence(c: sqlite3.Connection, task_id: str, epoch: int) -> tuple[str, int]:
    """(kind, attempts) of the task running at this epoch; LeaseLost otherwise."""
    row = c.execute(
        "SELECT kind, attempts FROM fm_tasks WHERE id = ? AND lease_epoch = ? "
        "AND state = 'running'",
        (task_id, epoch),
    ).fetchone()
    if row is None:
        raise LeaseLost(task_id, epoch)
    return str(row[0]), int(row[1])


def waitpoint_create(c: sqlite3.Connection, p: WaitpointCreate) -> WaitpointRow:
    _fence(c, p.task_id, p.epoch)
    now = _now(p.now_ms)
    c.execute(
        "INSERT INTO fm_waitpoints (id, task_id, key, expires_at, created_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (task_id, key) DO NOTHING",
        (p.waitpoint_id, p.task_id, p.key, now + p.expires_in_ms, now),
    )
    row = c.execute(
        "SELECT id, task_id, key, expires_at, created_at FROM fm_waitpoints "
        "WHERE task_id = ? AND key = ?",
        (p.task_id, p.key),
    ).fetchone()
    return WaitpointRow(*row)


def _unconsumed(c: sqlite3.Connection, task_id: str) -> list[tuple[int, str, str]]:
    """(seq, waitpoint id, name) of the task's signals no suspension has consumed yet."""
    rows: list[tuple[int, str, str]] = c.execute(
        "SELECT seq, waitpoint_id, name FROM fm_signals WHERE task_id = ? "
        "AND suspension_id IS NULL ORDER BY seq",
        (task_id,),
    ).fetchall()
    return rows


def _consume_if_satisfied(
    c: sqlite3.Connection, task_id: str, suspension_id: int, condition: dict[str, Any]
) -> bool:
    signals = _unconsumed(c, task_id)
    if not satisfied(condition, [(w, n) for _, w, n in signals]):
        return False
    last = signals[-1][0]
    c.execute(
        "UPDATE fm_signals SET suspension_id = ? WHERE task_id = ? AND suspension_id IS NULL "
        "AND seq <= ?",
        (suspension_id, task_id, last),
    )
    return True


def close_waitpoints(
    c: sqlite3.Connection,
    task_id: str,
    suspension_id: int,
    condition: dict[str, Any],
    now: int,
    reason: str,
) -> None:
    """A suspension resolved: close the waitpoints it owns, and give their signals that no
    suspension consumed to it, so none leaks into a later suspension's resume signals."""
    owned = owned_waitpoints(condition)
    if owned is None:
        where, args = "task_id = ?", [task_id]
    else:
        where, args = f"id IN ({','.join('?' * len(owned))})", sorted(owned)
    ids = [
        r[0]
        for r in c.execute(
            f"UPDATE fm_waitpoints SET closed_at = ?, closed_reason = ? WHERE {where} "
            "AND task_id = ? AND closed_at IS NULL RETURNING id",
            (now, reason, *args, task_id),
        ).fetchall()
    ]
    if ids:
        c.execute(
            "UPDATE fm_signals SET suspension_id = ? WHERE task_id = ? AND suspension_id IS NULL "
            f"AND waitpoint_id IN ({','.join('?' * len(ids))})",
            (suspension_id, task_id, *ids),
        )


def signal_deliver(c: sqlite3.Connection, tx: Tx, p: SignalDeliver) -> DeliverOutcome:
    now = _now(p.now_ms)
    row = c.execute(
        "SELECT w.task_id, w.expires_at, t.state, t.kind, w.closed_at, w.closed_reason "
        "FROM fm_waitpoints w JOIN fm_tasks t ON t.id = w.task_id WHERE w.id = ?",
        (p.waitpoint_id,),
    ).fetchone()
    if row is None:
        return DeliverOutcome(DeliverStatus.REJECTED, "unknown waitpoint")
    task_id, expires_at, state_value, kind, closed_at, why_closed = row
    state = State(state_value)
    # A repeat of a signal already recorded is answered as such even once the waitpoint
    # has expired or the task has ended: the sender may only have lost the first reply.
    if (
        p.idempotency_key is not None
        and c.execute(
            "SELECT 1 FROM fm_signals WHERE waitpoint_id = ? AND idempotency_key = ?",
            (p.waitpoint_id, p.idempotency_key),
        ).fetchone()
        is not None
    ):
        return DeliverOutcome(DeliverStatus.DUPLICATE)
    if expires_at <= now:
        return DeliverOutcome(DeliverStatus.REJECTED, "waitpoint expired")
    if state in TERMINAL:
        return DeliverOutcome(DeliverStatus.REJECTED, f"task already ended ({state.value})")
    if closed_at is not None:
        return DeliverOutcome(DeliverStatus.CLOSED, closed_reason(why_closed))
    c.execute(
        "INSERT INTO fm_signals (task_id, waitpoint_id, name, payload, idempotency_key, at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (task_id, p.waitpoint_id, p.name, p.payload, p.idempotency_key, now),
    )
    if state is not State.SUSPENDED:
        return DeliverOutcome(DeliverStatus.ACCEPTED)  # buffered for the next suspend
    open_ = c.execute(
        "SELECT id, condition FROM fm_suspensions WHERE task_id = ? AND resolved_at IS NULL",
        (task_id,),
    ).fetchone()
    if open_ is None:
        return DeliverOutcome(DeliverStatus.ACCEPTED)
    condition = decode_condition(open_[1])
    if not _consume_if_satisfied(c, task_id, open_[0], condition):
        return DeliverOutcome(DeliverStatus.ACCEPTED)
    c.execute(
        "UPDATE fm_suspensions SET resolved_at = ?, resolution = ? WHERE id = ?",
        (now, SATISFIED, open_[0]),
    )
    close_waitpoints(c, task_id, open_[0], condition, now, RESUMED)
    c.execute(
        "UPDATE fm_tasks SET state = 'ready', updated_at = ? WHERE id = ? AND state = 'suspended'",
        (now, task_id),
    )
    c.execute(EVENT_SQL, (task_id, kind, "ready", now, "resumed"))
    tx.wake(_wake.WORK)
    return DeliverOutcome(DeliverStatus.ACCEPTED, resumed=True)


def task_suspend(c: sqlite3.Connection, p: TaskSuspend, condition: dict[str, Any]) -> SuspendStatus:
    kind, attempt = _fence(c, p.task_id, p.epoch)
    row = c.execute("SELECT cancel_requested FROM fm_tasks WHERE id = ?", (p.task_id,))
    if row.fetchone()[0]:
        return SuspendStatus.CANCEL_REQUESTED
    now = _now(p.now_ms)
    timeout_at = None if p.timeout_ms is None else now + p.timeout_ms
    suspension_id = c.execute(
        "INSERT INTO fm_suspensions (task_id, condition, timeout_at, on_timeout, attempt, "
        "created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        (p.task_id, p.condition.decode(), timeout_at, OnTimeout(p.on_timeout).value, attempt, now),
    ).fetchone()[0]
    if _consume_if_satisfied(c, p.task_id, suspension_id, condition):
        c.execute(
            "UPDATE fm_suspensions SET resolved_at = ?, resolution = ? WHERE id = ?",
            (now, SATISFIED, suspension_id),
        )
        close_waitpoints(c, p.task_id, suspension_id, condition, now, RESUMED)
        return SuspendStatus.ALREADY_SATISFIED
    # The attempt is given back, as by a release: the claim that resumes it counts it again.
    c.execute(
        "UPDATE fm_tasks SET state = 'suspended', lease_owner = NULL, lease_expires_at = NULL, "
        "attempts = attempts - 1, updated_at = ? WHERE id = ?",
        (now, p.task_id),
    )
    detail = suspend_detail(p)
    c.execute(EVENT_SQL, (p.task_id, kind, "suspended", now, detail))
    return SuspendStatus.SUSPENDED


def suspend_detail(p: TaskSuspend) -> str:
    """The detail of a `suspended` event: what ends the wait if no signal does."""
    if p.timeout_ms is None:
        return "no timeout"
    return f"timeout {p.timeout_ms} ms: {OnTimeout(p.on_timeout).value}"


def suspensions_expire(c: sqlite3.Connection, tx: Tx, p: SuspensionsExpire) -> int:
    now = _now(p.now_ms)
    rows = c.execute(
        "SELECT s.id, s.task_id, s.on_timeout, t.kind, t.parent_id, s.condition "
        "FROM fm_suspensions s "
        "JOIN fm_tasks t ON t.id = s.task_id WHERE s.resolved_at IS NULL "
        "AND s.timeout_at <= ? AND t.state = 'suspended' ORDER BY s.timeout_at, s.id LIMIT ?",
        (now, p.limit),
    ).fetchall()
    if not rows:
        return 0
    c.executemany(
        "UPDATE fm_suspensions SET resolved_at = ?, resolution = ? WHERE id = ?",
        [(now, TIMEOUT, r[0]) for r in rows],
    )
    events: list[tuple[Any, ...]] = []
    results: list[tuple[Any, ...]] = []
    ended: list[_tree.Ended] = []
    cancelled: list[str] = []
    for suspension_id, task_id, on_timeout, kind, parent_id, condition in rows:
        close_waitpoints(c, task_id, suspension_id, decode_condition(condition), now, TIMED_OUT)
        behaviour = OnTimeout(on_timeout)
        if behaviour is OnTimeout.RESUME:
            c.execute(
                "UPDATE fm_tasks SET state = 'ready', updated_at = ? WHERE id = ?", (now, task_id)
            )
            events.append((task_id, kind, "ready", now, "suspend timeout: resumed"))
            tx.wake(_wake.WORK)
            continue
        if behaviour is OnTimeout.FAIL:
            target, error = State.FAILED, SUSPEND_TIMEOUT_ERROR
        elif behaviour is OnTimeout.EXPIRE:
            target, error = State.EXPIRED, SUSPEND_EXPIRED_ERROR
        else:
            target = State.CANCELLED
            error = SUSPEND_CANCEL_ERROR
            cancelled.append(task_id)
        err = encode_error(error)
        c.execute(
            "UPDATE fm_tasks SET state = ?, error = ?, updated_at = ?, finished_at = ? "
            "WHERE id = ?",
            (target.value, err, now, now, task_id),
        )
        events.append(
            (
                task_id,
                kind,
                target.value,
                now,
                SUSPEND_CANCEL_REASON if target is State.CANCELLED else error.category,
            )
        )
        results.append((task_id, target.value, err, now))
        if parent_id is not None:
            ended.append((parent_id, task_id, target))
    c.executemany(EVENT_SQL, events)
    if results:
        c.executemany(_RESULT_SQL, results)
        tx.wake(_wake.FINISH)
    if cancelled:  # the one cancel path: hooks and the cascade
        cancelled_tasks(c, tx, cancelled, SUSPEND_CANCEL_REASON, now)
    if ended:
        _tree.children_ended(c, tx, ended, now)
    return len(rows)


def resume_signals(c: sqlite3.Connection, task_id: str) -> list[SignalRow]:
    last = c.execute(
        "SELECT id, resolution FROM fm_suspensions WHERE task_id = ? ORDER BY id DESC LIMIT 1",
        (task_id,),
    ).fetchone()
    if last is None or last[1] != SATISFIED:
        return []  # never suspended, still suspended, or resumed by its timeout
    rows = c.execute(
        "SELECT waitpoint_id, name, payload, at FROM fm_signals WHERE suspension_id = ? "
        "ORDER BY seq",
        (last[0],),
    )
    return [SignalRow(w, n, pl, a) for w, n, pl, a in rows]


def frames_append(c: sqlite3.Connection, tx: Tx, p: FrameAppend) -> FrameRef:
    _, attempt = _fence(c, p.task_id, p.epoch)
    now = _now(p.now_ms)
    seq = c.execute(
        "INSERT INTO fm_frames (task_id, attempt, seq, frame_type, payload, metadata, at) "
        "SELECT ?, ?, coalesce(max(seq), 0) + 1, ?, ?, ?, ? FROM fm_frames "
        "WHERE task_id = ? AND attempt = ? RETURNING seq",
        (p.task_id, attempt, p.frame_type, p.payload, p.metadata, now, p.task_id, attempt),
    ).fetchone()[0]
    tx.wake(_wake.OUTPUT)
    return FrameRef(attempt, int(seq))


def frames_read(c: sqlite3.Connection, p: FramesRead) -> FramesPage:
    row = c.execute("SELECT state, attempts FROM fm_tasks WHERE id = ?", (p.task_id,)).fetchone()
    if row is None:
        raise TaskNotFound(p.task_id)
    state, current = State(row[0]), int(row[1])
    attempt = p.attempt
    if attempt is None:
        latest = c.execute(
            "SELECT max(attempt) FROM fm_frames WHERE task_id = ?", (p.task_id,)
        ).fetchone()[0]
        attempt = int(latest) if latest is not None else (current or None)
    if attempt is None or p.limit <= 0:
        return FramesPage(attempt, [], _live(state, current, attempt))
    rows: Sequence[tuple[Any, ...]] = c.execute(
        "SELECT seq, frame_type, payload, metadata, at FROM fm_frames "
        "WHERE task_id = ? AND attempt = ? AND seq > ? ORDER BY seq LIMIT ?",
        (p.task_id, attempt, p.after, p.limit),
    ).fetchall()
    frames = [FrameRow(s, t, pl, m, a) for s, t, pl, m, a in rows]
    return FramesPage(attempt, frames, _live(state, current, attempt))


def _live(state: State, current: int, attempt: int | None) -> bool:
    return state is State.RUNNING and attempt is not None and attempt == current
