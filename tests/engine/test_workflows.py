"""DAG workflows through the engine: validation, policies, conditions, typed upstreams."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

import pytest

import flowmill as fm

from .test_worker import running

WAIT = timedelta(seconds=20)


@dataclass
class Source:
    url: str


@dataclass
class Raw:
    lines: list[str]


@dataclass
class Params:
    drop_empty: bool = True


@dataclass
class Clean:
    rows: int
    lines: list[str]


def etl(app: fm.App, calls: Counter[str], *, fail_extract: bool = False) -> dict[str, fm.TaskDef]:
    @app.task(retry=fm.Retry(max_attempts=1))
    async def extract(src: Source) -> Raw:
        calls["extract"] += 1
        if fail_extract:
            raise RuntimeError(f"cannot read {src.url}")
        return Raw(["a", "", "b"] if src.url != "empty" else [])

    @app.task
    async def transform(p: Params, ctx: fm.Context) -> Clean:
        calls["transform"] += 1
        raw = await ctx.upstream(extract)
        assert isinstance(raw, Raw)  # typed, not a dict
        lines = [x for x in raw.lines if x or not p.drop_empty]
        return Clean(len(lines), lines)

    @app.task
    async def load_a(_: None, ctx: fm.Context) -> int:
        calls["load_a"] += 1
        return (await ctx.upstream("transform")).rows  # type: ignore[no-any-return]

    @app.task
    async def load_b(_: None, ctx: fm.Context) -> str:
        calls["load_b"] += 1
        clean = await ctx.upstream(transform)
        return ",".join(clean.lines)

    @app.task
    async def summarize(_: None, ctx: fm.Context) -> dict[str, str]:
        calls["summarize"] += 1
        up = await ctx.upstreams()
        return {name: up.state(name).value for name in up}

    return {
        "extract": extract,
        "transform": transform,
        "load_a": load_a,
        "load_b": load_b,
        "summarize": summarize,
    }


def build_etl(app: fm.App, t: dict[str, fm.TaskDef], url: str) -> tuple[fm.Workflow, fm.Node]:
    wf = app.workflow("nightly-etl")
    raw = wf.add(t["extract"], Source(url))
    clean = wf.add(t["transform"], Params(), after=[raw])
    a = wf.add(t["load_a"], after=[clean])
    b = wf.add(t["load_b"], after=[clean], when=lambda up: up[clean].rows > 0)
    wf.add(t["summarize"], after=[a, b], on_upstream_failure="run")
    return wf, b


async def test_the_etl_workflow_runs_with_typed_upstream_results(app: fm.App) -> None:
    calls: Counter[str] = Counter()
    t = etl(app, calls)
    wf, b = build_etl(app, t, "s3://bucket/x")
    async with running(app.worker()):
        run = await wf.submit()
        res = await run.result(timeout=WAIT)
    assert res["extract"] == Raw(["a", "", "b"])
    assert res["transform"] == Clean(2, ["a", "b"])
    assert res["load_a"] == 2
    assert res[b] == "a,b"
    assert res["summarize"] == {"load_a": "completed", "load_b": "completed"}
    assert res.skipped == frozenset()
    assert calls == Counter(dict.fromkeys(t, 1))
    status = await run.status()
    assert status.state is fm.RunState.COMPLETED
    assert status.nodes["summarize"].upstream == ("load_a", "load_b")
    assert all(n.state is fm.State.COMPLETED for n in status.nodes.values())
    assert status.nodes["extract"].duration is not None


async def test_a_false_condition_skips_the_node_and_run_policy_still_runs(app: fm.App) -> None:
    calls: Counter[str] = Counter()
    t = etl(app, calls)
    wf, _ = build_etl(app, t, "empty")
    async with running(app.worker()):
        run = await wf.submit()
        res = await run.result(timeout=WAIT)
    assert res.skipped == frozenset({"load_b"})
    assert "load_b" not in res
    assert calls["load_b"] == 0
    assert res["summarize"] == {"load_a": "completed", "load_b": "skipped"}
    status = await run.status()
    err = status.nodes["load_b"].error
    assert err is not None and err.category == "condition_false"


async def test_failure_policies_skip_cascades_fail_fails_run_runs(app: fm.App) -> None:
    ran: Counter[str] = Counter()

    @app.task(retry=fm.Retry(max_attempts=1))
    async def boom(_: None) -> None:
        raise fm.Fail("boom")

    @app.task
    async def step(name: str, ctx: fm.Context) -> str:
        ran[name] += 1
        if name == "cleanup":
            up = await ctx.upstreams()
            with pytest.raises(fm.UpstreamFailed, match="'root' ended failed"):
                up["root"]
            assert not up.ok("root")
        return name

    wf = app.workflow("policies")
    root = wf.add(boom, name="root")
    s1 = wf.add(step, "s1", name="s1", after=[root])
    s2 = wf.add(step, "s2", name="s2", after=[s1])
    wf.add(step, "s3", name="s3", after=[s2])
    wf.add(step, "strict", name="strict", after=[root], on_upstream_failure="fail")
    wf.add(step, "cleanup", name="cleanup", after=[root], on_upstream_failure="run")
    async with running(app.worker()):
        run = await wf.submit()
        with pytest.raises(fm.WorkflowFailed) as info:
            await run.result(timeout=WAIT)
    failed = info.value.failed
    assert set(failed) == {"root", "strict"}
    assert "boom" in failed["root"]
    assert "upstream 'root' failed" in failed["strict"]
    assert sorted(info.value.skipped) == ["s1", "s2", "s3"]
    assert "node 'root' failed" in str(info.value)
    assert ran == Counter({"cleanup": 1})
    status = await run.status()
    assert status.state is fm.RunState.FAILED
    assert {n: s.state for n, s in status.nodes.items() if n.startswith("s")} == {
        "s1": fm.State.SKIPPED,
        "s2": fm.State.SKIPPED,
        "s3": fm.State.SKIPPED,
        "strict": fm.State.FAILED,
    }


async def test_diamond_join_runs_exactly_once(app: fm.App) -> None:
    joins: Counter[str] = Counter()
    gate = asyncio.Event()

    @app.task
    async def side(n: int) -> int:
        await gate.wait()  # both sides finish together
        return n

    @app.task
    async def top(_: None) -> int:
        return 0

    @app.task
    async def join(_: None, ctx: fm.Context) -> int:
        joins[ctx.task_id] += 1
        return sum((await ctx.upstreams()).results(side))

    for _ in range(3):
        wf = app.workflow("diamond")
        t = wf.add(top)
        a = wf.add(side, 1, name="a", after=[t])
        b = wf.add(side, 2, name="b", after=[t])
        wf.add(join, after=[a, b])
        async with running(app.worker(concurrency=8)):
            run = await wf.submit()
            gate.set()
            assert (await run.result(timeout=WAIT))["join"] == 3
        gate.clear()
    assert len(joins) == 3 and set(joins.values()) == {1}


async def test_helpers_fan_out_in_pipeline_and_map(app: fm.App) -> None:
    @app.task
    async def square(n: int) -> int:
        return n * n

    @app.task
    async def total(_: None, ctx: fm.Context) -> int:
        return sum((await ctx.upstreams()).results(square))

    @app.task
    async def add_one(_: None, ctx: fm.Context) -> int:
        up = await ctx.upstreams()
        return int(next(iter(up.results()))) + 1

    wf = app.workflow("helpers")
    joined = fm.fan_out_in(wf, square, range(10), total)
    steps = fm.pipeline(wf, [(add_one, None), (add_one, None)], after=[joined])
    mapped = wf.map(square, [7, 8], after=[steps[-1]], name="late")
    async with running(app.worker()):
        res = await (await wf.submit()).result(timeout=WAIT)
    assert res[joined] == sum(n * n for n in range(10))
    assert res[steps[0]] == 286 and res[steps[1]] == 287
    assert [res[m] for m in mapped] == [49, 64]
    assert [m.name for m in mapped] == ["late[0]", "late[1]"]


async def test_validation_errors_name_the_problem_and_store_nothing(app: fm.App) -> None:
    @app.task
    async def noop(_: None) -> None:
        return None

    wf = app.workflow("cyclic")
    wf.add(noop, name="a", after=["c"])
    wf.add(noop, name="b", after=["a"])
    wf.add(noop, name="c", after=["b"])
    with pytest.raises(fm.InvalidWorkflow, match=r"cycle a -> b -> c -> a|cycle c -> a -> b -> c"):
        await wf.submit()

    wf = app.workflow("bad")
    x = wf.add(noop, name="x")
    wf.add(noop, name="x")
    wf.add(noop, name="self", after=["self"])
    wf.add(noop, name="lost", after=["nowhere"])
    other = app.workflow("other").add(noop, name="y")
    wf.add(noop, name="foreign", after=[other, x])
    with pytest.raises(fm.InvalidWorkflow) as info:
        await wf.submit()
    problems = info.value.problems
    assert "duplicate node 'x'" in problems
    assert "node 'self' depends on itself" in problems
    assert any("'nowhere', which is not a node" in p for p in problems)
    assert any("'y', which is not a node of this workflow" in p for p in problems)

    with pytest.raises(fm.InvalidWorkflow, match="no nodes"):
        await app.workflow("empty").submit()
    with pytest.raises(fm.ConfigurationError, match="on_upstream_failure"):
        app.workflow("w").add(noop, on_upstream_failure="ignore")
    with pytest.raises(fm.ConfigurationError, match="when must be a callable"):
        app.workflow("w").add(noop, when=True)  # type: ignore[arg-type]
    assert await app.list_tasks() == []
    assert await app.workflow_runs() == []


async def test_a_bad_payload_is_refused_before_anything_is_stored(app: fm.App) -> None:
    @app.task
    async def typed(n: int) -> int:
        return n

    wf = app.workflow("typed")
    a = wf.add(typed, 1)
    wf.add(typed, "not an int", after=[a])
    with pytest.raises(fm.PayloadError):
        await wf.submit()
    assert await app.list_tasks() == []


async def test_conditions_that_raise_or_are_unknown_fail_their_node(
    app: fm.App, db_url: str
) -> None:
    @app.task
    async def first(_: None) -> int:
        return 1

    @app.task
    async def second(_: None) -> int:
        return 2

    wf = app.workflow("conds")
    f = wf.add(first)
    wf.add(second, name="raises", after=[f], when=lambda up: 1 / 0)
    run = await wf.submit()
    async with running(app.worker()):
        with pytest.raises(fm.WorkflowFailed, match="condition raised"):
            await run.result(timeout=WAIT)

    # A worker of another app that never built this workflow cannot know the lambda.
    wf = app.workflow("conds")
    f = wf.add(first)
    wf.add(second, name="lambda", after=[f], when=lambda up: True)
    run = await wf.submit()
    other = fm.App(db_url, clock=app.clock)
    other.task(name=first.name)(first.fn)
    other.task(name=second.name)(second.fn)
    try:
        async with running(other.worker()):
            with pytest.raises(fm.WorkflowFailed, match="not known to this worker"):
                await run.result(timeout=WAIT)
    finally:
        await other.close()


def positive_rows(up: fm.Upstream) -> bool:
    """A module-level condition: found again by its import path in any worker."""
    return bool(up["first"] > 0)


async def test_a_module_level_condition_is_found_by_import_path(app: fm.App) -> None:
    @app.task
    async def first(_: None) -> int:
        return 5

    @app.task
    async def second(_: None) -> int:
        return 6

    wf = app.workflow("importable")
    f = wf.add(first)
    wf.add(second, after=[f], when=positive_rows)
    run = await wf.submit()
    app.conditions._by_ref.clear()  # as in a worker process that never built it
    async with running(app.worker()):
        assert (await run.result(timeout=WAIT))["second"] == 6


async def test_cancel_a_run_and_submit_with_depends_on(app: fm.App) -> None:
    release = asyncio.Event()

    @app.task
    async def slow(_: None, ctx: fm.Context) -> None:
        await release.wait()
        ctx.check_cancelled()

    @app.task
    async def after(_: None) -> str:
        return "after"

    wf = app.workflow("cancel-me")
    s = wf.add(slow)
    wf.add(after, after=[s])
    async with running(app.worker()):
        run = await wf.submit()
        status = await run.status()
        slow_id = status.nodes["slow"].task_id
        while (await app.get(slow_id)).state is not fm.State.RUNNING:
            await app.store.wait_for_work(0.05)
        assert await run.cancel() == 2
        release.set()
        with pytest.raises(fm.WorkflowFailed, match="cancelled"):
            await run.result(timeout=WAIT)
    found = await app.workflow_run(run.id)
    assert (found.id, found.name) == (run.id, "cancel-me")
    with pytest.raises(fm.WorkflowNotFound):
        await app.workflow_run("nope")

    # A plain submit with depends_on: blocked until its upstream completes.
    h1 = await app.submit(after)
    h2 = await app.submit(after, depends_on=[h1])
    assert (await app.get(h2.id)).state is fm.State.BLOCKED
    async with running(app.worker()):
        assert await h2.result(timeout=WAIT) == "after"
    with pytest.raises(fm.ConfigurationError, match="depends_on"):
        await app.submit(after, depends_on=[h1], delay=timedelta(seconds=1))


async def test_an_orchestrator_node_finalizes_before_its_dependents_run(app: fm.App) -> None:
    @app.task
    async def part(n: int) -> int:
        return n * 10

    @app.executor
    class Gather(fm.Executor[int, int, int]):
        async def execute(self, n: int, ctx: fm.Context) -> int:
            await ctx.spawn_many(part, list(range(n)))
            return n

        async def finalize(self, n: int, memo: int, ctx: fm.Context) -> int:
            return sum([c.result async for c in ctx.children(part)])

    @app.task
    async def report(_: None, ctx: fm.Context) -> str:
        return f"total={await ctx.upstream('Gather')}"

    wf = app.workflow("orch")
    g = wf.add(Gather, 5)
    wf.add(report, after=[g])
    async with running(app.worker()):
        res = await (await wf.submit()).result(timeout=WAIT)
    assert res["Gather"] == 100
    assert res["report"] == "total=100"
