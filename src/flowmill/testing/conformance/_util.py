"""Helpers the conformance suite's mixins share: task factories, short calls, history checks."""

from __future__ import annotations

import itertools
import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import pytest

from ..._states import TRANSITIONS, State
from ...store.contract import Capabilities, Store
from ...store.contract.tasks import (
    ClaimedRow,
    ErrorInfo,
    Event,
    EventsRead,
    Finish,
    FinishOutcome,
    InsertOutcome,
    NewTask,
    OnDuplicate,
    TaskCancel,
    TaskRecord,
    TasksClaim,
    TasksFinish,
    TasksInsert,
    TasksList,
)

# A fixed instant far from the wall clock: every test drives time through `now_ms=`.
CAPABILITIES = frozenset(f.name for f in fields(Capabilities))


def require(store: Store, capability: str) -> None:
    """Skip the running test when the store lacks `capability`, saying which one.

    A test of behaviour that only some backends have starts with this call, so the suite
    reports the gap (`SKIPPED ... lacks capability 'durable'`) instead of failing on it."""
    if capability not in CAPABILITIES:
        raise ValueError(f"no capability {capability!r}: one of {', '.join(sorted(CAPABILITIES))}")
    if not getattr(store.capabilities, capability):
        pytest.skip(f"{type(store).__name__} lacks capability {capability!r}")


T0 = 1_700_000_000_000
TTL = 30_000
KIND = "job"
QUEUE = "default"

ERR = ErrorInfo("ValueError", "bad input: 'x'; DROP TABLE fm_tasks; --", "non_retryable", "tb")

# States a task may be created in: the first event of every task names one of them.
INITIAL_STATES = frozenset({State.SCHEDULED, State.READY, State.BLOCKED})
# A dedup `replace` rewrites a waiting task in place and may record its state again.
REWRITABLE_STATES = frozenset({State.SCHEDULED, State.READY, State.BLOCKED})
# States recorded again without a move: those, and `running` (each progress report).
REPEATABLE_STATES = REWRITABLE_STATES | {State.RUNNING}

_PREFIX = os.urandom(4).hex()
_COUNTER = itertools.count()


def new_id() -> str:
    """A unique task id; ids made later sort after ids made earlier (in one process)."""
    return f"t-{_PREFIX}-{next(_COUNTER):010d}"


def task(
    kind: str = KIND,
    *,
    payload: bytes = b'{"n": 1}',
    queue: str = QUEUE,
    priority: int = 0,
    delay_ms: int | None = None,
    run_at_ms: int | None = None,
    ttl_ms: int | None = None,
    key: str | None = None,
    max_attempts: int = 3,
    retry_policy: bytes = b"{}",
    timeout_ms: int | None = None,
    tags: Mapping[str, str] | None = None,
    parent_id: str | None = None,
    id: str | None = None,
    child_key: str | None = None,
    fail_fast: bool = True,
    has_on_cancel: bool = False,
    budget_id: str | None = None,
) -> NewTask:
    return NewTask(
        id=id or new_id(),
        kind=kind,
        payload=payload,
        queue=queue,
        priority=priority,
        delay_ms=delay_ms,
        run_at_ms=run_at_ms,
        ttl_ms=ttl_ms,
        dedup_key=key,
        max_attempts=max_attempts,
        retry_policy=retry_policy,
        timeout_ms=timeout_ms,
        tags=dict(tags or {}),
        parent_id=parent_id,
        child_key=child_key,
        fail_fast=fail_fast,
        has_on_cancel=has_on_cancel,
        budget_id=budget_id,
    )


async def insert(
    store: Store, *tasks: NewTask, now: int | None = T0, on_duplicate: OnDuplicate = "skip"
) -> list[InsertOutcome]:
    return await store.tasks_insert(TasksInsert(list(tasks), on_duplicate, now))


async def add(store: Store, now: int | None = T0, **kw: Any) -> str:
    """Insert one task built by `task(**kw)` and return its id."""
    t = task(**kw)
    (outcome,) = await insert(store, t, now=now)
    return outcome.id


