"""Turning stored task hashes and function replies into the contract's records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from ..._states import Phase, State
from .._common.serde import decode_error, decode_tags, encode_tags
from ..contract.budgets import ClaimLimit
from ..contract.signals import SignalRow
from ..contract.tasks import ClaimedRow, Event, ExpiredLease, NewTask, TaskRecord, TasksInsert

Hash = Mapping[bytes, bytes]


def _s(h: Hash, name: bytes) -> str | None:
    v = h.get(name)
    return None if v is None else v.decode()


def _i(h: Hash, name: bytes) -> int | None:
    v = h.get(name)
    return None if v is None else int(v)


def as_hash(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    """An HGETALL reply given as a flat list (what a function returns) as a dict."""
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def task_record(h: Hash) -> TaskRecord:
    pct = h.get(b"progress_pct")
    return TaskRecord(
        id=h[b"id"].decode(),
        kind=h[b"kind"].decode(),
        queue=h[b"queue"].decode(),
        priority=int(h[b"priority"]),
        state=State(h[b"state"].decode()),
        phase=Phase(h[b"phase"].decode()),
        attempts=int(h[b"attempts"]),
        max_attempts=int(h[b"max_attempts"]),
        payload=h[b"payload"],
        result=h.get(b"result"),
        error=decode_error(h.get(b"error")),
        tags=decode_tags(h.get(b"tags")),
        dedup_key=_s(h, b"dedup_key"),
        parent_id=_s(h, b"parent_id"),
        progress_pct=None if pct is None else float(pct),
        progress_message=_s(h, b"progress_message"),
        lease_epoch=int(h[b"lease_epoch"]),
        lease_owner=_s(h, b"lease_owner"),
        lease_expires_at_ms=_i(h, b"lease_expires_at"),
        cancel_requested=h.get(b"cancel_requested") == b"1",
        timeout_ms=_i(h, b"timeout_ms"),
        created_at_ms=int(h[b"created_at"]),
        updated_at_ms=int(h[b"updated_at"]),
        run_at_ms=_i(h, b"run_at"),
        expires_at_ms=_i(h, b"expires_at"),
        started_at_ms=_i(h, b"started_at"),
        finished_at_ms=_i(h, b"finished_at"),
    )


class Blobs:
    """Binary arguments of one FCALL: passed as ARGV[2...], named in the map by index.

    Lua's cmsgpack reads no `bin` type, so bytes never go inside the MessagePack map.
    """

    def __init__(self) -> None:
        self.items: list[bytes] = []

    def add(self, data: bytes) -> int:
        self.items.append(data)
        return len(self.items) + 1  # ARGV[1] is the map


def insert_group(p: TasksInsert, fence: dict[str, Any] | None, blobs: Blobs) -> dict[str, Any]:
    """One caller's insert, as the map `fm_insert` reads (one group of `fm_insert_many`)."""
    params: dict[str, Any] = {
        "tasks": [new_task(t, blobs) for t in p.tasks],
        "mode": p.on_duplicate,
    }
    if p.now_ms is not None:
        params["now"] = p.now_ms
    if fence is not None:
        params["fence"] = fence
    if p.workflow is not None:
        params["workflow"] = {"id": p.workflow.id, "name": p.workflow.name}
    return params


def new_task(t: NewTask, blobs: Blobs) -> dict[str, Any]:
    """A task to insert, as the map `fm_insert` reads (absent keys are None)."""
    d: dict[str, Any] = {
        "id": t.id,
        "kind": t.kind,
        "payload": blobs.add(t.payload),
        "queue": t.queue,
        "priority": t.priority,
        "max_attempts": t.max_attempts,
        "retry_policy": blobs.add(t.retry_policy),
        "fail_fast": t.fail_fast,
        "has_on_cancel": t.has_on_cancel,
    }
    optional = {
        "delay": t.delay_ms,
        "run_at": t.run_at_ms,
        "ttl": t.ttl_ms,
        "key": t.dedup_key,
        "timeout": t.timeout_ms,
        "parent": t.parent_id,
        "child_key": t.child_key,
        "budget": t.budget_id,
        "condition": t.condition,
        "workflow_id": t.workflow_id,
        "node": t.node,
    }
    d.update((k, v) for k, v in optional.items() if v is not None)
    if t.tags:
        d["tags"] = encode_tags(t.tags)
    if t.depends_on:
        d["deps"] = list(t.depends_on)
        d["policy"] = t.upstream_policy
    elif t.workflow_id is not None:
        d["policy"] = t.upstream_policy
    return d


