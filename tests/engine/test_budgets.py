"""Budgets, rate limits and concurrency caps through the engine: handlers, claimers, workers."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

import flowmill as fm
from flowmill.cli import cli
from flowmill.store.contract.tasks import TasksClaim

from ..conftest import eventually

WAIT = timedelta(seconds=10)


@dataclass
class Prompt:
    text: str
    tokens: int = 600


@contextlib.asynccontextmanager
async def running(*workers: fm.Worker) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        yield
    finally:
        for w in workers:
            w.stop()
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks)


async def test_a_handler_reports_usage_and_fails_on_a_hard_breach(app: fm.App) -> None:
    await app.define_budget("org-42", hard={"tokens": 1000}, soft={"tokens": 500})
    seen: list[fm.UsageReport] = []

    @app.task(retry=fm.Retry(max_attempts=1))
    async def complete(p: Prompt, ctx: fm.Context) -> str:
        r = await ctx.report_usage(
            "org-42", {"tokens": p.tokens}, dedup_key=f"{ctx.task_id}:{ctx.attempt}:1"
        )
        seen.append(r)
        if r.hard_breach:
            raise fm.Fail("budget exhausted", category="budget")
        return p.text

    async with running(app.worker()):
        first = await app.submit(complete, Prompt("a"))
        assert await first.result(timeout=WAIT) == "a"
        second = await app.submit(complete, Prompt("b"))
        with pytest.raises(fm.TaskFailed) as failed:
            await second.result(timeout=WAIT)
    assert (failed.value.category, failed.value.message) == ("budget", "budget exhausted")
    assert [r.status for r in seen] == [fm.UsageStatus.SOFT_BREACH, fm.UsageStatus.HARD_BREACH]
    status = await app.budget("org-42")
    assert (status.usage, status.hard_breached, status.breached) == (
        {"tokens": 600},
        True,
        ("tokens",),
    )


async def test_a_claimer_reports_usage_as_in_the_issue(app: fm.App) -> None:
    @app.task(name="llm", queue="llm")
    async def llm(p: Prompt) -> str:
        raise AssertionError("run by a claimer")

    await app.define_budget("org-42", hard={"tokens": 2000})
    h = await app.submit(llm, Prompt("hi"))
    async with app.claimer(worker_id="gpu-1", queues=["llm"]) as c:
        task = await c.claim(wait=WAIT)
        assert task is not None
        r = await task.report_usage("org-42", {"tokens": 1200}, dedup_key=f"{task.attempt_id}:1")
        assert (r.ok, r.usage) == (True, {"tokens": 1200})
        again = await task.report_usage(
            "org-42", {"tokens": 1200}, dedup_key=f"{task.attempt_id}:1"
        )
        assert again.already_applied
        r = await task.report_usage("org-42", {"tokens": 1200}, dedup_key=f"{task.attempt_id}:2")
        assert (r.hard_breach, r.usage, r.breached) == (True, {"tokens": 1200}, ("tokens",))
        if r.hard_breach:
            outcome = await task.fail("budget exhausted", category="budget")
            assert outcome.will_retry
    info = await app.get(h.id)
    assert info.error is not None and info.error.category == "budget"


async def test_bad_reports_raise_typed_errors_and_leave_the_task_alone(app: fm.App) -> None:
    @app.task(name="llm")
    async def llm(p: Prompt) -> str:
        raise AssertionError("run by a claimer")

    await app.define_budget("org-42", hard={"tokens": 10})
    h = await app.submit(llm, Prompt("x"))
    async with app.claimer(worker_id="w") as c:
        task = await c.claim(wait=WAIT)
        assert task is not None
        with pytest.raises(fm.UnknownBudget, match="'org-43'"):
            await task.report_usage("org-43", {"tokens": 1})
        with pytest.raises(fm.InvalidUsage, match=">= 0"):
            await task.report_usage("org-42", {"tokens": -5})
        with pytest.raises(fm.InvalidUsage, match="must be an int"):
            await task.report_usage("org-42", {"tokens": 2.5})  # type: ignore[dict-item]
        info = await app.get(h.id)
        assert (info.state, info.lease_epoch) == (fm.State.RUNNING, task.lease_epoch)
        assert (await app.budget("org-42")).usage == {}
        await task.complete("done")
        with pytest.raises(fm.TaskAlreadyFinished):
            await task.report_usage("org-42", {"tokens": 1})
    assert await h.result(timeout=WAIT) == "done"


async def test_budget_definitions_are_checked(app: fm.App) -> None:
    with pytest.raises(fm.ConfigurationError, match="above its hard limit"):
        await app.define_budget("b", hard={"tokens": 5}, soft={"tokens": 6})
    with pytest.raises(fm.ConfigurationError, match=">= 0"):
        await app.define_budget("b", hard={"tokens": -1})
    with pytest.raises(fm.ConfigurationError, match="budget id"):
        await app.define_budget("", hard={"tokens": 1})
    with pytest.raises(fm.ConfigurationError, match="reset_every"):
        await app.define_budget("b", hard={"tokens": 1}, reset_every=timedelta(0))
    with pytest.raises(fm.UnknownBudget):
        await app.budget("b")
    with pytest.raises(fm.UnknownBudget):
        await app.reset_budget("b")
    assert await app.budgets() == []


def test_rate_limits_are_checked() -> None:
    assert fm.RateLimit(per_second=2.5).burst == 3
    assert fm.RateLimit(per_second=0.1).burst == 1
    assert fm.RateLimit(per_second=5, burst=1).burst == 1
    for bad in (0, -1, math.nan, math.inf, True):
        with pytest.raises(fm.ConfigurationError, match="per_second"):
            fm.RateLimit(per_second=bad)
    with pytest.raises(fm.ConfigurationError, match="burst"):
        fm.RateLimit(per_second=1, burst=0)
    app = fm.App("sqlite://:memory:")
    with pytest.raises(fm.ConfigurationError, match="rate_limit"):
        app.task(rate_limit=5)(lambda: None)  # type: ignore[arg-type]
    with pytest.raises(fm.ConfigurationError, match="max_concurrency"):
        app.queue_limits("q", max_concurrency=0)


async def test_submits_name_defined_budgets_only(app: fm.App) -> None:
    @app.task
    async def job(p: Prompt) -> str:
        return p.text

    with pytest.raises(fm.UnknownBudget, match="define it first"):
        await app.submit(job, Prompt("x"), budget="org-42")
    with pytest.raises(fm.UnknownBudget):
        await app.submit_many(job, [Prompt("x"), Prompt("y")], budget="org-42")
    assert list(await app.status()) == []


async def test_a_breached_budget_holds_its_tasks_until_reset(
    app: fm.App, clock: fm.ManualClock
) -> None:
    await app.define_budget("org-42", hard={"tokens": 100})

    @app.task(budget="org-42")
    async def held(p: Prompt) -> str:
        return p.text

    @app.task
    async def free(p: Prompt) -> str:
        return p.text

    @app.task(name="meter")
    async def meter(p: Prompt) -> None:
        raise AssertionError("run by a claimer")

    await app.submit(meter, Prompt("m"))
    async with app.claimer(worker_id="m", kinds=["meter"]) as c:
        task = await c.claim(wait=WAIT)
        assert task is not None
        assert (await task.report_usage("org-42", {"tokens": 100})).ok
        await task.complete()
    h = await app.submit(held, Prompt("held"))
    f = await app.submit(free, Prompt("free"))
    claims = 0
    real_claim = app.store.tasks_claim

    async def counted(p: TasksClaim) -> Any:
        nonlocal claims
        claims += 1
        return await real_claim(p)

    app.store.tasks_claim = counted  # type: ignore[method-assign]
    worker = app.worker()
    async with running(worker):
        assert await f.result(timeout=WAIT) == "free"
        report = await app.status()
        (b,) = report.budgets
        assert (b.id, b.hard_breached, b.tasks_held) == ("org-42", True, 1)
        assert (await app.get(h.id)).state is fm.State.READY
        # Held tasks do not make the worker spin: it waits for a wake-up as when idle
        # (a spinning worker would claim again and again while we make these round trips).
        settled = claims
        for _ in range(10):
            await app.status()
        assert claims <= settled + 1
        assert (await app.reset_budget("org-42")).hard_breached is False
        assert await h.result(timeout=WAIT) == "held"
    assert (await app.budget("org-42")).tasks_held == 0


async def test_held_tasks_run_when_the_window_ends(app: fm.App, clock: fm.ManualClock) -> None:
    @app.task(name="llm")
    async def llm(p: Prompt) -> str:
        raise AssertionError("run by a claimer")

    await app.define_budget("org-42", hard={"tokens": 10}, reset_every=timedelta(hours=1))
    await app.submit(llm, Prompt("meter"))
    async with app.claimer(worker_id="w") as c:
        meter = await c.claim(wait=WAIT)
        assert meter is not None
        assert (await meter.report_usage("org-42", {"tokens": 11})).hard_breach
        held = await app.submit(llm, Prompt("held"), budget="org-42")
        assert await c.claim() is None
        status = await app.budget("org-42")
        assert status.window_ends_at is not None
        assert status.window_ends_at.timestamp() * 1000 == clock.wall_ms() + 3_600_000
        await clock.advance(timedelta(hours=1))
        task = await c.claim()
        assert task is not None and task.task_id == held.id
        assert (await app.budget("org-42")).usage == {}
        await task.complete("ok")
        await meter.complete("ok")


async def test_raising_the_limits_releases_held_tasks(app: fm.App) -> None:
    @app.task
    async def job(p: Prompt) -> str:
        return p.text

    await app.define_budget("org-42", hard={"tokens": 0})
    async with running(app.worker()):
        h = await app.submit(job, Prompt("x"), budget="org-42")
        await eventually(
            lambda: _held(app, "org-42", 1), what="the task held by the breached budget"
        )
        status = await app.define_budget("org-42", hard={"tokens": 10})
        assert status.hard_breached is False
        assert await h.result(timeout=WAIT) == "x"


async def _held(app: fm.App, budget_id: str, n: int) -> bool:
    return (await app.budget(budget_id)).tasks_held == n


async def test_max_concurrency_holds_across_two_workers(app: fm.App) -> None:
    gate = asyncio.Event()
    live = {"now": 0, "peak": 0}

    @app.task(max_concurrency=2)
    async def capped(p: Prompt) -> str:
        live["now"] += 1
        live["peak"] = max(live["peak"], live["now"])
        await gate.wait()
        live["now"] -= 1
        return p.text

    w1, w2 = app.worker(concurrency=4), app.worker(concurrency=4)
    async with running(w1, w2):
        handles = await app.submit_many(capped, [Prompt(str(i)) for i in range(8)])
        await eventually(lambda: _true(live["now"] == 2), what="two running")
        running_now = await app.list_tasks(states=[fm.State.RUNNING])
        assert len(running_now) == 2
        gate.set()
        assert [await h.result(timeout=WAIT) for h in handles] == [str(i) for i in range(8)]
    assert live["peak"] == 2
    assert w1.stats.claimed + w2.stats.claimed == 8


async def _true(value: bool) -> bool:
    return value


async def test_a_rate_limited_kind_is_claimed_again_when_a_token_is_due(
    app: fm.App, clock: fm.ManualClock
) -> None:
    @app.task(rate_limit=fm.RateLimit(per_second=1, burst=2))
    async def paced(p: Prompt) -> str:
        return p.text

    # The fallback poll is an hour: only the limit's own timer can bring the third task.
    worker = app.worker(poll_interval=timedelta(hours=1))
    async with running(worker):
        handles = await app.submit_many(paced, [Prompt(str(i)) for i in range(3)])
        assert await handles[0].result(timeout=WAIT) == "0"
        assert await handles[1].result(timeout=WAIT) == "1"
        assert (await app.get(handles[2].id)).state is fm.State.READY
        third = asyncio.ensure_future(handles[2].result(timeout=WAIT))
        # A second later (store time) a token is due. The worker arms its timer when its
        # claim comes back empty, so keep moving time on, a second a step, until it runs.
        for _ in range(20):
            await clock.advance(timedelta(seconds=1))
            await asyncio.wait({third}, timeout=0.1)
            if third.done():
                break
        assert await third == "2"


async def test_queue_limits_apply_to_claimers(app: fm.App) -> None:
    @app.task(name="slow", queue="slow")
    async def slow(p: Prompt) -> str:
        raise AssertionError("run by a claimer")

    app.queue_limits("slow", max_concurrency=2)
    await app.submit_many(slow, [Prompt(str(i)) for i in range(5)])
    async with (
        app.claimer(worker_id="a", queues=["slow"]) as a,
        app.claimer(worker_id="b", queues=["slow"]) as b,
    ):
        got = await a.claim_many(5)
        assert len(got) == 2
        assert await b.claim_many(5) == []
        await got[0].complete("ok")
        (one,) = await b.claim_many(5)
        await one.complete("ok")
        await got[1].complete("ok")


async def test_status_and_cli_show_a_breached_budget(app: fm.App, db_url: str) -> None:
    @app.task(name="llm")
    async def llm(p: Prompt) -> str:
        raise AssertionError("run by a claimer")

    await app.define_budget("org-42", hard={"tokens": 1000}, soft={"tokens": 800})
    await app.submit(llm, Prompt("meter"))
    async with app.claimer(worker_id="w") as c:
        task = await c.claim(wait=WAIT)
        assert task is not None
        assert (await task.report_usage("org-42", {"tokens": 900})).soft_breach
        assert (await task.report_usage("org-42", {"tokens": 200})).hard_breach
        await task.complete("ok")
    await app.submit(llm, Prompt("held"), budget="org-42")
    result = await asyncio.to_thread(
        CliRunner().invoke, cli, ["status", "--url", db_url], prog_name="flowmill"
    )
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.stdout.splitlines() if ln.strip().startswith("org-42"))
    assert "tokens=900" in line and "tokens=1,000" in line and "tokens=800" in line
    assert "HARD-BREACHED (tokens)" in line
    assert line.split()[-1] == "1"  # one ready task held
