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
    WaitpointRow,
)
from ._schema import quote_schema
from ._sql import NOW
from ._text import dec, enc, enc_opt

if TYPE_CHECKING:
    from .._common.wake import Pulse
    from ._sql import Queries
    from ._tree import Tree

T = TypeVar("T")
Conn = AsyncConnection[Any]

_TERMINAL_SQL = ", ".join(f"'{s.value}'" for s in sorted(TERMINAL))
SATISFIED = "satisfied"
TIMEOUT = "timeout"
_RESULT_UPSERT = (
    "ON CONFLICT (task_id) DO UPDATE SET state = excluded.state, result = excluded.result, "
    "error = excluded.error, finished_at = excluded.finished_at"
)


class SignalQueries:
    """Every statement of the signal and frame operations, for one schema."""

    def __init__(self, schema: str) -> None:
        s = quote_schema(schema)
        wp_cols = "id, task_id, key, expires_at, created_at"
        # Fenced writes lock the task row FOR SHARE: a claim, finish or suspend of the
        # same task waits for them (and they for it), while they never wait for each other.
        self.waitpoint_create = f"""
WITH {NOW},
f AS MATERIALIZED (
    SELECT id FROM {s}.tasks WHERE id = %(task)s AND lease_epoch = %(epoch)s
        AND state = 'running' FOR SHARE
),
ins AS (
    INSERT INTO {s}.waitpoints ({wp_cols})
    SELECT %(id)s, f.id, %(key)s, c.now + %(expires_in)s, c.now FROM f, c
    ON CONFLICT (task_id, key) DO NOTHING
    RETURNING {wp_cols}
)
SELECT (SELECT count(*) FROM f), ins.* FROM (SELECT 1) x LEFT JOIN ins ON true
"""
        self.waitpoint_by_key = (
            f"SELECT {wp_cols} FROM {s}.waitpoints WHERE task_id = %(task)s AND key = %(key)s"
        )
        self.waitpoint_get = f"SELECT {wp_cols} FROM {s}.waitpoints WHERE id = %(id)s"

        # -- signal_deliver: the task row locked first, then everything else read ---------
        # Every write about a task's signals holds this lock, so the next statement (a new
        # snapshot, in READ COMMITTED) sees all of them: none is in flight meanwhile.
        self.signal_deliver_lock = f"""
SELECT id FROM {s}.tasks
WHERE id = (SELECT task_id FROM {s}.waitpoints WHERE id = %(wp)s)
FOR UPDATE
"""
        # The signal is stored unless the waitpoint has expired or the task has ended; for
        # a suspended task, its open suspension and every signal not consumed yet come back.
        self.signal_deliver = f"""
WITH {NOW},
w AS (
    SELECT w.task_id, w.expires_at, t.state FROM {s}.waitpoints w
    JOIN {s}.tasks t ON t.id = w.task_id WHERE w.id = %(wp)s
),
ok AS (
    SELECT w.task_id FROM w, c
    WHERE w.expires_at > c.now AND w.state NOT IN ({_TERMINAL_SQL})
),
ins AS (
    INSERT INTO {s}.signals (task_id, waitpoint_id, name, payload, idempotency_key, at)
    SELECT ok.task_id, %(wp)s, %(name)s, %(payload)s, %(key)s, c.now FROM ok, c
    ON CONFLICT (waitpoint_id, idempotency_key) WHERE idempotency_key IS NOT NULL
        DO NOTHING
    RETURNING seq, task_id
),
sus AS (
    SELECT s.id, s.condition FROM {s}.suspensions s, w
    WHERE s.task_id = w.task_id AND s.resolved_at IS NULL AND w.state = 'suspended'
),
old AS (
    SELECT g.seq, g.waitpoint_id, g.name FROM {s}.signals g, ins
    WHERE g.task_id = ins.task_id AND g.suspension_id IS NULL AND EXISTS (SELECT 1 FROM sus)
)
SELECT w.task_id, w.expires_at, w.state, c.now,
    EXISTS (SELECT 1 FROM {s}.signals WHERE waitpoint_id = %(wp)s
        AND idempotency_key = %(key)s),
    (SELECT seq FROM ins), (SELECT id FROM sus), (SELECT condition FROM sus),
    ARRAY(SELECT waitpoint_id FROM old ORDER BY seq), ARRAY(SELECT name FROM old ORDER BY seq)
FROM c LEFT JOIN w ON true
"""
        self.resume = f"""
WITH cons AS (
    UPDATE {s}.signals SET suspension_id = %(sid)s
    WHERE task_id = %(task)s AND suspension_id IS NULL AND seq <= %(last)s
),
res AS (
    UPDATE {s}.suspensions SET resolved_at = %(now)s, resolution = '{SATISFIED}'
    WHERE id = %(sid)s
),
upd AS (
    UPDATE {s}.tasks SET state = 'ready', updated_at = %(now)s
    WHERE id = %(task)s AND state = 'suspended'
    RETURNING id, kind
),
ev AS (INSERT INTO {s}.events (task_id, kind, state, at, detail)
    SELECT id, kind, 'ready', %(now)s, 'resumed' FROM upd),
n AS (SELECT pg_notify(%(work_channel)s, '') FROM upd)
SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM n)
"""

        # -- task_suspend ----------------------------------------------------------------
        self.task_suspend_lock = f"""
WITH {NOW}
SELECT t.attempts, c.now, t.cancel_requested FROM {s}.tasks t, c
WHERE t.id = %(task)s AND t.lease_epoch = %(epoch)s AND t.state = 'running'
FOR UPDATE OF t
"""
        self.unconsumed = (
            f"SELECT seq, waitpoint_id, name FROM {s}.signals "
            "WHERE task_id = %(task)s AND suspension_id IS NULL ORDER BY seq"
        )
        sus_cols = "task_id, condition, timeout_at, on_timeout, attempt, created_at"
        sus_vals = "%(task)s, %(condition)s, %(timeout_at)s, %(on_timeout)s, %(attempt)s, %(now)s"
        self.task_suspend_satisfied = f"""
WITH ins AS (
    INSERT INTO {s}.suspensions ({sus_cols}, resolved_at, resolution)
    VALUES ({sus_vals}, %(now)s, '{SATISFIED}')
    RETURNING id
),
cons AS (
    UPDATE {s}.signals SET suspension_id = (SELECT id FROM ins)
    WHERE task_id = %(task)s AND suspension_id IS NULL AND seq <= %(last)s
)
SELECT id FROM ins
"""
        # The attempt is given back, as by a release: the claim that resumes it counts it.
        self.task_suspend = f"""
WITH ins AS (
    INSERT INTO {s}.suspensions ({sus_cols}) VALUES ({sus_vals})
),
upd AS (
    UPDATE {s}.tasks SET state = 'suspended', lease_owner = NULL, lease_expires_at = NULL,
        attempts = attempts - 1, updated_at = %(now)s
    WHERE id = %(task)s
    RETURNING id, kind
)
INSERT INTO {s}.events (task_id, kind, state, at, detail)
SELECT id, kind, 'suspended', %(now)s, %(detail)s FROM upd
"""

        # -- suspensions_expire ------------------------------------------------------------
        self.suspensions_expire_due = f"""
WITH {NOW}
SELECT s.task_id, c.now FROM {s}.suspensions s JOIN {s}.tasks t ON t.id = s.task_id, c
WHERE s.resolved_at IS NULL AND s.timeout_at <= c.now AND t.state = 'suspended'
ORDER BY s.timeout_at, s.id LIMIT %(limit)s
"""
        # Their parents are locked first: the parent-before-child order of tree writes.
        self.lock_parents = f"""
SELECT p.id FROM {s}.tasks p
WHERE p.id IN (SELECT parent_id FROM {s}.tasks WHERE id = ANY(%(ids)s::text[])
    AND parent_id IS NOT NULL)
ORDER BY p.id FOR NO KEY UPDATE OF p
"""
        self.suspensions_expire_lock = f"""
SELECT s.id, s.task_id, s.on_timeout, t.parent_id
FROM {s}.suspensions s JOIN {s}.tasks t ON t.id = s.task_id
WHERE s.task_id = ANY(%(ids)s::text[]) AND s.resolved_at IS NULL
    AND s.timeout_at <= %(now)s AND t.state = 'suspended'
ORDER BY t.id
FOR UPDATE OF t, s SKIP LOCKED
"""
        self.resolve_timeouts = (
            f"UPDATE {s}.suspensions SET resolved_at = %(now)s, resolution = '{TIMEOUT}' "
            "WHERE id = ANY(%(ids)s::bigint[])"
        )
        self.suspensions_expire = f"""
WITH a AS (
    SELECT * FROM unnest(%(ids)s::text[], %(targets)s::text[], %(errors)s::text[],
        %(details)s::text[]) AS a(id, target, error, detail)
),
upd AS (
    UPDATE {s}.tasks t SET state = a.target, error = coalesce(a.error, t.error),
        updated_at = %(now)s,
        finished_at = CASE WHEN a.target = 'ready' THEN t.finished_at ELSE %(now)s END
    FROM a WHERE t.id = a.id
    RETURNING t.id, t.kind, t.seq, a.target, a.error, a.detail
),
ev AS (INSERT INTO {s}.events (task_id, kind, state, at, detail)
    SELECT id, kind, target, %(now)s, detail FROM upd ORDER BY seq),
res AS (INSERT INTO {s}.results (task_id, state, result, error, finished_at)
    SELECT id, target, NULL, error, %(now)s FROM upd WHERE target <> 'ready'
    {_RESULT_UPSERT}),
nw AS (SELECT pg_notify(%(work_channel)s, '')
    FROM (SELECT 1 FROM upd WHERE target = 'ready' LIMIT 1) x),
nf AS (SELECT pg_notify(%(finish_channel)s, '')
    FROM (SELECT 1 FROM upd WHERE target <> 'ready' LIMIT 1) x)
SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM nw), (SELECT count(*) FROM nf)
"""

        self.resume_signals = f"""
WITH last AS (
    SELECT id, resolution FROM {s}.suspensions WHERE task_id = %(id)s
    ORDER BY id DESC LIMIT 1
)
SELECT g.waitpoint_id, g.name, g.payload, g.at FROM {s}.signals g, last
WHERE last.resolution = '{SATISFIED}' AND g.suspension_id = last.id
ORDER BY g.seq
"""

        # -- frames --------------------------------------------------------------------------
        self.frames_append = f"""
WITH {NOW},
f AS MATERIALIZED (
    SELECT attempts FROM {s}.tasks WHERE id = %(task)s AND lease_epoch = %(epoch)s
        AND state = 'running' FOR SHARE
),
n AS (
    INSERT INTO {s}.frame_seqs (task_id, attempt, seq)
    SELECT %(task)s, f.attempts, 1 FROM f
    ON CONFLICT (task_id, attempt) DO UPDATE SET seq = {s}.frame_seqs.seq + 1
    RETURNING attempt, seq
),
ins AS (
    INSERT INTO {s}.frames (task_id, attempt, seq, frame_type, payload, metadata, at)
    SELECT %(task)s, n.attempt, n.seq, %(frame_type)s, %(payload)s, %(metadata)s, c.now
    FROM n, c
),
nt AS (SELECT pg_notify(%(frames_channel)s, '') FROM n)
SELECT n.attempt, n.seq, (SELECT count(*) FROM nt) FROM n
"""
        # One row per frame (or one with NULL frame columns): the task's state and current
        # attempt, the attempt read (given, else the latest with frames, else the current).
        self.frames_read = f"""
WITH t AS (SELECT state, attempts FROM {s}.tasks WHERE id = %(task)s),
a AS (
    SELECT coalesce(%(attempt)s::int,
        (SELECT max(attempt) FROM {s}.frames WHERE task_id = %(task)s),
        nullif((SELECT attempts FROM t), 0)) AS attempt
)
SELECT t.state, t.attempts, a.attempt, f.seq, f.frame_type, f.payload, f.metadata, f.at
FROM t CROSS JOIN a LEFT JOIN LATERAL (
    SELECT seq, frame_type, payload, metadata, at FROM {s}.frames
    WHERE task_id = %(task)s AND attempt = a.attempt AND seq > %(after)s
    ORDER BY seq LIMIT %(limit)s
) f ON true
ORDER BY f.seq
"""

        self.meta_get_or_set_insert = (
            f"INSERT INTO {s}.meta (key, value) VALUES (%(key)s, %(value)s) "
            "ON CONFLICT (key) DO NOTHING"
        )
        self.meta_get_or_set_read = f"SELECT value FROM {s}.meta WHERE key = %(key)s"


