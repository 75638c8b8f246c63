"""The fan-out benchmark's app (a BFS directory scan) and the worker process `fanout.py` starts.

One orchestrator, `bench.scan_catalog`, spawns R root directories; every directory task
`bench.scan_dir` spawns its sub-directories as *siblings* (children of the orchestrator),
so the orchestrator's finalize waits for the whole tree and then sums `discovered` over
every child result.

The tree is a complete k-ary forest numbered in BFS order: directories 0..R-1 are the
roots, and directory i has the sub-directories R + i*k .. R + i*k + k - 1 that are below N.
Every index from R to N-1 has exactly one parent ((index - R) // k), so exactly N
directories exist, N - R of them spawned by siblings, and each reports `discovered=1`.

Both the benchmark and its worker process build the app with `build_app`, so the tasks are
registered under the same names whatever module name this file is imported as.

Worker process protocol (one line per message, on stdin/stdout):

    python bench/_fanout_app.py --url URL [--schema S] [--concurrency 64] [--store-timings]

* the process opens the app, then prints `ready rss_kb=<resident KiB>`;
* it waits for a `go` line, then runs `worker.run(stop_when_idle=True)`;
* a `stop` line (or end of input) stops the worker gracefully;
* every second while it runs it prints `tick <seconds since go> <RSS KiB> <tasks claimed>`
  (the bench watches these for progress, and keeps them as the RSS curve);
* at the end it prints a `done` line of `key=value` fields: `claimed`, `seconds` (go to
  the end of `run()`), `peak_rss_kb` (VmHWM, read after the store is closed),
  `ready_rss_kb`, `outcomes` (`state:count,...`) and `cpu.<thread>` (CPU seconds each
  thread used between go and the end of `run()`, Linux only; `cpu.process` for the whole
  process); with `--store-timings`, also `store.<operation>=<calls>:<seconds>:<max
  seconds>` for each store operation the worker called between go and the end of `run()`
  (the store front's own timings, `StoreFront.subscribe`; seconds are summed over calls
  that may overlap: waiting time, not busy time).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

import msgspec

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import flowmill as fm
from _bench_app import thread_cpu
from _common import peak_rss_kb, rss_kb, say, stdin_reader, stop_on_stdin
from flowmill.store._front import StoreEvent

SCAN_DIR = "bench.scan_dir"
SCAN_CATALOG = "bench.scan_catalog"
PAGE_SIZE = 1000  # children per page read by finalize
TICK_S = 1.0  # progress and RSS line every second
WORKER_SCRIPT = os.path.abspath(__file__)


class ScanRequest(msgspec.Struct, frozen=True):
    """The orchestrator's payload: N directories in all, R roots, k sub-directories each."""

    children: int
    roots: int = 10
    fanout: int = 4
    batch: bool = False  # a directory spawns its sub-directories in one call (spawn_siblings)


class ScanMemo(msgspec.Struct, frozen=True):
    """Stored when execute returns; finalize reads it back."""

    execute_started_ns: int
    roots_spawned: int


class ScanDir(msgspec.Struct, frozen=True):
    """One directory: its BFS index, and the shape of the tree (to find its sub-directories)."""

    index: int
    depth: int
    children: int
    roots: int
    fanout: int
    batch: bool = False


class DirReport(msgspec.Struct, frozen=True):
    """What scanning one directory found."""

    index: int
    depth: int
    discovered: int
    subdirs: int


class FanoutReport(msgspec.Struct, frozen=True):
    """The orchestrator's result: the sum over every child result, and how they ended."""

    children: int  # N asked for
    discovered: int  # sum of `discovered` over the children's results
    results: int  # child results finalize read
    max_depth: int
    total: int  # children_summary(): children of the orchestrator
    completed: int
    failed: int
    summary: str
    execute_started_ns: int
    finalize_started_ns: int
    finalize_ended_ns: int


def subdirs(index: int, children: int, roots: int, fanout: int) -> range:
    """The BFS indexes of directory `index`'s sub-directories (those below `children`)."""
    first = roots + index * fanout
    return range(first, min(children, first + fanout))


async def scan_dir(d: ScanDir, ctx: fm.Context) -> DirReport:
    """Scan one directory: spawn its sub-directories as siblings (a BFS step), one
    `spawn_sibling` call each, or all in one `spawn_siblings` call with `batch`."""
    subs = subdirs(d.index, d.children, d.roots, d.fanout)
    dirs = [ScanDir(i, d.depth + 1, d.children, d.roots, d.fanout, d.batch) for i in subs]
    if d.batch:
        if dirs:
            await ctx.spawn_siblings(SCAN_DIR, dirs)
    else:
        for sub in dirs:
            await ctx.spawn_sibling(SCAN_DIR, sub)
    return DirReport(d.index, d.depth, discovered=1, subdirs=len(subs))


