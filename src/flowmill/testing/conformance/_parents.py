"""Helpers of the parent/child conformance modules: orchestrator tasks that spawn,
park with `task_wait_children`, and the checks made on them.

Parents are "orchestrator" tasks of their own kinds (so that claims pick them apart from
the leaves): claimed, they spawn children fenced by their lease, then park with
`task_wait_children`. The last child's end readies the parent for finalize exactly once.
"""

from __future__ import annotations

from ..._states import Phase, State
from ...store.contract import Store
from ...store.contract.tasks import (
    ChildrenSummary,
    ClaimedRow,
    ErrorGroup,
    ErrorInfo,
    HookRow,
    HooksClaim,
    InsertOutcome,
    InsertStatus,
    LeaseRef,
    NewTask,
    TasksInsert,
    TaskWaitChildren,
)
from ._util import (
    KIND,
    T0,
    TTL,
    all_events,
    claim,
    claim_one,
    finish,
    get,
    insert,
    task,
)

ORCH = "orch"  # parents


ORCH2 = "orch2"  # their children that are parents too


ORCH3 = "orch3"


MEMO = b'{"memo": 1}'


async def start(
    store: Store,
    kind: str = ORCH,
    *,
    under: ClaimedRow | None = None,
    now: int = T0,
    **kw: object,
) -> ClaimedRow:
    """A parent claimed (running execute): a root, or a child spawned by `under`."""
    t = task(kind, parent_id=under.id if under else None, **kw)  # type: ignore[arg-type]
    if under is None:
        await insert(store, t, now=now)
    else:
        await spawn(store, under, t, now=now)
    row = await claim_one(store, kinds=(kind,), now=now)
    assert row.id == t.id
    return row


async def spawn(
    store: Store, by: ClaimedRow, *tasks: NewTask, now: int = T0
) -> list[InsertOutcome]:
    """Insert `tasks` fenced by the lease `by` holds (their parent_id is set by the caller)."""
    return await store.tasks_insert(
        TasksInsert(list(tasks), "skip", now, LeaseRef(by.id, by.lease_epoch))
    )


async def kids(
    store: Store, parent: ClaimedRow, n: int, kind: str = KIND, **kw: object
) -> list[str]:
    """Spawn `n` children of `parent`, in one batch; their ids in spawn order."""
    news = [task(kind, parent_id=parent.id, **kw) for _ in range(n)]  # type: ignore[arg-type]
    outs = await spawn(store, parent, *news)
    assert [o.status for o in outs] == [InsertStatus.INSERTED] * n
    return [o.id for o in outs]


async def wait(store: Store, row: ClaimedRow, *, memo: bytes = MEMO, now: int = T0) -> State:
    return await store.task_wait_children(TaskWaitChildren(row.id, row.lease_epoch, memo, now))


async def claim_all(store: Store, n: int, kind: str = KIND, now: int = T0) -> list[ClaimedRow]:
    rows = await claim(store, limit=n, kinds=(kind,), now=now)
    assert len(rows) == n, f"expected {n} claimable {kind} tasks, got {len(rows)}"
    return rows


async def ready_events(store: Store, task_id: str) -> int:
    """How many times the task was made ready after its creation."""
    states = [e.state for e in await all_events(store) if e.task_id == task_id]
    return states[1:].count(State.READY)


async def hooks(
    store: Store, now: int = T0, kinds: tuple[str, ...] = (ORCH, ORCH2, ORCH3)
) -> list[HookRow]:
    return await store.hooks_claim(HooksClaim("hook-worker", list(kinds), 100, TTL, now))


async def assert_finalizes(store: Store, parent: str, *, attempts_before: int = 1) -> None:
    """The parent is ready in phase finalize with a fresh attempt budget; its claim carries
    the memo and runs finalize."""
    rec = await get(store, parent)
    assert (rec.state, rec.phase, rec.attempts) == (State.READY, Phase.FINALIZE, 0)
    assert (rec.lease_owner, rec.lease_expires_at_ms) == (None, None)
    kind = rec.kind
    row = await claim_one(store, kinds=(kind,))
    assert (row.id, row.phase, row.memo, row.attempt) == (parent, Phase.FINALIZE, MEMO, 1)
    assert row.lease_epoch == attempts_before + 1


def summary_of(
    parent_id: str, by_state: dict[State, int], top: tuple[ErrorGroup, ...]
) -> ChildrenSummary:
    return ChildrenSummary(parent_id, sum(by_state.values()), by_state, top)


async def mixed_children(store: Store) -> tuple[ClaimedRow, list[str]]:
    """A parent with 9 children: 3 failed (2 of them "disk full"), 1 dead-lettered ("disk
    full"), 2 completed, 1 cancelled, 1 running and 1 ready. Returns the parent and the
    children's ids in order."""
    parent = await start(store, fail_fast=False)
    ids = await kids(store, parent, 9)
    rows = await claim_all(store, 8)
    disk = ErrorInfo("OSError", "disk full", "retryable")
    slow = ErrorInfo("TimeoutError", "too slow", "timeout")
    ends: list[tuple[State, ErrorInfo | None]] = [
        (State.FAILED, disk),
        (State.FAILED, slow),
        (State.FAILED, disk),
        (State.DEAD_LETTERED, disk),
        (State.COMPLETED, None),
        (State.COMPLETED, None),
        (State.CANCELLED, ErrorInfo("Cancelled", "disk full", "cancelled")),
    ]
    for row, (end, error) in zip(rows, ends, strict=False):
        await finish(store, row.id, row.lease_epoch, end, error=error)
    return parent, ids
