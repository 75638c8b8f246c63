"""Schedules in the Redis store (see `contract.schedules`).

One hash per schedule (`sd:<name>`) and the set of names (`sdn`), under the partition's
hash tag. Every operation is one FCALL: an upsert writes every declared schedule and
marks the undeclared ones together; a firing compares and sets `version` and
`next_fire_ms` and inserts the tick's tasks (on_duplicate "skip") in the same call, so
concurrent firings of one tick insert once, and a firing either advanced the schedule and
inserted its tasks, or did neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import msgspec

from ..contract.schedules import (
    FireOutcome,
    FireStatus,
    ScheduleDecl,
    ScheduleFire,
    SchedulePause,
    ScheduleRow,
    SchedulesList,
    SchedulesUpsert,
)
from ..contract.tasks import InsertOutcome, InsertStatus
from . import _records as rec

_dec = msgspec.msgpack.Decoder()


def _opt_int(h: rec.Hash, name: bytes) -> int | None:
    v = h.get(name)
    return None if v is None else int(v)


def schedule_row(flat: Sequence[bytes]) -> ScheduleRow:
    """A schedule's hash, as a function returns it (a flat HGETALL reply)."""
    h = rec.as_hash(flat)
    tz = h.get(b"tz")
    return ScheduleRow(
        name=h[b"name"].decode(),
        kind=h[b"kind"].decode(),
        trigger=h[b"trigger"].decode(),
        tz=None if tz is None else tz.decode(),
        misfire=h[b"misfire"].decode(),
        jitter_ms=int(h[b"jitter_ms"]),
        payload=h[b"payload"],
        queue=h[b"queue"].decode(),
        priority=int(h[b"priority"]),
        max_attempts=int(h[b"max_attempts"]),
        retry_policy=h[b"retry_policy"],
        timeout_ms=_opt_int(h, b"timeout_ms"),
        definition=h[b"definition"].decode(),
        version=int(h[b"version"]),
        paused=h[b"paused"] == b"1",
        next_fire_ms=int(h[b"next_fire_ms"]),
        last_tick_ms=_opt_int(h, b"last_tick_ms"),
        last_fired_at_ms=_opt_int(h, b"last_fired_at_ms"),
        fired=int(h[b"fired"]),
        declared_at_ms=int(h[b"declared_at_ms"]),
        undeclared_since_ms=_opt_int(h, b"undeclared_since_ms"),
        created_at_ms=int(h[b"created_at"]),
    )


def _rows(flats: Sequence[Sequence[bytes]]) -> list[ScheduleRow]:
    return sorted((schedule_row(f) for f in flats), key=lambda r: r.name)


def _decl(d: ScheduleDecl, blobs: rec.Blobs) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": d.name,
        "kind": d.kind,
        "trigger": d.trigger,
        "misfire": d.misfire,
        "jitter_ms": d.jitter_ms,
        "payload": blobs.add(d.payload),
        "queue": d.queue,
        "priority": d.priority,
        "max_attempts": d.max_attempts,
        "retry_policy": blobs.add(d.retry_policy),
        "definition": d.definition,
        "paused": d.paused,
        "first_fire_ms": d.first_fire_ms,
    }
    if d.tz is not None:
        out["tz"] = d.tz
    if d.timeout_ms is not None:
        out["timeout_ms"] = d.timeout_ms
    return out


def _with_now(params: dict[str, Any], now_ms: int | None) -> dict[str, Any]:
    if now_ms is not None:
        params["now"] = now_ms
    return params


class RedisSchedulesMixin:
    """The `SchedulesStore` operations of `RedisStore`."""

    if TYPE_CHECKING:

        async def _fcall(
            self,
            fn: str,
            params: dict[str, Any],
            blobs: Sequence[bytes] = (),
            *,
            durable: bool = False,
        ) -> Any: ...

        def _raise_reply(self, encoded: bytes) -> NoReturn: ...

    async def schedules_upsert(self, p: SchedulesUpsert) -> list[ScheduleRow]:
        blobs = rec.Blobs()
        params = {"schedules": [_decl(d, blobs) for d in p.schedules]}
        flats = await self._fcall(
            "fm_schedules_upsert", _with_now(params, p.now_ms), blobs.items, durable=True
        )
        return _rows(flats)

    async def schedules_list(self, p: SchedulesList) -> list[ScheduleRow]:
        names = list(dict.fromkeys(p.names))
        return _rows(await self._fcall("fm_schedules_get", {"names": names}))

    async def schedules_fire(self, p: ScheduleFire) -> FireOutcome:
        blobs = rec.Blobs()
        params: dict[str, Any] = {
            "name": p.name,
            "expected_version": p.expected_version,
            "expected_next_ms": p.expected_next_ms,
            "next_fire_ms": p.next_fire_ms,
            "tasks": [rec.new_task(t, blobs) for t in p.tasks],
        }
        if p.last_tick_ms is not None:
            params["last_tick_ms"] = p.last_tick_ms
        status, flat, outcomes = await self._fcall(
            "fm_schedules_fire", _with_now(params, p.now_ms), blobs.items, durable=True
        )
        if status == b"err":
            self._raise_reply(flat)
        row = None if flat is None else schedule_row(flat)
        if status != b"fired":
            return FireOutcome(FireStatus(status.decode()), row)
        inserted = tuple(
            InsertOutcome(o[0].decode(), InsertStatus(o[1].decode())) for o in outcomes
        )
        return FireOutcome(FireStatus.FIRED, row, inserted)

    async def schedules_set_paused(self, p: SchedulePause) -> ScheduleRow | None:
        params: dict[str, Any] = {"name": p.name, "paused": p.paused}
        if p.next_fire_ms is not None:
            params["next_fire_ms"] = p.next_fire_ms
        flat = await self._fcall(
            "fm_schedules_set_paused", _with_now(params, p.now_ms), durable=True
        )
        return None if flat is None else schedule_row(flat)