_PIPELINE = psycopg.AsyncPipeline.is_supported()


def _pipeline(conn: Conn) -> contextlib.AbstractAsyncContextManager[Any]:
    """Send a transaction's statements without waiting for each reply where libpq can:
    the lock, the reads after it and the final write with COMMIT go as two round trips."""
    return conn.pipeline() if _PIPELINE else contextlib.nullcontext()


def _waitpoint(row: Any) -> WaitpointRow:
    i, task_id, key, expires_at, created_at = row
    return WaitpointRow(i, task_id, dec(key), int(expires_at), int(created_at))


def progress_detail(pct: float, message: str | None) -> str:
    """The detail of the `running` event a progress report records: `progress 40%: loading`."""
    return f"progress {pct:g}%" + (f": {message}" if message else "")


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
                if seq is None:
                    return DeliverOutcome(DeliverStatus.DUPLICATE)
                if sid is None:
                    return DeliverOutcome(DeliverStatus.ACCEPTED)  # buffered
                # (This statement's snapshot does not show the signal it inserted: it is last.)
                seen_keys = [(w, dec(n)) for w, n in zip(wps, names, strict=True)]
                seen_keys.append((p.waitpoint_id, p.name))
                if not satisfied(decode_condition(condition), seen_keys):
                    return DeliverOutcome(DeliverStatus.ACCEPTED)
                await conn.execute(
                    self._sq.resume,
                    {
                        "sid": sid,
                        "task": task_id,
                        "last": seq,
                        "now": now,
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
                    await conn.execute(self._sq.task_suspend_satisfied, params)
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
        for _, task_id, on_timeout, parent_id in rows:
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
