"""The params and records of the task operations: insert, claim, renew, finish, maintenance,
operator calls, reads, children and on_cancel hooks (the `Store` protocol is in `protocol`).

The engine decides (retry, backoff, next state); the store applies, as a compare-and-set on
`(state, lease_epoch)`. Times are integer milliseconds since the Unix epoch; a `now_ms` of
`None` means "the store's own clock" (the database's, for a server backend), which is what
production code passes. Tests pass a fixed `now_ms` to drive time without sleeping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from ..._states import Phase, State
from .budgets import ClaimLimit
from .dag import NewWorkflow
from .records import ClaimedRow as ClaimedRow
from .records import ErrorInfo as ErrorInfo
from .records import LeaseRef as LeaseRef

OnDuplicate = Literal["skip", "replace", "reject"]
ON_DUPLICATE_CHOICES: tuple[str, ...] = ("skip", "replace", "reject")


@dataclass(slots=True)
class NewTask:
    """One task to insert. At most one of `delay_ms` (store clock) and `run_at_ms` is set.

    Not frozen, unlike the params classes: one is built per submitted task, and a frozen
    dataclass costs three times as much to construct.
    """

    id: str
    kind: str
    payload: bytes
    queue: str = "default"
    priority: int = 0
    delay_ms: int | None = None
    run_at_ms: int | None = None
    ttl_ms: int | None = None
    dedup_key: str | None = None
    max_attempts: int = 3
    retry_policy: bytes = b"{}"
    timeout_ms: int | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    parent_id: str | None = None
    # Children: a key unique among the parent's children for the parent's whole life, so an
    # execute that runs again does not spawn twice (even children that already ended).
    child_key: str | None = None
    fail_fast: bool = True  # as a parent: the first child failure fails this task
    has_on_cancel: bool = False  # an executor: cancellation leaves an on_cancel hook to run
    # Dependencies (see `dag`): the ids of upstream tasks, stored or in this batch.
    # A task with any starts `blocked`; it cannot also be delayed or be a child.
    depends_on: Sequence[str] = ()
    upstream_policy: str = "skip"
    # An opaque reference the engine evaluates when the task is claimed (a workflow `when=`).
    condition: str | None = None
    workflow_id: str | None = None  # a node of this workflow run, named `node`
    node: str | None = None
    budget_id: str | None = None  # not claimed while this budget is hard-breached


@dataclass(frozen=True, slots=True)
class TasksInsert:
    """Insert tasks. With `fence`, the insert is a spawn: refused with `LeaseLost` unless that
    task is running at that epoch. Every distinct `parent_id` must name an active task
    (`InvalidParent` otherwise); its child counters grow in the same transaction."""

    tasks: Sequence[NewTask]
    on_duplicate: OnDuplicate = "skip"
    now_ms: int | None = None
    fence: LeaseRef | None = None
    workflow: NewWorkflow | None = None  # a run whose nodes are these tasks


class InsertStatus(StrEnum):
    INSERTED = "inserted"
    SKIPPED = "skipped"
    REPLACED = "replaced"


@dataclass(frozen=True, slots=True)
class InsertOutcome:
    """`id` is the task that now stands for the request: the new one, or the existing one."""

    id: str
    status: InsertStatus


@dataclass(frozen=True, slots=True)
class TasksClaim:
    """Claim up to `limit` ready tasks of these queues and kinds, best first. Tasks of a
    hard-breached budget are left ready. With `limits`, the claim also keeps every
    concurrency cap and rate limit among them, atomically with the other claims that pass
    them, and returns `ClaimedRows` (saying what held tasks back).

    Each claimed row: state running, `attempts + 1` (its `ClaimedRow.attempt`), a new lease
    (`lease_epoch + 1`, expiring `lease_ttl_ms` from now on the store's lease clock), and
    the lease's *started* flag set to `start`. `start=True` (the default, and what a
    claimer's claim uses: the caller holds the task) says the handler starts now: the
    attempt counts. `start=False` is a prefetch: the row waits in the worker, and its lease
    is marked started by `leases_renew(start=True)` before its handler runs. The reaper
    gives an expired unstarted lease back uncharged (see `ExpiredLease.started`).
    """

    worker_id: str
    queues: Sequence[str]
    kinds: Sequence[str]
    limit: int
    lease_ttl_ms: int
    now_ms: int | None = None
    limits: Sequence[ClaimLimit] = ()
    start: bool = True


@dataclass(frozen=True, slots=True)
class LeasesRenew:
    """Extend each lease held at its epoch (state running) to `lease_ttl_ms` from now on
    the lease clock. A lease is valid until the reaper reclaims it: renewing one whose time
    has passed but that was not reclaimed yet succeeds. With `start=True`, each held lease
    is also marked started (its handler starts now: the attempt counts), in the same
    atomic write; an outcome with `held=False` means that handler must not run."""

    leases: Sequence[LeaseRef]
    lease_ttl_ms: int
    now_ms: int | None = None
    start: bool = False


@dataclass(frozen=True, slots=True)
class RenewOutcome:
    task_id: str
    held: bool
    cancel_requested: bool
    expires_at_ms: int | None


@dataclass(frozen=True, slots=True)
class Finish:
    """End (or park) a running attempt, fenced by `epoch`.

    `target` is decided by the engine: completed, failed, dead_lettered, cancelled,
    scheduled or ready (retry / delay), or ready with `release=True` (shutdown: the
    attempt is given back). For `scheduled`, exactly one of `delay_ms` / `run_at_ms`.
    """

    task_id: str
    epoch: int
    target: State
    result: bytes | None = None
    error: ErrorInfo | None = None
    delay_ms: int | None = None
    run_at_ms: int | None = None
    release: bool = False
    expired_lease: bool = False  # the reaper's finish: applies only if the lease has expired


@dataclass(frozen=True, slots=True)
class TasksFinish:
    items: Sequence[Finish]
    now_ms: int | None = None


class FinishStatus(StrEnum):
    APPLIED = "applied"
    ALREADY = "already"  # the same finish with the same fence was applied before
    LEASE_LOST = "lease_lost"


@dataclass(frozen=True, slots=True)
class FinishOutcome:
    task_id: str
    status: FinishStatus
    state: State | None


@dataclass(frozen=True, slots=True)
class TasksPromote:
    limit: int = 1000
    now_ms: int | None = None


@dataclass(frozen=True, slots=True)
class TasksExpire:
    limit: int = 1000
    now_ms: int | None = None


@dataclass(frozen=True, slots=True)
class LeasesExpired:
    """Running tasks whose lease has expired, oldest first: judged on the store's lease
    clock, never a worker's wall clock (PostgreSQL: the server's clock; SQLite: the host's
    boot-time clock with its boot id, so a lease written before a reboot is expired; an
    injected `now_ms` is compared as given). Read only: the reaper then finishes each with
    `Finish(expired_lease=True)`, which applies only if the lease is still expired."""

    limit: int = 1000
    now_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ExpiredLease:
    """An expired lease. `started`: its handler had started (the claim said `start=True`,
    or a renewal with `start=True` came later). The engine ends a started attempt as a
    retryable `lease_expired` failure that counts toward `max_attempts`, and gives an
    unstarted one back uncharged (`Finish(target=ready, release=True)`)."""

    task_id: str
    kind: str
    epoch: int
    attempt: int
    max_attempts: int
    retry_policy: bytes
    lease_owner: str | None
    cancel_requested: bool
    started: bool = True


@dataclass(frozen=True, slots=True)
class TaskCancel:
    task_id: str
    reason: str = "cancelled by operator"
    now_ms: int | None = None


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    """`state` after the call; `requested` when a running task was asked to stop."""

    task_id: str
    state: State
    requested: bool


@dataclass(frozen=True, slots=True)
class TaskRetry:
    """Operator retry/replay of a failed or dead-lettered task: a fresh attempt budget."""

    task_id: str
    now_ms: int | None = None


@dataclass(frozen=True, slots=True)
class TaskProgress:
    task_id: str
    epoch: int
    pct: float
    message: str | None = None
    now_ms: int | None = None


@dataclass(frozen=True, slots=True)
class TasksList:
    """`tasks_list`: at most `limit` tasks in submission order after task `after_id`, that
    match every filter given: one of `states`, `queue`, `kind`; the tag `tag_key` (with
    the value `tag_value` when that is given too); and `text`, a prefix of the task's id
    or of its dedup key. Every filter is exact (none stops early and misses a match); on
    the SQL backends each one is served by an index, so a page costs about the same on
    a million rows as on a thousand."""

    states: Sequence[State] = ()
    queue: str | None = None
    kind: str | None = None
    limit: int = 100
    after_id: str | None = None
    tag_key: str | None = None
    tag_value: str | None = None  # only with `tag_key`
    text: str | None = None


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: str
    kind: str
    queue: str
    priority: int
    state: State
    phase: Phase
    attempts: int
    max_attempts: int
    payload: bytes
    result: bytes | None
    error: ErrorInfo | None
    tags: dict[str, str]
    dedup_key: str | None
    parent_id: str | None
    progress_pct: float | None
    progress_message: str | None
    lease_epoch: int
    lease_owner: str | None
    lease_expires_at_ms: int | None
    cancel_requested: bool
    timeout_ms: int | None
    created_at_ms: int
    updated_at_ms: int
    run_at_ms: int | None
    expires_at_ms: int | None
    started_at_ms: int | None
    finished_at_ms: int | None


@dataclass(frozen=True, slots=True)
class ResultRow:
    task_id: str
    state: State
    result: bytes | None
    error: ErrorInfo | None


@dataclass(frozen=True, slots=True)
class CountRow:
    queue: str
    state: State
    count: int


@dataclass(frozen=True, slots=True)
class EventsRead:
    after: int = 0
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class Event:
    """A state change. `id` increases; pass the last one seen as `after` to read on."""

    id: int
    task_id: str
    kind: str
    state: State
    at_ms: int
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class TaskWaitChildren:
    """Execute returned `memo`: park the task until its children end (fenced).

    The memo is stored in the same transaction, so execute never runs again. With no child
    outstanding the task goes straight to `ready` in phase finalize; with `fail_fast` and a
    child already failed, it fails (cancelling what is left, leaving its on_cancel hook)."""

    task_id: str
    epoch: int
    memo: bytes
    now_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ChildrenPage:
    """One page of a parent's children in spawn order; pass the last `seq` as `after_seq`."""

    parent_id: str
    kinds: Sequence[str] = ()
    states: Sequence[State] = ()
    after_seq: int = 0
    limit: int = 500


