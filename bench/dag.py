"""flowmill DAG workflow benchmark: a big random DAG, then a long linear chain.

    .venv/bin/python bench/dag.py                       # SQLite (synchronous=FULL)
    .venv/bin/python bench/dag.py --backend postgres    # PostgreSQL, a fresh schema per run
    .venv/bin/python bench/dag.py --nodes 10000 --edges-per-node 3 --chain 1000 --json

1. A random layered DAG of `--nodes` nodes (100 per layer), each node after
   `--edges-per-node` distinct nodes of the previous three layers (about 30,000 edges for
   10,000 nodes): the time to validate it and store it in one transaction (goal <= 2 s),
   then the time until every no-op node has completed, with an in-process worker.
2. A linear chain of `--chain` steps: each step's handler notes when it starts; a step's
   latency is the time from the start of one step to the start of the next (its no-op run,
   its finish, the push that readies the next step, the wake-up and the claim). Goal: p50
   <= 5 ms (FlowFabric publishes about 6 ms a step for a linear DAG). Also printed: the
   promotion alone, from a step's recorded end to the next step's recorded start (the
   store's timestamps, whole milliseconds).

The worker runs in the bench process (the nodes are no-ops; the submitter is idle while
they run). Each run gets a fresh store, removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import itertools

import flowmill as fm
from throughput import (
    DEFAULT_PG_URL,
    BenchError,
    PostgresBackend,
    SQLiteBackend,
    Target,
    machine,
    percentile,
    print_table,
)

GOAL_STORE_S = 2.0
GOAL_STEP_P50_MS = 5.0
FLOWFABRIC_STEP_MS = 6.0
LAYER = 100


def make_app(target: Target) -> fm.App:
    if target.schema is not None:
        return fm.App(target.url, schema=target.schema)
    return fm.App(target.url)


def register(app: fm.App, starts: list[float]) -> tuple[fm.TaskDef, fm.TaskDef]:
    @app.task(name="bench.noop")
    async def noop(_: None) -> None:
        return None

    @app.task(name="bench.step")
    async def step(_: None) -> None:
        starts.append(time.perf_counter())

    return noop, step


def random_dag(wf: fm.Workflow, noop: fm.TaskDef, nodes: int, per_node: int) -> int:
    rng = random.Random(42)
    layers: list[list[fm.Node]] = []
    edges = 0
    for i in range(nodes):
        if i % LAYER == 0:
            layers.append([])
        pool = [n for layer in layers[-4:-1] for n in layer]
        after = rng.sample(pool, min(per_node, len(pool))) if pool else []
        edges += len(after)
        layers[-1].append(wf.add(noop, name=f"n{i}", after=after))
    return edges


async def big_dag(backend: Any, nodes: int, per_node: int, concurrency: int) -> dict[str, Any]:
    target = backend.fresh("dag")
    app = make_app(target)
    noop, _ = register(app, [])
    try:
        await app.open()
        t0 = time.perf_counter()
        wf = app.workflow("bench-dag")
        edges = random_dag(wf, noop, nodes, per_node)
        built = time.perf_counter()
        run = await wf.submit()
        stored = time.perf_counter()
        worker = app.worker(concurrency=concurrency)
        task = asyncio.create_task(worker.run(install_signal_handlers=False))
        try:
            res = await run.result(timeout=None)
        finally:
            worker.stop()
            await task
        done = time.perf_counter()
        if len(res) != nodes:
            raise BenchError(f"{len(res)} of {nodes} nodes completed")
        return {
            "nodes": nodes,
            "edges": edges,
            "build_s": built - t0,
            "store_s": stored - built,
            "run_s": done - stored,
            "nodes_per_s": nodes / (done - stored),
        }
    finally:
        await app.close()


async def chain(backend: Any, steps: int) -> dict[str, Any]:
    target = backend.fresh("chain")
    app = make_app(target)
    starts: list[float] = []
    _, step = register(app, starts)
    try:
        await app.open()
        wf = app.workflow("bench-chain")
        fm.pipeline(wf, [(step, None)] * steps)
        worker = app.worker(concurrency=4)
        task = asyncio.create_task(worker.run(install_signal_handlers=False))
        try:
            t0 = time.perf_counter()
            run = await wf.submit()
            await run.result(timeout=None)
            total = time.perf_counter() - t0
            nodes = list((await run.status()).nodes.values())
        finally:
            worker.stop()
            await task
        gaps = [(b - a) * 1000 for a, b in itertools.pairwise(starts)]
        # Promotion: from one step's recorded end to the next one's start (the store's clock,
        # whole milliseconds): the push, the wake-up and the claim.
        promote = [
            (b.started_at - a.finished_at).total_seconds() * 1000
            for a, b in itertools.pairwise(nodes)
            if a.finished_at is not None and b.started_at is not None
        ]
        return {
            "promote_p50_ms": percentile(promote, 50),
            "promote_p99_ms": percentile(promote, 99),
            "steps": steps,
            "total_s": total,
            "p50_ms": percentile(gaps, 50),
            "p90_ms": percentile(gaps, 90),
            "p99_ms": percentile(gaps, 99),
        }
    finally:
        await app.close()


async def run(args: argparse.Namespace) -> int:
    backend: Any = (
        PostgresBackend(args.pg_url)
        if args.backend == "postgres"
        else SQLiteBackend(args.synchronous, None)
    )
    try:
        await backend.check()
        dag = await big_dag(backend, args.nodes, args.edges_per_node, args.concurrency)
        lin = await chain(backend, args.chain)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 2
    finally:
        with contextlib.suppress(Exception):
            await backend.cleanup()
    if args.json:
        print(json.dumps({"machine": machine(), "backend": args.backend, "dag": dag, "chain": lin}))
        return 0
    print(f"backend: {backend.describe()}")
    rows = [
        ["figure", "measured", "goal", "ratio"],
        [
            f"store {dag['nodes']:,} nodes / {dag['edges']:,} edges (validate + insert)",
            f"{dag['store_s']:.2f} s",
            f"<= {GOAL_STORE_S:.0f} s",
            f"{GOAL_STORE_S / dag['store_s']:.2f}x",
        ],
        ["build the nodes (wf.add calls)", f"{dag['build_s']:.2f} s", "-", "-"],
        [
            "run every no-op node to completion",
            f"{dag['run_s']:.1f} s ({dag['nodes_per_s']:,.0f} nodes/s)",
            "-",
            "-",
        ],
        [
            f"linear chain of {lin['steps']:,}: step p50",
            f"{lin['p50_ms']:.2f} ms",
            f"<= {GOAL_STEP_P50_MS:.0f} ms",
            f"{GOAL_STEP_P50_MS / lin['p50_ms']:.2f}x (FlowFabric ~{FLOWFABRIC_STEP_MS:.0f} ms: "
            f"{FLOWFABRIC_STEP_MS / lin['p50_ms']:.2f}x)",
        ],
        [
            "linear chain: promotion (end -> next start) p50 / p99",
            f"{lin['promote_p50_ms']:.0f} / {lin['promote_p99_ms']:.0f} ms (store clock, whole ms)",
            f"p50 <= {GOAL_STEP_P50_MS:.0f} ms",
            "-",
        ],
        [
            "linear chain: step p90 / p99",
            f"{lin['p90_ms']:.2f} / {lin['p99_ms']:.2f} ms",
            "-",
            "-",
        ],
        ["linear chain: total", f"{lin['total_s']:.2f} s", "-", "-"],
    ]
    print_table(rows)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--pg-url", default=os.environ.get("FLOWMILL_BENCH_PG_URL", DEFAULT_PG_URL))
    p.add_argument("--synchronous", choices=("full", "normal"), default="full")
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--edges-per-node", type=int, default=3)
    p.add_argument("--chain", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--json", action="store_true")
    return asyncio.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
