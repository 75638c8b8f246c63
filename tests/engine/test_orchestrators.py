"""Orchestrators: memo from execute to finalize, children streamed into finalize."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

import msgspec
import pytest

import flowmill as fm

from ..conftest import eventually
from .test_worker import running


async def _true(value: bool) -> bool:
    return value


WAIT = timedelta(seconds=20)


@dataclass
class ScanRequest:
    roots: list[str]


@dataclass
class ScanMemo:
    started_ns: int
    note: str


@dataclass
class ScanReport:
    discovered: int
    failed: int
    errors: str
    note: str


class DirReport(msgspec.Struct):
    path: str
    discovered: int


@dataclass
class ScanDir:
    path: str
    depth: int = 0


def build_scanner(
    app: fm.App,
    *,
    fanout: int = 3,
    depth: int = 3,
    fail: str | None = None,
    fail_fast: bool = False,
) -> tuple[fm.TaskDef, fm.TaskDef, Counter[str]]:
    calls: Counter[str] = Counter()

    @app.task(name="scan_dir", retry=fm.Retry(max_attempts=1))
    async def scan_dir(d: ScanDir, ctx: fm.Context) -> DirReport:
        calls["scan_dir"] += 1
        if d.path == fail:
            raise PermissionError(f"permission denied on {d.path}")
        if d.depth < depth:
            for i in range(fanout):
                # BFS: children of the orchestrator, spawned after its execute returned
                await ctx.spawn_sibling(scan_dir, ScanDir(f"{d.path}/{i}", d.depth + 1))
        return DirReport(d.path, discovered=1)

    @app.executor(name="scan_catalog")
    class ScanCatalog(fm.Executor[ScanRequest, ScanMemo, ScanReport]):
        async def execute(self, req: ScanRequest, ctx: fm.Context) -> ScanMemo:
            calls["execute"] += 1
            await ctx.spawn_many(scan_dir, [ScanDir(p) for p in req.roots])
            return ScanMemo(started_ns=time.time_ns(), note="from execute")

        async def finalize(self, req: ScanRequest, memo: ScanMemo, ctx: fm.Context) -> ScanReport:
            calls["finalize"] += 1
            assert isinstance(memo, ScanMemo)
            total = 0
            async for child in ctx.children(scan_dir, page_size=7):
                assert isinstance(child, fm.ChildResult)
                if child.ok:
                    assert isinstance(child.result, DirReport)
                    total += child.result.discovered
            summary = await ctx.children_summary()
            return ScanReport(total, summary.failed, str(summary), memo.note)

    ScanCatalog.fail_fast = fail_fast
    return scan_dir, app.registry["scan_catalog"], calls


def tree_size(fanout: int, depth: int, roots: int) -> int:
    return roots * sum(fanout**d for d in range(depth + 1))


async def test_bfs_with_siblings_memo_and_streamed_children(app: fm.App) -> None:
    _, scan, calls = build_scanner(app, fanout=3, depth=3)
    async with running(app.worker(concurrency=16)):
        h = await app.submit(scan, ScanRequest(["a", "b"]))
        report = await h.result(timeout=WAIT)
    expected = tree_size(3, 3, 2)
    assert report == ScanReport(expected, 0, f"0 of {expected:,} failed", "from execute")
    assert (calls["execute"], calls["finalize"], calls["scan_dir"]) == (1, 1, expected)
    info = await app.get(h.id)
    assert (info.state, info.phase) == (fm.State.COMPLETED, fm.Phase.FINALIZE)


async def test_no_children_finalizes_at_once(app: fm.App) -> None:
    _, scan, calls = build_scanner(app)
    async with running(app.worker()):
        report = await (await app.submit(scan, ScanRequest([]))).result(timeout=WAIT)
    assert (report.discovered, calls["finalize"]) == (0, 1)


async def test_fail_fast_off_finalize_sees_failures(app: fm.App) -> None:
    _, scan, _ = build_scanner(app, fanout=2, depth=2, fail="a/1")
    async with running(app.worker(concurrency=8)):
        h = await app.submit(scan, ScanRequest(["a"]), fail_fast=False)
        report = await h.result(timeout=WAIT)
    # a/1 failed, so its subtree (2 + 0 deeper: depth 2 means a/1/0, a/1/1) never ran
    assert report.failed == 1
    assert report.discovered == tree_size(2, 2, 1) - 3
    assert "1 of 5 failed: permission denied on a/1 on " in report.errors


async def test_fail_fast_cancels_the_rest_and_fails_the_parent(app: fm.App) -> None:
    gate = asyncio.Event()
    cancelled_with: list[object] = []

    @app.task(name="leaf", retry=fm.Retry(max_attempts=1))
    async def leaf(n: int, ctx: fm.Context) -> int:
        if n == 0:
            raise ValueError("bad leaf")
        # Cooperative: a running leaf ends when told to stop. (The app's ManualClock never
        # ends the cancel grace of a leaf that ignored the request, and on_cancel waits for
        # every child to end.)
        waits = [asyncio.ensure_future(gate.wait()), asyncio.ensure_future(ctx.wait_cancelled())]
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in pending:
            w.cancel()
        return n

    @app.executor(name="parent")
    class Parent(fm.Executor[int, str, int]):
        async def execute(self, n: int, ctx: fm.Context) -> str:
            await ctx.spawn_many(leaf, range(n))
            return "memo"

        async def finalize(self, n: int, memo: str, ctx: fm.Context) -> int:
            raise AssertionError("finalize must not run")

        async def on_cancel(self, n: int, memo: str | None, ctx: fm.Context) -> None:
            cancelled_with.append(memo)

    worker = app.worker(concurrency=4)
    async with running(worker):
        h = await app.submit("parent", 20)
        with pytest.raises(fm.TaskFailed) as err:
            await h.result(timeout=WAIT)

        async def hook_ran() -> bool:
            # The hook is due once every running leaf has ended, which takes up to the
            # worker's poll interval (5 s) to learn of its cancel request. Under the app's
            # ManualClock the worker's own maintenance loop never comes round again, so
            # the test runs the hooks itself (the worker's may be the one that ran it).
            await worker.run_hooks()
            return bool(cancelled_with)

        await eventually(hook_ran, what="on_cancel to run", timeout=30)
        gate.set()
    assert err.value.state == "failed"
    assert err.value.category == "child_failed"
    assert "bad leaf" in (err.value.message or "")
    assert cancelled_with == ["memo"]
    states = Counter(t.state for t in await app.list_tasks(limit=100) if t.name == "leaf")
    assert states[fm.State.DEAD_LETTERED] == 1  # retryable, but max_attempts=1
    assert states[fm.State.CANCELLED] > 0
    assert set(states) <= {fm.State.DEAD_LETTERED, fm.State.CANCELLED, fm.State.COMPLETED}


async def test_concurrent_last_children_finalize_exactly_once(app: fm.App) -> None:
    gate = asyncio.Event()
    finalized: list[int] = []

    @app.task(name="burst")
    async def burst(n: int) -> int:
        await gate.wait()
        return n

    @app.executor(name="join")
    class Join(fm.Executor[int, None, int]):
        async def execute(self, n: int, ctx: fm.Context) -> None:
            await ctx.spawn_many(burst, range(n))

        async def finalize(self, n: int, memo: None, ctx: fm.Context) -> int:
            total = sum([c.result async for c in ctx.children()])
            finalized.append(total)
            return total

    async with running(app.worker(concurrency=64)):
        h = await app.submit("join", 200)
        await asyncio.sleep(0)  # let every child be claimed and block on the gate
        gate.set()  # ... then they all end at once
        assert await h.result(timeout=WAIT) == sum(range(200))
    assert finalized == [sum(range(200))]


async def test_cancel_cascades_three_levels_and_on_cancel_runs_once(app: fm.App) -> None:
    hooks: Counter[str] = Counter()
    started = asyncio.Event()

    @app.task(name="sleeper")
    async def sleeper(n: int, ctx: fm.Context) -> None:
        started.set()
        await ctx.wait_cancelled()
        ctx.check_cancelled()

    @app.executor(name="level")
    class Level(fm.Executor[int, int, None]):
        async def execute(self, depth: int, ctx: fm.Context) -> int:
            if depth < 3:
                await ctx.spawn_many("level", [depth + 1, depth + 1])
            else:
                await ctx.spawn_many(sleeper, [1, 2])
            return depth

        async def finalize(self, depth: int, memo: int, ctx: fm.Context) -> None:
            return None

        async def on_cancel(self, depth: int, memo: int | None, ctx: fm.Context) -> None:
            hooks[ctx.task_id] += 1

    worker = app.worker(concurrency=32)
    async with running(worker):
        root = await app.submit("level", 1)
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.sleep(0.05)  # let the remaining leaves start (they park on the token)
        assert await app.cancel(root.id) is fm.State.CANCELLED
        with pytest.raises(fm.TaskFailed):
            await root.result(timeout=WAIT)
        leaves = [t for t in await app.list_tasks(limit=100) if t.name == "sleeper"]
        for t in leaves:
            with pytest.raises(fm.TaskFailed):
                await app.handle(t.id).result(timeout=WAIT)
        await worker.maintain()
        await worker.maintain()
    tasks = await app.list_tasks(limit=100)
    levels = [t for t in tasks if t.name == "level"]
    assert len(levels) == 7  # 1 + 2 + 4
    assert len([t for t in tasks if t.name == "sleeper"]) == 8
    assert {t.state for t in tasks} == {fm.State.CANCELLED}
    assert sorted(hooks.values()) == [1] * 7
    assert set(hooks) == {t.id for t in levels}


async def test_spawn_keys_make_a_rerun_execute_spawn_nothing_twice(
    app: fm.App, clock: fm.ManualClock
) -> None:
    runs: list[int] = []

    @app.task(name="kid")
    async def kid(n: int) -> int:
        return n

    @app.executor(name="keyed", retry=fm.Retry(max_attempts=2, backoff=fm.Fixed(timedelta(0))))
    class Keyed(fm.Executor[int, None, int]):
        async def execute(self, n: int, ctx: fm.Context) -> None:
            runs.append(ctx.attempt)
            await ctx.spawn_many(kid, range(n), keys=[f"kid-{i}" for i in range(n)])
            if ctx.attempt == 1:
                raise RuntimeError("crash after spawning")

        async def finalize(self, n: int, memo: None, ctx: fm.Context) -> int:
            return len([c async for c in ctx.children()])

    async with running(app.worker()):
        h = await app.submit("keyed", 5)
        assert await h.result(timeout=WAIT) == 5
    assert runs == [1, 2]


async def test_spawn_siblings_in_one_call(app: fm.App) -> None:
    @app.task(name="node")
    async def node(n: int, ctx: fm.Context) -> int:
        if n == 0:
            await ctx.spawn_siblings(node, [1, 2, 3], keys=["a", "b", "c"])
        return n

    @app.executor(name="tree")
    class Tree(fm.Executor[None, None, int]):
        async def execute(self, _: None, ctx: fm.Context) -> None:
            await ctx.spawn(node, 0)

        async def finalize(self, _: None, memo: None, ctx: fm.Context) -> int:
            return sum([c.result async for c in ctx.children(node)])

    async with running(app.worker()):
        assert await (await app.submit("tree", None)).result(timeout=WAIT) == 6


async def test_spawn_sibling_on_a_root_task_is_a_clear_error(app: fm.App) -> None:
    @app.task(name="lonely", retry=fm.Retry(max_attempts=1))
    async def lonely(n: int, ctx: fm.Context) -> None:
        await ctx.spawn_sibling(lonely, n)

    async with running(app.worker()):
        with pytest.raises(fm.TaskFailed) as err:
            await (await app.submit(lonely, 1)).result(timeout=WAIT)
    assert "root task" in (err.value.message or "")


async def test_child_of_another_kind_is_typed_by_its_own_task(app: fm.App) -> None:
    @app.task(name="words")
    async def words(s: str) -> list[str]:
        return s.split()

    @app.task(name="square")
    async def square(n: int) -> int:
        return n * n

    @app.executor(name="mixed")
    class Mixed(fm.Executor[None, None, dict[str, list[object]]]):
        async def execute(self, _: None, ctx: fm.Context) -> None:
            await ctx.spawn(words, "a b")
            await ctx.spawn(square, 3)

        async def finalize(self, _: None, memo: None, ctx: fm.Context) -> dict[str, list[object]]:
            only_squares = [c.result async for c in ctx.children(square)]
            everything = [c.result async for c in ctx.children()]
            return {"squares": only_squares, "all": everything}

    async with running(app.worker()):
        out = await (await app.submit("mixed", None)).result(timeout=WAIT)
    assert out == {"squares": [9], "all": [["a", "b"], 9]}


async def test_submit_with_parent_and_invalid_parents(app: fm.App) -> None:
    @app.task(name="plain")
    async def plain(n: int) -> int:
        return n

    done = await app.submit(plain, 1)
    async with running(app.worker()):
        await done.result(timeout=WAIT)
    with pytest.raises(fm.InvalidParent, match="already ended"):
        await app.submit(plain, 2, parent=done.id)
    with pytest.raises(fm.InvalidParent, match="does not exist"):
        await app.submit(plain, 2, parent="nope")
    assert len(await app.list_tasks()) == 1


async def test_memo_survives_a_restart_between_execute_and_finalize(db_url: str) -> None:
    """Worker A runs execute and stops; a new app and worker B finalize with the memo."""
    gate = asyncio.Event()

    def build() -> tuple[fm.App, Counter[str]]:
        app = fm.App(db_url)
        seen: Counter[str] = Counter()

        @app.task(name="slow_child")
        async def slow_child(n: int) -> int:
            await gate.wait()
            return n

        @app.executor(name="remember")
        class Remember(fm.Executor[int, ScanMemo, str]):
            async def execute(self, n: int, ctx: fm.Context) -> ScanMemo:
                seen["execute"] += 1
                await ctx.spawn_many(slow_child, range(n))
                return ScanMemo(started_ns=42, note=f"{n} children")

            async def finalize(self, n: int, memo: ScanMemo, ctx: fm.Context) -> str:
                seen["finalize"] += 1
                return f"{memo.note} since {memo.started_ns}"

        return app, seen

    first, first_seen = build()
    h = await first.submit("remember", 3)
    worker = first.worker()
    task = asyncio.create_task(worker.run())

    async def parked() -> bool:
        return (await first.get(h.id)).state is fm.State.WAITING_CHILDREN

    from ..conftest import eventually

    await eventually(parked, what="parent waiting for children")
    worker.stop()
    gate.set()  # the children still running finish within the shutdown grace
    await asyncio.wait_for(task, 30)
    await first.close()
    second, second_seen = build()
    async with running(second.worker()):
        assert await second.handle(h.id, "remember").result(timeout=WAIT) == ("3 children since 42")
    await second.close()
    assert (first_seen["execute"], second_seen["execute"]) == (1, 0)
    assert first_seen["finalize"] + second_seen["finalize"] == 1
