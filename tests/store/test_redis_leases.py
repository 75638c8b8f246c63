"""Redis leases carry (attempt, epoch, random lease id): an epoch alone can repeat when a
failover loses the write of a claim, and the first holder must then be refused.

The failover is simulated on a private Valkey server: the keys are dumped before a claim
and restored after it (the claim's write is lost, as when a replica without it is
promoted), and another worker claims the task again at the same epoch.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from flowmill._states import State
from flowmill.errors import LeaseLost
from flowmill.store.contract.budgets import BudgetDefine, BudgetUsage
from flowmill.store.contract.signals import FrameAppend, TaskSuspend, WaitpointCreate
from flowmill.store.contract.tasks import (
    FinishStatus,
    HookDone,
    HooksClaim,
    LeaseRef,
    LeasesRenew,
    TaskCancel,
    TaskProgress,
    TasksInsert,
    TaskWaitChildren,
)
from flowmill.store.redis import RedisStore
from flowmill.testing.conformance._util import T0, TTL, claim, claim_one, finish, insert, task

from .test_store_redis import valkey_server

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with valkey_server(tmp_path_factory.mktemp("valkey-leases")) as url:
        yield url


@pytest.fixture
async def stores(server: str) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    """Two workers' stores on the same keys (one prefix of the test's own)."""
    prefix = f"fmlease:{uuid.uuid4().hex[:12]}:"
    first, second = RedisStore(server, prefix=prefix), RedisStore(server, prefix=prefix)
    await first.open()
    await second.open()
    try:
        yield first, second
    finally:
        await second.close()
        await first.close()


async def _snapshot(store: RedisStore) -> dict[bytes, bytes]:
    client = store._c()
    keys = [k async for k in client.scan_iter(match=store.prefix + "*", count=1000)]
    return {k: await client.dump(k) for k in keys}


async def _restore(store: RedisStore, snapshot: dict[bytes, bytes]) -> None:
    """Put the keys back as they were: the writes since the snapshot are lost."""
    client = store._c()
    keys = [k async for k in client.scan_iter(match=store.prefix + "*", count=1000)]
    if keys:
        await client.delete(*keys)
    for key, dumped in snapshot.items():
        await client.restore(key, 0, dumped)


async def test_a_claim_lost_in_a_failover_leaves_its_holder_no_write(
    stores: tuple[RedisStore, RedisStore],
) -> None:
    old, new = stores
    await old.budget_define(BudgetDefine("b", {"usd": 100}, {}, None, T0))
    (inserted,) = await insert(old, task())
    before = await _snapshot(old)
    lost = await claim_one(old)
    await _restore(old, before)  # the failover: the claim's write never happened
    taken = await claim_one(new)
    # the same task claimed again at the same attempt and epoch: only the lease id differs
    assert (taken.id, taken.attempt, taken.lease_epoch) == (
        lost.id,
        lost.attempt,
        lost.lease_epoch,
    )
    tid, epoch = lost.id, lost.lease_epoch
    refused: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("progress", lambda: old.task_progress(TaskProgress(tid, epoch, 50.0, None, T0))),
        ("frame", lambda: old.frames_append(FrameAppend(tid, epoch, "text", b"x", None, T0))),
        (
            "waitpoint",
            lambda: old.waitpoint_create(WaitpointCreate(tid, epoch, "wp", "k", 60_000, T0)),
        ),
        (
            "suspend",
            lambda: old.task_suspend(TaskSuspend(tid, epoch, b'{"signal": "go"}', now_ms=T0)),
        ),
        (
            "spawn",
            lambda: old.tasks_insert(TasksInsert([task()], "skip", T0, LeaseRef(tid, epoch))),
        ),
        (
            "budget",
            lambda: old.budget_report_usage(BudgetUsage(tid, epoch, "b", {"usd": 1}, None, T0)),
        ),
        ("wait", lambda: old.task_wait_children(TaskWaitChildren(tid, epoch, b"memo", T0))),
    ]
    for what, call in refused:
        try:
            await call()
        except LeaseLost:
            continue
        pytest.fail(f"{what} was accepted from the lost lease")
    (renewed,) = await old.leases_renew(LeasesRenew([LeaseRef(tid, epoch)], TTL, T0))
    assert not renewed.held
    out = await finish(old, tid, epoch, State.COMPLETED, result=b"old")
    assert out.status is FinishStatus.LEASE_LOST
    # the lease that counts is untouched, and its holder goes on
    record = await new.task_get(inserted.id)
    assert record is not None and record.state is State.RUNNING
    assert record.progress_pct is None
    (renewed,) = await new.leases_renew(LeasesRenew([LeaseRef(tid, epoch)], TTL, T0))
    assert renewed.held
    out = await finish(new, tid, epoch, State.COMPLETED, result=b"new")
    assert out.status is FinishStatus.APPLIED
    (result,) = await new.results_get([tid])
    assert result.result == b"new"
    assert len(old._leases) == 0 and len(new._leases) == 0  # ended leases are forgotten


async def test_a_rewritten_lease_id_refuses_the_holder(
    stores: tuple[RedisStore, RedisStore],
) -> None:
    store, _ = stores
    await insert(store, task(), task())
    first, second = await claim(store, limit=2)
    k = store._k
    ids = [await store._c().hget(k + "t:" + r.id, "lease_id") for r in (first, second)]
    assert ids[0] and ids[1] and ids[0] != ids[1]  # each claim row its own id
    await store._c().hset(k + "t:" + first.id, "lease_id", "someone-else")
    out = await finish(store, first.id, first.lease_epoch, State.COMPLETED)
    assert out.status is FinishStatus.LEASE_LOST
    out = await finish(store, second.id, second.lease_epoch, State.COMPLETED)
    assert out.status is FinishStatus.APPLIED


async def test_a_hook_lease_is_checked_by_its_lease_id(
    stores: tuple[RedisStore, RedisStore],
) -> None:
    store, _ = stores
    (inserted,) = await insert(store, task(has_on_cancel=True))
    await store.task_cancel(TaskCancel(inserted.id, "stop", T0))
    (hook,) = await store.hooks_claim(HooksClaim("w", ["job"], 10, TTL, T0))
    await store._c().hset(store._k + "t:" + hook.task_id, "lease_id", "someone-else")
    with pytest.raises(LeaseLost):
        await store.hook_done(HookDone(hook.task_id, hook.epoch, True, 3, T0))
    (again,) = await store.hooks_claim(HooksClaim("w", ["job"], 10, TTL, T0 + TTL + 1))
    await store.hook_done(HookDone(again.task_id, again.epoch, True, 3, T0 + TTL + 1))
    assert await store.hooks_claim(HooksClaim("w", ["job"], 10, TTL, T0 + 2 * TTL)) == []


async def test_a_reference_this_store_never_claimed_is_judged_on_the_epoch(
    stores: tuple[RedisStore, RedisStore],
) -> None:
    # a LeaseRef made by hand (another process, a tool) names no lease id: the epoch
    # decides, as on the other backends
    claimer, other = stores
    await insert(claimer, task())
    row = await claim_one(claimer)
    (renewed,) = await other.leases_renew(LeasesRenew([LeaseRef(row.id, row.lease_epoch)], TTL))
    assert renewed.held
    (stale,) = await other.leases_renew(LeasesRenew([LeaseRef(row.id, row.lease_epoch + 1)], TTL))
    assert not stale.held


async def test_an_older_client_still_reads_and_writes_its_claims(
    stores: tuple[RedisStore, RedisStore],
) -> None:
    # the library is shared by every client of a server (a rolling upgrade runs both):
    # replies keep the shape a client of layout 4 reads, and its calls, which name no
    # lease id, still claim and finish
    store, _ = stores
    await insert(store, task(), task(has_on_cancel=True))
    old_claim = {"worker": "old", "queues": ["default"], "kinds": ["job"], "limit": 1,
                 "ttl": TTL, "start": True, "now": T0}  # fmt: skip
    rows, _retry, _held = await store._fcall("fm_claim", old_claim)
    assert len(rows) == 1 and len(rows[0]) == 16
    row = rows[0]
    task_id, epoch = row[0].decode(), int(row[11])
    assert await store._c().hget(store._k + "t:" + task_id, "lease_id") is None
    out = await finish(store, task_id, epoch, State.COMPLETED)
    assert out.status is FinishStatus.APPLIED
    new = await claim_one(store)  # a new client's claim of the other task
    await store.task_cancel(TaskCancel(new.id, "stop", T0))
    await finish(store, new.id, new.lease_epoch, State.CANCELLED)
    old_hooks = {"worker": "old", "kinds": ["job"], "limit": 10, "ttl": TTL, "now": T0}
    (hook,) = await store._fcall("fm_hooks_claim", old_hooks)
    assert len(hook) == 8