@dataclass(frozen=True, slots=True)
class ChildRow:
    seq: int
    id: str
    kind: str
    state: State
    result: bytes | None
    error: ErrorInfo | None
    attempts: int


@dataclass(frozen=True, slots=True)
class ErrorGroup:
    message: str
    count: int
    example_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ChildrenSummary:
    """Counts of a parent's children by state, and their most common error messages."""

    parent_id: str
    total: int
    by_state: dict[State, int]
    top_errors: tuple[ErrorGroup, ...]


@dataclass(frozen=True, slots=True)
class ChildrenSummaryQuery:
    parent_id: str
    top_errors: int = 5
    examples: int = 3


@dataclass(frozen=True, slots=True)
class HooksClaim:
    """Claim pending on_cancel hooks of ended tasks (each under its own short lease)."""

    worker_id: str
    kinds: Sequence[str]
    limit: int
    lease_ttl_ms: int
    now_ms: int | None = None


@dataclass(frozen=True, slots=True)
class HookRow:
    task_id: str
    kind: str
    hook: str
    payload: bytes
    memo: bytes | None
    state: State
    epoch: int
    attempt: int


@dataclass(frozen=True, slots=True)
class HookDone:
    """The hook ran (`ok`), or failed; a failed hook is tried again up to `max_attempts`."""

    task_id: str
    epoch: int
    ok: bool
    max_attempts: int = 3
    now_ms: int | None = None