def _text(v: Any) -> str | None:
    if v is None:
        return None
    return v.decode() if isinstance(v, bytes) else str(v)


def claimed_row(r: Sequence[Any]) -> ClaimedRow:
    """A row of `fm_claim`'s reply (a positional array; absent values are nil)."""
    return ClaimedRow(
        id=r[0].decode(),
        kind=r[1].decode(),
        queue=r[2].decode(),
        priority=int(r[3]),
        payload=r[4],
        phase=Phase(r[5].decode()),
        memo=r[6],
        attempt=int(r[7]),
        max_attempts=int(r[8]),
        retry_policy=r[9],
        timeout_ms=None if r[10] is None else int(r[10]),
        lease_epoch=int(r[11]),
        lease_expires_at_ms=int(r[12]),
        parent_id=_text(r[13]),
        condition=_text(r[14]),
        workflow_id=_text(r[15]),
    )


def expired_lease(r: Sequence[Any]) -> ExpiredLease:
    return ExpiredLease(
        task_id=r[0].decode(),
        kind=r[1].decode(),
        epoch=int(r[2]),
        attempt=int(r[3]),
        max_attempts=int(r[4]),
        retry_policy=r[5],
        lease_owner=_text(r[6]),
        cancel_requested=bool(r[7]),
        started=bool(r[8]),
    )


def event(entry_id: bytes, fields: Mapping[bytes, bytes]) -> Event:
    detail = fields.get(b"d")
    return Event(
        id=int(entry_id.split(b"-", 1)[0]),
        task_id=fields[b"t"].decode(),
        kind=fields[b"k"].decode(),
        state=State(fields[b"s"].decode()),
        at_ms=int(fields[b"a"]),
        detail=None if detail is None else detail.decode(),
    )


# The header size of a msgpack str or bin by its first byte (fixstr is 0xa0..0xbf).
_HEADER = {0xD9: 2, 0xDA: 3, 0xDB: 5, 0xC4: 2, 0xC5: 3, 0xC6: 5}
_SIGNAL = msgspec.msgpack.Decoder(tuple[msgspec.Raw, msgspec.Raw, msgspec.Raw, int | float])


def _raw_bytes(raw: msgspec.Raw) -> bytes:
    """The bytes of a msgpack str or bin, undecoded (Lua packs every string as str)."""
    data = bytes(raw)
    head = 1 if 0xA0 <= data[0] <= 0xBF else _HEADER.get(data[0])
    if head is None:
        raise ValueError(f"not a msgpack string: first byte {data[0]:#x}")
    return data[head:]


def signal_entry(entry: bytes) -> SignalRow:
    """One signal as the library stores it in a task's lists: msgpack [wp, name, payload, at]."""
    wp, name, payload, at = _SIGNAL.decode(entry)
    return SignalRow(
        _raw_bytes(wp).decode(), _raw_bytes(name).decode(), _raw_bytes(payload), int(at)
    )


def claim_limit(x: ClaimLimit) -> dict[str, Any]:
    """A claim limit as `fm_claim` reads it."""
    d: dict[str, Any] = {"scope": x.scope, "name": x.name}
    if x.per_second is not None:
        d["per_second"] = float(x.per_second)
    if x.burst is not None:
        d["burst"] = x.burst
    if x.max_running is not None:
        d["max_running"] = x.max_running
    return d


def limit_now(limit: int, now_ms: int | None) -> dict[str, Any]:
    """The params of a maintenance call: a batch size, and a clock when one is given."""
    params: dict[str, Any] = {"limit": limit}
    if now_ms is not None:
        params["now"] = now_ms
    return params
