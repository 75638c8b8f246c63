"""The rows of a submit: options checked once, one `NewTask` per payload, task ids.

Submits, spawns and workflows all build their rows here; a leaf below the engine (it
imports only the task definition, the checks and the store's records).
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ._limits import check_budget_id
from ._task import TaskDef, check_queue, positive_ms
from ._trace_context import inject_trace_context
from .errors import ConfigurationError
from .store.contract.dag import UpstreamPolicy
from .store.contract.tasks import ON_DUPLICATE_CHOICES, NewTask

MAX_KEY_LEN = 512
_POLICIES = tuple(p.value for p in UpstreamPolicy)


def check_policy(value: str) -> str:
    """An `on_upstream_failure` value (`ConfigurationError` otherwise)."""
    if value not in _POLICIES:
        raise ConfigurationError(
            f"on_upstream_failure must be one of {', '.join(_POLICIES)}, got {value!r}"
        )
    return value


def new_task_id(_urandom: Callable[[int], bytes] = os.urandom) -> str:
    """A time-ordered UUID (version 7 layout): sortable, unique across processes."""
    return new_task_ids(1, _urandom)[0]


def new_task_ids(
    n: int, _urandom: Callable[[int], bytes] = os.urandom, *, near: str | None = None
) -> list[str]:
    """`n` time-ordered UUIDs (version 7 layout) from one call for randomness.

    `near`: an id whose placement tag (`id_tag`) the new ids share, as their last 4 hex
    digits; a partitioned store keeps them in that id's partition (a parent's children, a
    workflow run's nodes). The other 58 random bits keep them unique.
    Built from hex strings rather than `uuid.UUID`: it is on the submit hot path.
    """
    stamp = (time.time_ns() // 1_000_000).to_bytes(6, "big").hex()
    rand = _urandom(10 * n).hex()
    ids = []
    for i in range(0, 20 * n, 20):
        r = rand[i : i + 20]
        variant = "89ab"[int(r[0], 16) & 3]
        ids.append(f"{stamp[:8]}-{stamp[8:12]}-7{r[1:4]}-{variant}{r[5:8]}-{r[8:20]}")
    if near is not None:
        tag = f"{id_tag(near):04x}"
        ids = [id[:-4] + tag for id in ids]
    return ids


_HEX = frozenset("0123456789abcdefABCDEF")


def id_tag(task_id: str) -> int:
    """The placement tag of a task id, 0..65535: its last 4 hex digits when it ends in
    them (every id `new_task_ids` mints), else the low 16 bits of the CRC-32 of the id.

    A pure function of the id that every client computes alone; a store of N partitions
    keeps the task in partition `id_tag(id) % N`.
    """
    tail = task_id[-4:]
    if len(tail) == 4 and _HEX.issuperset(tail):
        return int(tail, 16)
    return zlib.crc32(task_id.encode()) & 0xFFFF


def key_tag(kind: str, key: str) -> int:
    """The placement tag of a dedup key (per task kind, as the stores scope it), 0..65535:
    two submits of the same kind and key get ids with the same tag, so they meet in the
    same partition whatever the partition count."""
    return zlib.crc32(f"{len(kind)}:{kind}{key}".encode()) & 0xFFFF


def check_on_duplicate(value: str) -> None:
    if value not in ON_DUPLICATE_CHOICES:
        raise ConfigurationError(
            f"on_duplicate must be one of {', '.join(ON_DUPLICATE_CHOICES)}, got {value!r}"
        )


def check_key(key: str | None) -> str | None:
    if key is not None and (not isinstance(key, str) or not key or len(key) > MAX_KEY_LEN):
        raise ConfigurationError(
            f"key must be a non-empty string of at most {MAX_KEY_LEN} characters, got {key!r}"
        )
    return key


SPAWN_OPTIONS = frozenset(
    {"delay", "run_at", "priority", "queue", "tags", "ttl", "fail_fast", "budget"}
)


@dataclass(frozen=True, slots=True)
class Opts:
    """Submit options as the caller gave them (None: the task's default)."""

    delay: timedelta | None = None
    run_at: datetime | None = None
    priority: int | None = None
    queue: str | None = None
    tags: Mapping[str, str] | None = None
    ttl: timedelta | None = None
    parent: str | None = None
    fail_fast: bool | None = None
    budget: str | None = None
    depends_on: tuple[str, ...] = ()
    upstream_policy: str = "skip"


@dataclass(frozen=True, slots=True)
class Common:
    """The options shared by every task of one submit call, validated once."""

    queue: str
    priority: int
    delay_ms: int | None
    run_at_ms: int | None
    ttl_ms: int | None
    tags: Mapping[str, str]
    parent_id: str | None
    fail_fast: bool
    budget_id: str | None
    depends_on: tuple[str, ...] = ()
    upstream_policy: str = "skip"

    @staticmethod
    def build(tdef: TaskDef, o: Opts) -> Common:
        if o.delay is not None and o.run_at is not None:
            raise ConfigurationError("pass delay or run_at, not both")
        run_at_ms = None
        if o.run_at is not None:
            if not isinstance(o.run_at, datetime) or o.run_at.tzinfo is None:
                raise ConfigurationError(
                    f"run_at must be a timezone-aware datetime, got {o.run_at!r}"
                )
            run_at_ms = int(o.run_at.timestamp() * 1000)
        if o.priority is not None and (
            not isinstance(o.priority, int) or isinstance(o.priority, bool)
        ):
            raise ConfigurationError(f"priority must be an int, got {o.priority!r}")
        tags = dict(o.tags or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
            raise ConfigurationError("tags must map strings to strings")
        inject_trace_context(tags)  # the submit's span, parent of the attempts' spans
        if o.parent is not None and (not isinstance(o.parent, str) or not o.parent):
            raise ConfigurationError(f"parent must be a task id, got {o.parent!r}")
        if o.depends_on:
            if o.parent is not None or o.delay is not None or o.run_at is not None:
                raise ConfigurationError(
                    "a task with depends_on cannot also be a child or be delayed"
                )
            check_policy(o.upstream_policy)
        return Common(
            queue=check_queue(o.queue) if o.queue is not None else tdef.queue,
            priority=int(o.priority) if o.priority is not None else tdef.priority,
            delay_ms=positive_ms("delay", o.delay, allow_zero=True),
            run_at_ms=run_at_ms,
            ttl_ms=positive_ms("ttl", o.ttl) if o.ttl is not None else tdef.ttl_ms,
            tags=tags,
            parent_id=o.parent,
            fail_fast=tdef.fail_fast if o.fail_fast is None else bool(o.fail_fast),
            depends_on=o.depends_on,
            upstream_policy=o.upstream_policy,
            budget_id=tdef.budget if o.budget is None else check_budget_id(o.budget),
        )

    def tasks(
        self,
        tdef: TaskDef,
        payloads: list[bytes],
        keys: list[str | None] | None,
        child_keys: list[str | None] | None,
    ) -> list[NewTask]:
        """One NewTask per payload; locals rather than attribute lookups: a hot loop."""
        n = len(payloads)
        # children next to their parent; a keyed task next to the other submits of its key
        ids = new_task_ids(n, near=self.parent_id)
        if keys is not None and self.parent_id is None:
            ids = [
                id if key is None else f"{id[:-4]}{key_tag(tdef.name, key):04x}"
                for id, key in zip(ids, keys, strict=True)
            ]
        none: list[str | None] = [None] * n
        kind, queue, priority = tdef.name, self.queue, self.priority
        delay_ms, run_at_ms, ttl_ms, tags = self.delay_ms, self.run_at_ms, self.ttl_ms, self.tags
        max_attempts, policy, timeout_ms = (
            tdef.retry.max_attempts,
            tdef.retry_policy,
            tdef.timeout_ms,
        )
        parent_id, fail_fast, budget_id = self.parent_id, self.fail_fast, self.budget_id
        on_cancel = tdef.executor is not None and tdef.executor.has_on_cancel
        news = [
            NewTask(
                id=id,
                kind=kind,
                payload=payload,
                queue=queue,
                priority=priority,
                delay_ms=delay_ms,
                run_at_ms=run_at_ms,
                ttl_ms=ttl_ms,
                dedup_key=key,
                max_attempts=max_attempts,
                retry_policy=policy,
                timeout_ms=timeout_ms,
                tags=tags,
                parent_id=parent_id,
                child_key=child_key,
                fail_fast=fail_fast,
                has_on_cancel=on_cancel,
                budget_id=budget_id,
            )
            for id, payload, key, child_key in zip(
                ids, payloads, keys or none, child_keys or none, strict=True
            )
        ]
        if self.depends_on:  # never with a delay or a parent (refused in `build`)
            deps, up_policy = list(self.depends_on), self.upstream_policy
            for t in news:
                t.depends_on, t.upstream_policy = deps, up_policy
        return news


def spawn_options(parent_id: str, given: Mapping[str, Any]) -> Opts:
    """Submit options for children spawned from a handler (`ctx.spawn(..., delay=...)`)."""
    unknown = set(given) - SPAWN_OPTIONS
    if unknown:
        raise ConfigurationError(
            f"spawn does not take {', '.join(sorted(unknown))}; it takes "
            f"{', '.join(sorted(SPAWN_OPTIONS))}"
        )
    return Opts(parent=parent_id, **given)


def kind_names(kind: TaskDef | str | Iterable[TaskDef | str] | None) -> tuple[str, ...]:
    """Task names for a filter given as task objects or names (None: every kind)."""
    if kind is None:
        return ()
    if isinstance(kind, TaskDef | str):
        kind = [kind]
    return tuple(k.name if isinstance(k, TaskDef) else str(k) for k in kind)