async def claim(
    store: Store,
    *,
    limit: int = 10,
    now: int | None = T0,
    kinds: tuple[str, ...] = (KIND,),
    queues: tuple[str, ...] = (QUEUE,),
    ttl: int = TTL,
    worker: str = "worker-1",
) -> list[ClaimedRow]:
    return await store.tasks_claim(TasksClaim(worker, list(queues), list(kinds), limit, ttl, now))


async def claim_one(store: Store, *, now: int | None = T0, **kw: Any) -> ClaimedRow:
    rows = await claim(store, limit=1, now=now, **kw)
    assert len(rows) == 1, f"expected one claimable task, got {rows}"
    return rows[0]


async def finish(
    store: Store,
    task_id: str,
    epoch: int,
    target: State,
    *,
    now: int | None = T0,
    result: bytes | None = None,
    error: ErrorInfo | None = None,
    delay_ms: int | None = None,
    run_at_ms: int | None = None,
    release: bool = False,
    expired_lease: bool = False,
) -> FinishOutcome:
    f = Finish(task_id, epoch, target, result, error, delay_ms, run_at_ms, release, expired_lease)
    (outcome,) = await store.tasks_finish(TasksFinish([f], now))
    return outcome


async def get(store: Store, task_id: str) -> TaskRecord:
    rec = await store.task_get(task_id)
    assert rec is not None, f"task {task_id} not found"
    return rec


async def state_of(store: Store, task_id: str) -> State:
    return (await get(store, task_id)).state


async def make_state(store: Store, target: State, *, now: int | None = T0, **kw: Any) -> str:
    """A task brought into `target` through the store's own operations."""
    if target is State.SCHEDULED:
        return await add(store, now, delay_ms=60_000, **kw)
    task_id = await add(store, now, **kw)
    if target is State.READY:
        return task_id
    if target is State.CANCELLED:
        await store.task_cancel(TaskCancel(task_id, now_ms=now))
        return task_id
    if target is State.EXPIRED:
        raise ValueError("use a task with ttl_ms and tasks_expire")
    kinds, queues = (str(kw.get("kind", KIND)),), (str(kw.get("queue", QUEUE)),)
    rows = await claim(store, limit=1, now=now, kinds=kinds, queues=queues)
    assert [r.id for r in rows] == [task_id], "make_state needs an otherwise empty queue"
    if target is State.RUNNING:
        return task_id
    result = b'"done"' if target is State.COMPLETED else None
    error = None if target is State.COMPLETED else ERR
    out = await finish(
        store, task_id, rows[0].lease_epoch, target, now=now, result=result, error=error
    )
    assert out.state is target
    return task_id


async def all_events(store: Store) -> list[Event]:
    out: list[Event] = []
    after = 0
    while True:
        page = await store.events_read(EventsRead(after=after, limit=500))
        if not page:
            return out
        out.extend(page)
        after = page[-1].id


async def assert_history_legal(store: Store) -> dict[str, list[State]]:
    """Every task's recorded states follow TRANSITIONS and end in its current state."""
    events = await all_events(store)
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "event ids must increase"
    history: dict[str, list[State]] = defaultdict(list)
    for e in events:
        history[e.task_id].append(State(e.state))
    for task_id, states in history.items():
        assert states[0] in INITIAL_STATES, f"{task_id} was created as {states[0]}"
        for a, b in itertools.pairwise(states):
            if a == b:
                assert a in REPEATABLE_STATES, f"{task_id} recorded {a} twice: {states}"
                continue
            assert (a, b) in TRANSITIONS, f"{task_id}: illegal {a} -> {b} in {states}"
    current = await all_states(store)
    assert set(current) == set(history), "every stored task has its creation recorded"
    for task_id, states in history.items():
        assert current.get(task_id) == states[-1], (
            f"{task_id} is {current.get(task_id)}, its events end {states[-1]}"
        )
    return dict(history)


async def all_states(store: Store) -> dict[str, State]:
    """The current state of every task, paged through tasks_list."""
    out: dict[str, State] = {}
    after: str | None = None
    while page := await store.tasks_list(TasksList(limit=1000, after_id=after)):
        out.update((r.id, r.state) for r in page)
        after = page[-1].id
    return out
