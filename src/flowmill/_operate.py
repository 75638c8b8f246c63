"""The operator's side of the App: live workers, queue pause and resume, retention (purge)
and the store-derived gauges a `/metrics` scrape or `flowmill top` reads.

Every number comes from the store on each call, so it is right with no worker running.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ._clock import from_ms, from_ms_opt
from ._states import State
from ._task import check_queue
from .errors import ConfigurationError
from .store.contract.admin import (
    PURGE_BATCH,
    QueueRow,
    QueueSetPaused,
    QueuesList,
    TasksPurge,
    WorkerRow,
    WorkersList,
    WorkerStatus,
)

if TYPE_CHECKING:
    from ._clock import Clock
    from .store._front import StoreFront
    from .store.contract import Store

RETAINED_STATES: tuple[State, ...] = (
    State.COMPLETED,
    State.FAILED,
    State.CANCELLED,
    State.SKIPPED,
    State.EXPIRED,
)
"""What retention deletes by default: every finished state but `dead_lettered` (dead
letters are kept until replayed or purged by name)."""


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker of the registry, as `app.workers()` shows it."""

    id: str
    host: str
    pid: int
    version: str
    queues: tuple[str, ...]
    kinds: tuple[str, ...]
    concurrency: int
    in_flight: int
    started_at: datetime
    last_seen: datetime
    stopped_at: datetime | None
    status: WorkerStatus
    """`alive`; `dead` when not seen for 3 heartbeat intervals; `stopped` when it said so."""
    last_seen_ago: timedelta

    @property
    def alive(self) -> bool:
        return self.status == "alive"

    @staticmethod
    def of(row: WorkerRow, now_ms: int) -> WorkerInfo:
        return WorkerInfo(
            id=row.worker_id,
            host=row.host,
            pid=row.pid,
            version=row.version,
            queues=row.queues,
            kinds=row.kinds,
            concurrency=row.concurrency,
            in_flight=row.in_flight,
            started_at=from_ms(row.started_at_ms),
            last_seen=from_ms(row.last_seen_ms),
            stopped_at=from_ms_opt(row.stopped_at_ms),
            status=row.status(now_ms),
            last_seen_ago=timedelta(milliseconds=max(0, now_ms - row.last_seen_ms)),
        )


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """A queue, as `app.list_queues()` shows it: pause flag, task counts by state, and how
    long its oldest ready task has waited (None with no ready task)."""

    name: str
    paused: bool
    counts: dict[State, int]
    oldest_ready_age: timedelta | None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @staticmethod
    def of(row: QueueRow) -> QueueInfo:
        age = row.oldest_ready_age_ms
        return QueueInfo(
            name=row.name,
            paused=row.paused,
            counts=dict(row.counts),
            oldest_ready_age=None if age is None else timedelta(milliseconds=age),
        )


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """The store-derived gauges, read in one go: what `/metrics` exports on each scrape
    (`flowmill_tasks{queue,state}`, `flowmill_queue_oldest_ready_seconds{queue}`,
    `flowmill_workers_alive`, `flowmill_dead_letters`)."""

    queues: list[QueueInfo]
    workers: list[WorkerInfo] = field(default_factory=list)

    @property
    def tasks(self) -> dict[tuple[str, State], int]:
        """Task counts by (queue, state); pairs with no task are left out."""
        return {(q.name, s): n for q in self.queues for s, n in q.counts.items()}

    @property
    def oldest_ready_seconds(self) -> dict[str, float]:
        """Per queue with ready tasks: the age of the oldest, in seconds."""
        return {
            q.name: q.oldest_ready_age.total_seconds()
            for q in self.queues
            if q.oldest_ready_age is not None
        }

    @property
    def workers_alive(self) -> int:
        return sum(w.alive for w in self.workers)

    @property
    def dead_letters(self) -> int:
        return sum(q.counts.get(State.DEAD_LETTERED, 0) for q in self.queues)


def retention_ms(retention: timedelta | None) -> int | None:
    """A retention period in ms (None: keep finished tasks for good); refuses one <= 0."""
    if retention is None:
        return None
    if not isinstance(retention, timedelta) or retention <= timedelta(0):
        raise ConfigurationError(f"retention must be a positive timedelta, got {retention!r}")
    return int(retention.total_seconds() * 1000)


