"""Params and records of the operator's operations: the worker registry, queue pause and
resume, retention (purge) and the store-derived gauges (`queues_list`).

Times are integer milliseconds since the Unix epoch; `now_ms=None` means the store's own
clock, as everywhere in the contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from ..._states import State

WorkerStatus = Literal["alive", "dead", "stopped"]

# A worker not seen for this many of its heartbeat intervals is shown dead.
DEAD_AFTER_HEARTBEATS = 3

PURGE_BATCH = 500
"""Tasks one `tasks_purge` call deletes at most (one transaction): small enough that a
purge never holds the store's write lock (SQLite) or many row locks (PostgreSQL) for long."""


@dataclass(frozen=True, slots=True)
class WorkerHeartbeat:
    """`worker_heartbeat`: create or update the registry row of worker `worker_id`.

    Every field replaces the stored one; `last_seen` becomes `now_ms` (store clock when
    None). `stopped=True` is the last heartbeat of a worker that stops: the row is kept,
    marked stopped at `now_ms`, until `workers_prune` deletes it. A later heartbeat with
    `stopped=False` (the same id started again) clears the mark."""

    worker_id: str
    host: str
    pid: int
    version: str
    queues: tuple[str, ...]
    kinds: tuple[str, ...]
    concurrency: int
    started_at_ms: int
    heartbeat_ms: int
    """How often this worker heartbeats: it is dead after `DEAD_AFTER_HEARTBEATS` of them."""
    in_flight: int = 0
    stopped: bool = False
    now_ms: int | None = None


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """One worker of the registry, as `workers_list` returns it."""

    worker_id: str
    host: str
    pid: int
    version: str
    queues: tuple[str, ...]
    kinds: tuple[str, ...]
    concurrency: int
    started_at_ms: int
    last_seen_ms: int
    heartbeat_ms: int
    in_flight: int
    stopped_at_ms: int | None

    def status(self, now_ms: int) -> WorkerStatus:
        """`stopped` once it said so; `dead` when not seen for 3 heartbeat intervals."""
        if self.stopped_at_ms is not None:
            return "stopped"
        if now_ms - self.last_seen_ms > DEAD_AFTER_HEARTBEATS * self.heartbeat_ms:
            return "dead"
        return "alive"


@dataclass(frozen=True, slots=True)
class WorkersList:
    """`workers_list`: every registry row, ordered by worker id, and the store clock's now
    (`now_ms`, or the store's own when None) to judge them by."""

    now_ms: int | None = None


@dataclass(frozen=True, slots=True)
class WorkersPage:
    """What `workers_list` returns: the rows and the instant they are judged at."""

    now_ms: int
    workers: list[WorkerRow]

    def alive(self) -> list[WorkerRow]:
        return [w for w in self.workers if w.status(self.now_ms) == "alive"]


@dataclass(frozen=True, slots=True)
class WorkersPrune:
    """`workers_prune`: delete the rows of workers last seen more than `older_than_ms`
    before now (dead or stopped ones; a live worker heartbeats far more often). Returns
    how many rows it deleted."""

    older_than_ms: int
    now_ms: int | None = None


@dataclass(frozen=True, slots=True)
class QueueSetPaused:
    """`queue_set_paused`: pause (`paused=True`) or resume queue `queue`.

    The flag is stored (it survives restarts and holds for every process): while a queue
    is paused, `tasks_claim` (plain or limited) claims none of its tasks; inserts still
    succeed and other queues are unaffected. Resuming wakes waiting workers as a ready
    insert does. Pausing a queue with no tasks is allowed (it is then listed). Returns
    whether the flag changed."""

    queue: str
    paused: bool
    now_ms: int | None = None


@dataclass(frozen=True, slots=True)
class QueuesList:
    """`queues_list`: every queue that has tasks or a stored pause flag, by name."""

    now_ms: int | None = None


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One queue: its pause flag, task counts by state (states with no task left out) and
    how long its oldest ready task has been ready (`now - updated_at` of the ready task
    written longest ago, in ms; None with no ready task)."""

    name: str
    paused: bool
    counts: Mapping[State, int] = field(default_factory=dict)
    oldest_ready_age_ms: int | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class TasksPurge:
    """`tasks_purge`: delete at most `limit` tasks in `states` (terminal states only) that
    finished before `before_ms`, oldest finish first, in one transaction; returns how
    many it deleted (call again until it returns less than `limit`).

    With each task go its result, events, frames, waitpoints, signals, suspensions and
    dependency edges; a workflow run row goes with its last node. A task is kept (not
    counted) while its parent, a task of its workflow run, one of its children or one of
    its dependents is still active, so no live tree loses a member."""

    before_ms: int
    states: tuple[State, ...]
    limit: int = PURGE_BATCH
    now_ms: int | None = None
