"""Conformance: budgets (`budget_*`), and claims under rate limits and concurrency caps."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from ..._states import State
from ...errors import ConfigurationError, InvalidUsage, LeaseLost, UnknownBudget
from ...store.contract import Store
from ...store.contract.budgets import (
    BudgetDefine,
    BudgetReset,
    BudgetRow,
    BudgetUsage,
    ClaimedRows,
    ClaimLimit,
    UsageReport,
    UsageStatus,
)
from ...store.contract.tasks import (
    ClaimedRow,
    TasksClaim,
)
from ._util import KIND, QUEUE, T0, TTL, add, finish, get, insert, make_state, task

REPORTER = "reporter"  # the kind of the running task that reports usage in these tests


MINUTE = 60_000


async def define(
    store: Store,
    budget_id: str = "org-42",
    hard: dict[str, int] | None = None,
    soft: dict[str, int] | None = None,
    every: int | None = None,
    now: int = T0,
) -> BudgetRow:
    return await store.budget_define(
        BudgetDefine(
            budget_id, hard if hard is not None else {"tokens": 1000}, soft or {}, every, now
        )
    )


async def reporter(store: Store) -> str:
    """A running task (epoch 1) to report usage from."""
    return await make_state(store, State.RUNNING, kind=REPORTER)


async def report(
    store: Store,
    task_id: str,
    amounts: dict[str, int],
    *,
    budget: str = "org-42",
    key: str | None = None,
    epoch: int = 1,
    now: int = T0,
) -> UsageReport:
    return await store.budget_report_usage(BudgetUsage(task_id, epoch, budget, amounts, key, now))


async def plain(store: Store, now: int = T0) -> list[ClaimedRow]:
    return await store.tasks_claim(TasksClaim("w", [QUEUE], [KIND], 10, TTL, now))


async def budget(store: Store, budget_id: str = "org-42", now: int = T0) -> BudgetRow:
    (row,) = await store.budgets_get([budget_id], now)
    return row


async def limited(
    store: Store,
    *limits: ClaimLimit,
    limit: int = 10,
    now: int = T0,
    kinds: tuple[str, ...] = (KIND,),
    queues: tuple[str, ...] = (QUEUE,),
    worker: str = "worker-1",
) -> ClaimedRows:
    rows = await store.tasks_claim(
        TasksClaim(worker, list(queues), list(kinds), limit, TTL, now, limits)
    )
    assert isinstance(rows, ClaimedRows)
    return rows


class BudgetDefineConformance:
    """`budget_define` (read back with `budgets_get`)."""

    async def test_define_and_read(self, store: Store) -> None:
        row = await define(store, hard={"tokens": 1000}, soft={"tokens": 800}, every=MINUTE)
        assert (row.id, row.hard, row.soft, row.usage) == (
            "org-42",
            {"tokens": 1000},
            {"tokens": 800},
            {},
        )
        assert (row.reset_every_ms, row.window_start_ms, row.hard_breached) == (MINUTE, T0, False)
        assert await budget(store) == row
        await define(store, "b-2", hard={})
        assert [b.id for b in await store.budgets_get([], T0)] == ["b-2", "org-42"]
        assert await store.budgets_get(["nope"], T0) == []

    async def test_bad_limits_are_refused(self, store: Store) -> None:
        with pytest.raises(ConfigurationError, match="above its hard limit"):
            await define(store, hard={"tokens": 10}, soft={"tokens": 11})
        with pytest.raises(ConfigurationError, match=">= 0"):
            await define(store, hard={"tokens": -1})
        assert await store.budgets_get([], T0) == []

    async def test_redefining_keeps_usage_and_judges_the_breach_again(self, store: Store) -> None:
        await define(store, hard={"tokens": 100})
        t = await reporter(store)
        assert (await report(store, t, {"tokens": 100})).ok
        assert (await budget(store)).hard_breached
        row = await define(store, hard={"tokens": 150}, soft={"tokens": 90})
        assert (row.usage, row.hard_breached) == ({"tokens": 100}, False)
        r = await report(store, t, {"tokens": 20})
        assert (r.status, r.usage) == (UsageStatus.SOFT_BREACH, {"tokens": 120})
        row = await define(store, hard={"tokens": 120})
        assert (row.hard_breached, row.breached) == (True, ("tokens",))


class BudgetReportUsageConformance:
    """`budget_report_usage`: usage, breaches, dedup keys, windows, fences."""

    async def test_ok_soft_hard(self, store: Store) -> None:
        await define(store, hard={"tokens": 1000}, soft={"tokens": 800})
        t = await reporter(store)
        r = await report(store, t, {"tokens": 500})
        assert (r.status, r.usage, r.breached, r.ok) == (UsageStatus.OK, {"tokens": 500}, (), True)
        r = await report(store, t, {"tokens": 400})
        assert (r.status, r.usage, r.breached) == (
            UsageStatus.SOFT_BREACH,
            {"tokens": 900},
            ("tokens",),
        )
        assert r.soft_breach and not (await budget(store)).hard_breached
        r = await report(store, t, {"tokens": 200})
        assert (r.status, r.usage, r.breached) == (
            UsageStatus.HARD_BREACH,
            {"tokens": 900},
            ("tokens",),
        )
        assert r.hard_breach
        row = await budget(store)
        assert (row.usage, row.hard_breached, row.breached) == ({"tokens": 900}, True, ("tokens",))
        # Spent for the rest of the window: even what would fit is refused.
        r = await report(store, t, {"tokens": 1})
        assert (r.status, r.usage) == (UsageStatus.HARD_BREACH, {"tokens": 900})

    async def test_reaching_the_hard_limit_exactly_breaches(self, store: Store) -> None:
        await define(store, hard={"tokens": 100})
        t = await reporter(store)
        assert (await report(store, t, {"tokens": 100})).status is UsageStatus.OK
        assert (await budget(store)).hard_breached
        assert (await report(store, t, {"tokens": 0})).status is UsageStatus.HARD_BREACH

    async def test_a_hard_breach_applies_no_dimension(self, store: Store) -> None:
        await define(store, hard={"tokens": 100, "requests": 2})
        t = await reporter(store)
        r = await report(store, t, {"tokens": 10, "requests": 3, "images": 1})
        assert (r.status, r.usage, r.breached) == (UsageStatus.HARD_BREACH, {}, ("requests",))
        assert (await budget(store)).usage == {}

    async def test_dimensions_without_a_limit_are_counted(self, store: Store) -> None:
        await define(store, hard={"tokens": 100})
        t = await reporter(store)
        r = await report(store, t, {"tokens": 10, "images": 3})
        assert (r.status, r.usage) == (UsageStatus.OK, {"tokens": 10, "images": 3})

    async def test_dedup_key_is_applied_once(self, store: Store) -> None:
        await define(store)
        await define(store, "other")
        t = await reporter(store)
        assert (await report(store, t, {"tokens": 5}, key="a1:1")).ok
        again = await report(store, t, {"tokens": 5}, key="a1:1")
        assert (again.status, again.usage) == (UsageStatus.ALREADY_APPLIED, {"tokens": 5})
        assert again.already_applied
        assert (await budget(store)).usage == {"tokens": 5}
        # Keys are per budget.
        assert (await report(store, t, {"tokens": 5}, budget="other", key="a1:1")).ok

    async def test_a_refused_report_does_not_use_up_its_key(self, store: Store) -> None:
        await define(store, hard={"tokens": 10}, every=MINUTE)
        t = await reporter(store)
        assert (await report(store, t, {"tokens": 20}, key="k")).hard_breach
        assert (await report(store, t, {"tokens": 5}, key="k", now=T0 + MINUTE)).ok

    async def test_hard_breach_with_concurrent_reporters_never_overshoots(
        self, store: Store
    ) -> None:
        await define(store, hard={"tokens": 1000}, soft={"tokens": 500})
        t = await reporter(store)
        got = await asyncio.gather(*(report(store, t, {"tokens": 30}) for _ in range(60)))
        statuses = Counter(r.status for r in got)
        assert statuses[UsageStatus.OK] + statuses[UsageStatus.SOFT_BREACH] == 1000 // 30
        assert statuses[UsageStatus.HARD_BREACH] == 60 - 1000 // 30
        row = await budget(store)
        assert row.usage == {"tokens": 1000 // 30 * 30}
        assert max(r.usage["tokens"] for r in got) <= 1000

    async def test_the_same_dedup_key_reported_concurrently_is_applied_once(
        self, store: Store
    ) -> None:
        await define(store)
        t = await reporter(store)
        got = await asyncio.gather(
            *(report(store, t, {"tokens": 7}, key="attempt-1:1") for _ in range(50))
        )
        statuses = Counter(r.status for r in got)
        assert statuses == {UsageStatus.OK: 1, UsageStatus.ALREADY_APPLIED: 49}
        assert (await budget(store)).usage == {"tokens": 7}

    async def test_the_window_resets_on_the_store_clock(self, store: Store) -> None:
        await define(store, hard={"tokens": 100}, every=MINUTE)
        t = await reporter(store)
        assert (await report(store, t, {"tokens": 60})).ok
        assert (await report(store, t, {"tokens": 60}, now=T0 + 10)).hard_breach
        assert (await report(store, t, {"tokens": 1}, now=T0 + MINUTE - 1)).hard_breach
        # The next window: usage zeroed, the breach over, before the report is judged.
        r = await report(store, t, {"tokens": 60}, now=T0 + MINUTE)
        assert (r.status, r.usage) == (UsageStatus.OK, {"tokens": 60})
        # Windows keep their boundaries; reading a budget rolls it as a report would.
        row = await budget(store, now=T0 + 3 * MINUTE + 5)
        assert (row.usage, row.window_start_ms, row.hard_breached) == ({}, T0 + 3 * MINUTE, False)

    async def test_bad_reports_are_refused_and_change_nothing(self, store: Store) -> None:
        await define(store)
        t = await reporter(store)
        await report(store, t, {"tokens": 5}, key="k1")
        with pytest.raises(UnknownBudget, match="nope"):
            await report(store, t, {"tokens": 1}, budget="nope")
        bad: list[dict[str, Any]] = [
            {"tokens": -1},
            {"tokens": 1, "images": -3},
            {},
            {"tokens": 1.5},
            {"tokens": "7"},
            {"tokens": True},
            {"": 1},
        ]
        for amounts in bad:
            with pytest.raises(InvalidUsage):
                await report(store, t, amounts, key="k2")
        assert (await budget(store)).usage == {"tokens": 5}
        rec = await get(store, t)
        assert (rec.state, rec.lease_epoch) == (State.RUNNING, 1)
        # The refused reports did not record their key.
        assert (await report(store, t, {"tokens": 1}, key="k2")).ok

    async def test_a_stale_epoch_is_refused(self, store: Store) -> None:
        await define(store)
        t = await reporter(store)
        with pytest.raises(LeaseLost):
            await report(store, t, {"tokens": 1}, epoch=2)
        await finish(store, t, 1, State.COMPLETED)
        with pytest.raises(LeaseLost):
            await report(store, t, {"tokens": 1}, epoch=1)
        assert (await budget(store)).usage == {}


class BudgetResetConformance:
    """`budget_reset`."""

    async def test_reset_zeroes_usage_and_ends_the_breach(self, store: Store) -> None:
        await define(store, hard={"tokens": 100})
        t = await reporter(store)
        await report(store, t, {"tokens": 100})
        row = await store.budget_reset(BudgetReset("org-42", T0 + 5))
        assert (row.usage, row.hard_breached, row.window_start_ms) == ({}, False, T0 + 5)
        assert (await report(store, t, {"tokens": 1}, now=T0 + 6)).ok
        with pytest.raises(UnknownBudget):
            await store.budget_reset(BudgetReset("nope", T0))


class TasksClaimBudgetConformance:
    """`tasks_claim` of tasks whose budget is hard-breached."""

    async def test_tasks_of_a_breached_budget_wait(self, store: Store) -> None:
        await define(store, hard={"tokens": 100}, every=MINUTE)
        t = await reporter(store)
        held = await add(store, budget_id="org-42")
        free = await add(store)
        await report(store, t, {"tokens": 100})
        rows = await plain(store, now=T0 + 1)
        assert [r.id for r in rows] == [free]
        assert (await budget(store, now=T0 + 1)).tasks_held == 1
        assert (await get(store, held)).state is State.READY
        # Claimed once the window ends.
        rows = await plain(store, now=T0 + MINUTE)
        assert [r.id for r in rows] == [held]

    async def test_tasks_of_a_breached_budget_are_claimed_after_a_reset(self, store: Store) -> None:
        await define(store, hard={"tokens": 10})
        await define(store, "b-2", hard={"tokens": 0})
        t = await reporter(store)
        a = await add(store, budget_id="org-42")
        b = await add(store, budget_id="b-2")
        await report(store, t, {"tokens": 11})
        assert await plain(store) == []
        assert [x.tasks_held for x in await store.budgets_get([], T0)] == [1, 1]
        await store.budget_reset(BudgetReset("org-42", T0))
        assert [r.id for r in await plain(store)] == [a]
        await define(store, "b-2", hard={"tokens": 1})  # raised: nothing used, nothing held
        assert [r.id for r in await plain(store)] == [b]

    async def test_limited_claims_hold_tasks_of_a_breached_budget_too(self, store: Store) -> None:
        await define(store, hard={"tokens": 0})
        await add(store, budget_id="org-42")
        free = await add(store)
        rows = await limited(store, ClaimLimit("kind", KIND, max_running=5))
        assert [r.id for r in rows] == [free]


class TasksClaimLimitsConformance:
    """`tasks_claim` with limits: rate limits and concurrency caps, kept across claimers."""

    async def test_rate_limit_burst_then_refill(self, store: Store) -> None:
        await insert(store, *(task() for _ in range(20)))
        rate = ClaimLimit("kind", KIND, per_second=2, burst=3)
        assert len(await limited(store, rate)) == 3
        empty = await limited(store, rate)
        assert (list(empty), empty.retry_in_ms) == ([], 500)
        assert len(await limited(store, rate, now=T0 + 499)) == 0
        assert len(await limited(store, rate, now=T0 + 500)) == 1
        assert len(await limited(store, rate, now=T0 + 1000)) == 1
        assert len(await limited(store, rate, now=T0 + 2000)) == 2
        # Tokens never pile up beyond the burst.
        assert len(await limited(store, rate, now=T0 + 60_000)) == 3

    async def test_default_burst_is_a_second_of_tokens(self, store: Store) -> None:
        await insert(store, *(task() for _ in range(20)))
        rate = ClaimLimit("kind", KIND, per_second=4)
        assert len(await limited(store, rate)) == 4
        assert len(await limited(store, rate, now=T0 + 250)) == 1

    async def test_rate_is_shared_by_claimers(self, store: Store) -> None:
        await insert(store, *(task() for _ in range(30)))
        rate = ClaimLimit("kind", KIND, per_second=1, burst=5)
        got = await asyncio.gather(
            *(limited(store, rate, limit=3, worker=f"w-{i}") for i in range(8))
        )
        assert sum(len(rows) for rows in got) == 5

    async def test_concurrency_cap_across_claimers(self, store: Store) -> None:
        await insert(store, *(task() for _ in range(20)))
        cap = ClaimLimit("kind", KIND, max_running=3)
        got = await asyncio.gather(
            *(limited(store, cap, limit=2, worker=f"w-{i}") for i in range(8))
        )
        rows = [r for batch in got for r in batch]
        assert len(rows) == 3
        again = await limited(store, cap)
        assert (list(again), again.held_by_running, again.retry_in_ms) == ([], True, None)
        # Finishing one frees one slot.
        await finish(store, rows[0].id, rows[0].lease_epoch, State.COMPLETED)
        assert len(await limited(store, cap)) == 1
        assert len(await limited(store, cap)) == 0

    async def test_a_capped_kind_does_not_block_the_others(self, store: Store) -> None:
        await insert(store, *(task("a", priority=5) for _ in range(8)))
        others = [o.id for o in await insert(store, *(task("b") for _ in range(4)))]
        caps = ClaimLimit("kind", "a", max_running=1)
        rows = await limited(store, caps, limit=5, kinds=("a", "b"))
        assert Counter(r.kind for r in rows) == {"a": 1, "b": 4}
        assert [r.id for r in rows if r.kind == "b"] == others

    async def test_queue_limits(self, store: Store) -> None:
        await insert(store, *(task(queue="q1") for _ in range(5)))
        await insert(store, *(task(queue="q2") for _ in range(5)))
        caps = (ClaimLimit("queue", "q1", max_running=2), ClaimLimit("queue", "q2", per_second=1))
        rows = await limited(store, *caps, queues=("q1", "q2"))
        assert Counter(r.queue for r in rows) == {"q1": 2, "q2": 1}
        assert len(await limited(store, *caps, queues=("q1", "q2"))) == 0
        rows = await limited(store, *caps, queues=("q1", "q2"), now=T0 + 1000)
        assert Counter(r.queue for r in rows) == {"q2": 1}

    async def test_kind_and_queue_limits_both_apply(self, store: Store) -> None:
        await insert(store, *(task(queue="q1") for _ in range(5)))
        caps = (
            ClaimLimit("kind", KIND, max_running=4),
            ClaimLimit("queue", "q1", max_running=2),
        )
        assert len(await limited(store, *caps, queues=("q1",))) == 2

    async def test_limits_of_other_kinds_hold_nothing(self, store: Store) -> None:
        await insert(store, *(task() for _ in range(5)))
        assert len(await limited(store, ClaimLimit("kind", "other", max_running=1))) == 5
