"""Waitpoints, signals, suspensions and output frames in the Redis store.

Each write is one FCALL: recording a signal, judging the suspension's condition and
resuming the task happen together; a frame's sequence number is its entry id in the
attempt's own Stream (`fr:<task>:<attempt>`), so appends are gapless.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..._conditions import decode_condition
from ...errors import FrameTooLarge, TaskNotFound
from .._common.serde import encode_error
from .._common.suspend_errors import (
    SUSPEND_CANCEL_ERROR,
    SUSPEND_CANCEL_REASON,
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
    WaitpointInfo,
    WaitpointRow,
    WaitpointsList,
)
from . import _records as rec
from ._leases import HeldLeases

_TIMEOUT_ERRORS = {
    "timeout_error": encode_error(SUSPEND_TIMEOUT_ERROR),
    "expired_error": encode_error(SUSPEND_EXPIRED_ERROR),
    "cancel_error": encode_error(SUSPEND_CANCEL_ERROR),
    "cancel_reason": SUSPEND_CANCEL_REASON,
}


def suspend_detail(p: TaskSuspend) -> str:
    """The detail of a `suspended` event: what ends the wait if no signal does."""
    if p.timeout_ms is None:
        return "no timeout"
    return f"timeout {p.timeout_ms} ms: {OnTimeout(p.on_timeout).value}"


def _with_now(params: dict[str, Any], now_ms: int | None) -> dict[str, Any]:
    if now_ms is not None:
        params["now"] = now_ms
    return params


class RedisSignalsMixin:
    """The `SignalsStore` operations of `RedisStore`."""

    if TYPE_CHECKING:

        async def _call(
            self,
            fn: str,
            params: dict[str, Any],
            blobs: Sequence[bytes] = (),
            *,
            durable: bool = False,
        ) -> Any: ...

        async def _fcall(
            self, fn: str, params: dict[str, Any], blobs: Sequence[bytes] = ()
        ) -> Any: ...

        async def _wait_cancellable(self, which: str, timeout_s: float) -> None: ...

        _leases: HeldLeases

    async def waitpoint_create(self, p: WaitpointCreate) -> WaitpointRow:
        params = {
            "task": p.task_id,
            "epoch": p.epoch,
            "id": p.waitpoint_id,
            "key": p.key,
            "expires_in": p.expires_in_ms,
        }
        self._leases.name(params, p.task_id, p.epoch)
        out = await self._call("fm_waitpoint_create", _with_now(params, p.now_ms))
        return WaitpointRow(
            out["id"], out["task"], out["key"], int(out["expires_at"]), int(out["created_at"])
        )

    async def waitpoint_get(self, waitpoint_id: str) -> WaitpointRow | None:
        client: Any = self._c()  # type: ignore[attr-defined]
        key = self._k + "wp:" + waitpoint_id  # type: ignore[attr-defined]
        v = await client.hmget(key, "task", "key", "expires_at", "created_at")
        if v[0] is None:
            return None
        return WaitpointRow(waitpoint_id, v[0].decode(), v[1].decode(), int(v[2]), int(v[3]))

    async def waitpoints_list(self, p: WaitpointsList) -> list[WaitpointInfo]:
        client: Any = self._c()  # type: ignore[attr-defined]
        k: str = self._k  # type: ignore[attr-defined]
        run: Any = self._run  # type: ignore[attr-defined]
        ids = sorted(
            i.decode()
            for i in await run("waitpoints_list", lambda: client.smembers(k + "wpt:" + p.task_id))
        )
        if not ids:
            return []
        pipe = client.pipeline(transaction=True)  # one consistent view of the task's keys
        for i in ids:
            pipe.hmget(k + "wp:" + i, "task", "key", "created_at", "expires_at", "closed")
        pipe.lrange(k + "sc:" + p.task_id, 0, -1)  # consumed by its latest resume
        pipe.lrange(k + "su:" + p.task_id, 0, -1)  # not consumed yet
        *rows, consumed, pending = await run("waitpoints_list", pipe.execute)
        signals: dict[str, list[SignalRow]] = {}
        for entry in (*consumed, *pending):
            sig = rec.signal_entry(entry)
            signals.setdefault(sig.waitpoint_id, []).append(sig)
        out = [
            WaitpointInfo(
                i,
                task.decode(),
                key.decode(),
                int(created),
                int(expires),
                None if closed is None else closed.decode(),
                None,
                tuple(signals.get(i, ())),
            )
            for i, (task, key, created, expires, closed) in zip(ids, rows, strict=True)
            if task is not None
        ]
        out.sort(key=lambda w: (w.created_at_ms, w.id))
        return out[: p.limit]

    async def signal_deliver(self, p: SignalDeliver) -> DeliverOutcome:
        params: dict[str, Any] = {"wp": p.waitpoint_id, "name": p.name, "payload": 2}
        if p.idempotency_key is not None:
            params["idem"] = p.idempotency_key
        out = await self._call(
            "fm_signal_deliver", _with_now(params, p.now_ms), [p.payload], durable=True
        )
        return DeliverOutcome(
            DeliverStatus(out["status"]), out.get("reason"), bool(out.get("resumed"))
        )

    async def task_suspend(self, p: TaskSuspend) -> SuspendStatus:
        decode_condition(p.condition)  # a bad condition fails before any write
        params: dict[str, Any] = {
            "id": p.task_id,
            "epoch": p.epoch,
            "condition": p.condition.decode(),
            "on_timeout": OnTimeout(p.on_timeout).value,
            "detail": suspend_detail(p),
        }
        if p.timeout_ms is not None:
            params["timeout"] = p.timeout_ms
        self._leases.name(params, p.task_id, p.epoch)
        out = await self._call("fm_task_suspend", _with_now(params, p.now_ms))
        status = SuspendStatus(out["status"])
        if status is SuspendStatus.SUSPENDED:  # the lease was released
            self._leases.drop(p.task_id, p.epoch)
        return status

    async def suspensions_expire(self, p: SuspensionsExpire) -> int:
        if p.limit <= 0:
            return 0
        params: dict[str, Any] = {"limit": p.limit, **_TIMEOUT_ERRORS}
        out = await self._call("fm_suspensions_expire", _with_now(params, p.now_ms))
        return int(out["n"])

    async def resume_signals(self, task_id: str) -> list[SignalRow]:
        rows = await self._fcall("fm_resume_signals", {"id": task_id})
        return [SignalRow(w.decode(), n.decode(), pl, int(a)) for w, n, pl, a in rows]

    async def frames_append(self, p: FrameAppend) -> FrameRef:
        if len(p.payload) > MAX_FRAME_BYTES:
            raise FrameTooLarge("an output frame", len(p.payload), MAX_FRAME_BYTES)
        params: dict[str, Any] = {"id": p.task_id, "epoch": p.epoch, "type": p.frame_type}
        blobs = [p.payload]
        params["payload"] = 2
        if p.metadata is not None:
            blobs.append(p.metadata)
            params["metadata"] = 3
        self._leases.name(params, p.task_id, p.epoch)
        out = await self._call("fm_frames_append", _with_now(params, p.now_ms), blobs)
        return FrameRef(int(out["attempt"]), int(out["seq"]))

    async def frames_read(self, p: FramesRead) -> FramesPage:
        params: dict[str, Any] = {"id": p.task_id, "after": p.after, "limit": p.limit}
        if p.attempt is not None:
            params["attempt"] = p.attempt
        got = await self._fcall("fm_frames_read", params)
        if got[0] == b"missing":
            raise TaskNotFound(p.task_id)
        _, attempt, live, entries = got
        frames = [
            FrameRow(
                int(entry_id.split(b"-", 1)[0]),
                f[b"t"].decode(),
                f[b"p"],
                f.get(b"m"),
                int(f[b"a"]),
            )
            for entry_id, f in ((e[0], _pairs(e[1])) for e in entries)
        ]
        return FramesPage(None if attempt is None else int(attempt), frames, bool(live))

    async def wait_for_frames(self, timeout_s: float) -> None:
        await self._wait_cancellable("wo", timeout_s)


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