class ScanCatalog(fm.Executor[ScanRequest, ScanMemo, FanoutReport]):
    """Spawn the roots; once the whole tree has ended, sum `discovered` over every child."""

    async def execute(self, req: ScanRequest, ctx: fm.Context) -> ScanMemo:
        started = time.time_ns()
        roots = min(req.roots, req.children)
        await ctx.spawn_many(
            SCAN_DIR,
            [ScanDir(i, 0, req.children, req.roots, req.fanout, req.batch) for i in range(roots)],
        )
        return ScanMemo(execute_started_ns=started, roots_spawned=roots)

    async def finalize(self, req: ScanRequest, memo: ScanMemo, ctx: fm.Context) -> FanoutReport:
        started = time.time_ns()
        discovered = results = max_depth = 0
        async for child in ctx.children(SCAN_DIR, page_size=PAGE_SIZE):
            results += 1
            if child.ok and isinstance(child.result, DirReport):
                discovered += child.result.discovered
                max_depth = max(max_depth, child.result.depth)
        summary = await ctx.children_summary()
        return FanoutReport(
            children=req.children,
            discovered=discovered,
            results=results,
            max_depth=max_depth,
            total=summary.total,
            completed=summary.completed,
            failed=summary.failed,
            summary=str(summary),
            execute_started_ns=memo.execute_started_ns,
            finalize_started_ns=started,
            finalize_ended_ns=time.time_ns(),
        )


def build_app(url: str, schema: str | None = None) -> tuple[fm.App, fm.TaskDef, fm.TaskDef]:
    """The app on `url` (a PostgreSQL `schema` when given), its scan_dir and scan_catalog.

    One attempt each: a failure is a benchmark failure, not something to retry around.
    """
    options: dict[str, Any] = {}
    if schema is not None:
        options["schema"] = schema
    app = fm.App(url, **options)
    once = fm.Retry(max_attempts=1)
    scan = app.task(name=SCAN_DIR, retry=once)(scan_dir)
    catalog: fm.TaskDef = app.executor(name=SCAN_CATALOG, retry=once)(ScanCatalog)
    return app, scan, catalog


# -- the worker process ------------------------------------------------------------------


class StoreTimings:
    """Per store operation: calls, summed seconds and the longest call (a subscriber)."""

    def __init__(self) -> None:
        self.ops: dict[str, list[float]] = {}

    def __call__(self, event: StoreEvent) -> None:
        op = self.ops.get(event.operation)
        if op is None:
            op = self.ops[event.operation] = [0, 0.0, 0.0]
        op[0] += 1
        op[1] += event.duration_s
        op[2] = max(op[2], event.duration_s)

    def fields(self) -> str:
        """`store.<operation>=<calls>:<seconds>:<max seconds>` for the `done` line."""
        return " ".join(
            f"store.{name}={int(n)}:{total:.6f}:{longest:.6f}"
            for name, (n, total, longest) in sorted(self.ops.items())
        )


async def _worker_main(
    url: str, schema: str | None, concurrency: int, store_timings: bool = False
) -> int:
    app, _, _ = build_app(url, schema)
    await app.open()
    worker = app.worker(concurrency=concurrency)
    stdin = await stdin_reader()
    ready_rss = rss_kb() or 0
    say(f"ready rss_kb={ready_rss}")
    line = (await stdin.readline()).strip()
    if line != b"go":
        await app.close()
        return 0
    started = time.monotonic()
    cpu_before = thread_cpu()
    timings = StoreTimings()
    unsubscribe = app.store.subscribe(timings) if store_timings else None

    def tick() -> None:
        say(f"tick {time.monotonic() - started:.2f} {rss_kb() or 0} {worker.stats.claimed}")

    async def ticker() -> None:
        while True:
            tick()
            await asyncio.sleep(TICK_S)

    loop = asyncio.get_running_loop()
    helpers = [loop.create_task(stop_on_stdin(stdin, worker)), loop.create_task(ticker())]
    try:
        await worker.run(stop_when_idle=True)
        elapsed = time.monotonic() - started
        cpu_after = thread_cpu()  # before close: the store's threads are still alive
        if unsubscribe is not None:
            unsubscribe()
    finally:
        for t in helpers:
            t.cancel()
        await app.close()
    tick()
    cpu = " ".join(
        f"cpu.{name}={used - cpu_before.get(name, 0.0):.2f}" for name, used in cpu_after.items()
    )
    outcomes = ",".join(f"{k}:{v}" for k, v in sorted(worker.stats.outcomes.items())) or "-"
    say(
        f"done claimed={worker.stats.claimed} seconds={elapsed:.6f} "
        f"peak_rss_kb={peak_rss_kb()} ready_rss_kb={ready_rss} outcomes={outcomes} {cpu} "
        f"{timings.fields()}".rstrip()
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="flowmill fan-out benchmark worker process")
    parser.add_argument("--url", required=True)
    parser.add_argument("--schema", default=None)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--store-timings", action="store_true")
    args = parser.parse_args(argv)
    return asyncio.run(_worker_main(args.url, args.schema, args.concurrency, args.store_timings))


if __name__ == "__main__":
    sys.exit(main())
