"""The operator's operations in the Redis store (see `contract.admin`).

Each is one FCALL on the partition: the worker registry (`wk:<id>` hashes, ids in `wks`),
queue pause flags (the hash `qp`, read by every claim in the same call that picks its
tasks), the gauges (the per-state counts kept by every transition, and the ready index
walked per queue), and retention: a purge picks its batch off the finish-time index `fin`
and deletes each task with everything it owns in the same call.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..._states import State
from ..contract.admin import (
    QueueRow,
    QueueSetPaused,
    QueuesList,
    TasksPurge,
    WorkerHeartbeat,
    WorkerRow,
    WorkersList,
    WorkersPage,
    WorkersPrune,
)


def _with_now(params: dict[str, Any], now_ms: int | None) -> dict[str, Any]:
    if now_ms is not None:
        params["now"] = now_ms
    return params


def _worker(row: Sequence[Any]) -> WorkerRow:
    worker_id, data, last_seen, stopped_at = row
    d = json.loads(data)
    return WorkerRow(
        worker_id=worker_id.decode(),
        host=d["host"],
        pid=int(d["pid"]),
        version=d["version"],
        queues=tuple(d["queues"]),
        kinds=tuple(d["kinds"]),
        concurrency=int(d["concurrency"]),
        started_at_ms=int(d["started_at_ms"]),
        last_seen_ms=int(last_seen),
        heartbeat_ms=int(d["heartbeat_ms"]),
        in_flight=int(d["in_flight"]),
        stopped_at_ms=None if stopped_at is None else int(stopped_at),
    )


class RedisAdminMixin:
    """The `AdminStore` operations of `RedisStore`."""

    if TYPE_CHECKING:

        async def _call(
            self, fn: str, params: dict[str, Any], blobs: Sequence[bytes] = ()
        ) -> Any: ...

        async def _fcall(
            self, fn: str, params: dict[str, Any], blobs: Sequence[bytes] = ()
        ) -> Any: ...

    async def worker_heartbeat(self, p: WorkerHeartbeat) -> None:
        data = {
            "host": p.host,
            "pid": p.pid,
            "version": p.version,
            "queues": list(p.queues),
            "kinds": list(p.kinds),
            "concurrency": p.concurrency,
            "started_at_ms": p.started_at_ms,
            "heartbeat_ms": p.heartbeat_ms,
            "in_flight": p.in_flight,
        }
        params = {"id": p.worker_id, "data": json.dumps(data), "stopped": p.stopped}
        await self._call("fm_worker_heartbeat", _with_now(params, p.now_ms))

    async def workers_list(self, p: WorkersList) -> WorkersPage:
        now, rows = await self._fcall("fm_workers_list", _with_now({}, p.now_ms))
        workers = sorted((_worker(r) for r in rows), key=lambda w: w.worker_id)
        return WorkersPage(int(now), workers)

    async def workers_prune(self, p: WorkersPrune) -> int:
        params = {"older_than": p.older_than_ms}
        out = await self._call("fm_workers_prune", _with_now(params, p.now_ms))
        return int(out["n"])

    async def queue_set_paused(self, p: QueueSetPaused) -> bool:
        params = {"queue": p.queue, "paused": p.paused}
        out = await self._call("fm_queue_set_paused", _with_now(params, p.now_ms))
        return bool(out["changed"])

    async def queues_list(self, p: QueuesList) -> list[QueueRow]:
        now, counts, flags, oldest = await self._fcall("fm_queues_list", _with_now({}, p.now_ms))
        by_queue: dict[str, dict[State, int]] = defaultdict(dict)
        for queue, state, n in counts:
            by_queue[queue.decode()][State(state.decode())] = int(n)
        paused = {q.decode(): bool(flag) for q, flag in flags}
        ready_at = {q.decode(): int(at) for q, at in oldest}
        now = int(now)
        return [
            QueueRow(
                name=name,
                paused=paused.get(name, False),
                counts=by_queue.get(name, {}),
                oldest_ready_age_ms=(
                    None if name not in ready_at else max(0, now - ready_at[name])
                ),
            )
            for name in sorted(set(by_queue) | set(paused))
        ]

    async def tasks_purge(self, p: TasksPurge) -> int:
        if p.limit <= 0 or not p.states:
            return 0
        params = {
            "before": p.before_ms,
            "states": [State(s).value for s in p.states],
            "limit": p.limit,
        }
        out = await self._call("fm_tasks_purge", _with_now(params, p.now_ms))
        return int(out["n"])