def purge_states(states: Iterable[State | str] | None) -> tuple[State, ...]:
    if states is None:
        return RETAINED_STATES
    try:
        out = tuple(dict.fromkeys(State(s) for s in states))
    except ValueError as exc:
        raise ConfigurationError(f"unknown state: {exc}") from None
    if not out:
        raise ConfigurationError("purge needs at least one state")
    return out


async def purge_all(
    store: Store,
    *,
    before_ms: int,
    states: Sequence[State],
    batch: int = PURGE_BATCH,
    now_ms: int | None = None,
    progress: Callable[[int], None] | None = None,
    max_batches: int | None = None,
) -> int:
    """Purge in batches of `batch` (one transaction each) until a batch comes back short;
    `progress(n)` after each batch with how many it deleted. Returns the total."""
    total = 0
    batches = 0
    while max_batches is None or batches < max_batches:
        n = await store.tasks_purge(TasksPurge(before_ms, tuple(states), batch, now_ms))
        batches += 1
        total += n
        if progress is not None:
            progress(n)
        if n < batch:
            break
    return total


class Operations:
    """The App's operator calls (a mixin: `App` provides `store`, `clock` and `open`)."""

    if TYPE_CHECKING:
        store: StoreFront
        clock: Clock

        async def open(self) -> object: ...

    async def _store_now(self) -> int:
        now = self.clock.store_now()
        return now if now is not None else await self.store.now_ms()

    async def workers(self) -> list[WorkerInfo]:
        """Every registered worker with its status (alive, dead, stopped), by id."""
        await self.open()
        page = await self.store.workers_list(WorkersList(self.clock.store_now()))
        return [WorkerInfo.of(w, page.now_ms) for w in page.workers]

    async def pause_queue(self, name: str) -> bool:
        """Stop every worker claiming from queue `name` (submits still succeed); stored, so
        it holds across processes and restarts. Returns whether the flag changed."""
        await self.open()
        return await self.store.queue_set_paused(
            QueueSetPaused(check_queue(name), True, self.clock.store_now())
        )

    async def resume_queue(self, name: str) -> bool:
        """Let workers claim from queue `name` again (and wake them); returns whether the
        flag changed."""
        await self.open()
        return await self.store.queue_set_paused(
            QueueSetPaused(check_queue(name), False, self.clock.store_now())
        )

    async def list_queues(self) -> list[QueueInfo]:
        """Every queue with tasks or a pause flag: paused, counts by state, oldest ready
        age. (`app.queues()` is the set of queues this app's tasks are registered on.)"""
        await self.open()
        return [QueueInfo.of(r) for r in await self.store.queues_list(QueuesList(None))]

    async def metrics_snapshot(self) -> MetricsSnapshot:
        """The store-derived gauges: counts by queue and state, oldest ready age per
        queue, live workers and dead letters, all read from the store now."""
        await self.open()
        now = self.clock.store_now()
        rows = await self.store.queues_list(QueuesList(now))
        page = await self.store.workers_list(WorkersList(now))
        return MetricsSnapshot(
            [QueueInfo.of(r) for r in rows],
            [WorkerInfo.of(w, page.now_ms) for w in page.workers],
        )

    async def purge(
        self,
        *,
        older_than: timedelta,
        states: Iterable[State | str] | None = None,
        batch: int = PURGE_BATCH,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Delete finished tasks that ended more than `older_than` ago, with their events,
        frames, results and the rest, in batches of `batch` (one short transaction each);
        returns how many. `states` defaults to every finished state but dead_lettered;
        name `dead_lettered` to purge dead letters. A task whose parent, workflow run,
        children or dependents are still active is kept. `progress(n)` after each batch."""
        if not isinstance(older_than, timedelta) or older_than < timedelta(0):
            raise ConfigurationError(f"older_than must be a timedelta >= 0, got {older_than!r}")
        if batch < 1:
            raise ConfigurationError(f"batch must be >= 1, got {batch}")
        chosen = purge_states(states)
        await self.open()
        now = await self._store_now()
        before = now - int(older_than.total_seconds() * 1000)
        return await purge_all(
            self.store, before_ms=before, states=chosen, batch=batch, progress=progress
        )
