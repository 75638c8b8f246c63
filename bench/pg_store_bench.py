"""PostgreSQL store figures: tasks_insert rows/s, claim latency at N ready rows, EXPLAIN.

    .venv/bin/python bench/pg_store_bench.py [--url URL] [--ready 1000000] [--keep]

Runs in a throwaway schema (dropped at the end unless --keep).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import psycopg
from psycopg import sql

from flowmill._states import State
from flowmill.store.contract.tasks import Finish, NewTask, TasksClaim, TasksFinish, TasksInsert
from flowmill.store.postgres import PostgresStore
from flowmill.testing._pg import drop_pg_schema, pg_test_url, unique_schema_name


def tasks(n: int, prefix: str, *, keyed: bool = False) -> list[NewTask]:
    return [
        NewTask(
            id=f"{prefix}-{i}",
            kind="noop",
            payload=b'{"n": %d}' % i,
            priority=i % 3,
            dedup_key=f"k-{prefix}-{i}" if keyed else None,
            tags={"tenant": "acme"} if i % 2 else {},
        )
        for i in range(n)
    ]


async def bench_insert(
    store: PostgresStore, n: int, label: str, keyed: bool = False, runs: int = 3
) -> None:
    """Best of `runs` calls of `n` fresh tasks each (the machine may be shared)."""
    rates: list[float] = []
    for run in range(runs):
        batch = tasks(n, f"{label}-{n}-{run}", keyed=keyed)
        t0 = time.perf_counter()
        await store.tasks_insert(TasksInsert(batch))
        rates.append(n / (time.perf_counter() - t0))
    print(
        f"tasks_insert {n:>7} rows{' (keyed)' if keyed else ''}: best {max(rates):,.0f} rows/s, "
        f"median {statistics.median(rates):,.0f} rows/s ({runs} runs)"
    )


async def fill(store: PostgresStore, total: int) -> None:
    t0 = time.perf_counter()
    chunk = 100_000
    for start in range(0, total, chunk):
        await store.tasks_insert(TasksInsert(tasks(min(chunk, total - start), f"fill{start}")))
    dt = time.perf_counter() - t0
    print(f"filled {total:,} ready rows in {dt:.1f}s ({total / dt:,.0f} rows/s)")


async def bench_claim(store: PostgresStore, limit: int, rounds: int) -> None:
    lat: list[float] = []
    claimed: list[tuple[str, int]] = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        rows = await store.tasks_claim(TasksClaim("bench", ["default"], ["noop"], limit, 30_000))
        lat.append((time.perf_counter() - t0) * 1000)
        claimed.extend((r.id, r.lease_epoch) for r in rows)
    lat.sort()
    print(
        f"tasks_claim limit={limit:<4} p50 {statistics.median(lat):.2f} ms, "
        f"p95 {lat[int(len(lat) * 0.95) - 1]:.2f} ms, max {lat[-1]:.2f} ms ({rounds} rounds)"
    )
    t0 = time.perf_counter()
    items = [Finish(i, e, State.COMPLETED, result=b"null") for i, e in claimed]
    for s in range(0, len(items), 1000):
        await store.tasks_finish(TasksFinish(items[s : s + 1000]))
    dt = time.perf_counter() - t0
    print(f"tasks_finish {len(items)} in batches of 1000: {len(items) / dt:,.0f} finishes/s")


async def explain(url: str, schema: str) -> None:
    """EXPLAIN ANALYZE the hot statements (rolled back) over the filled table."""
    store = PostgresStore(url, schema=schema)
    q = store._q
    plans: dict[str, tuple[str, dict[str, Any]]] = {
        "claim (one queue, limit 100)": (
            q.claim_one,
            {"kinds": ["noop"], "limit": 100, "worker": "x", "ttl": 30_000, "queue": "default"},
        ),
        "claim (three queues, limit 100)": (
            q.claim_many,
            {
                "kinds": ["noop"],
                "limit": 100,
                "worker": "x",
                "ttl": 30_000,
                "queues": ["default", "a", "b"],
            },
        ),
        "promote": (q.promote, {"limit": 1000, "work_channel": "x"}),
        "expire": (q.expire, {"limit": 1000, "error": None, "finish_channel": "x"}),
        "leases_expired": (q.leases_expired, {"limit": 1000}),
    }
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(sql.SQL("ANALYZE {}.tasks").format(sql.Identifier(schema)))
        for name, (query, params) in plans.items():
            async with conn.transaction(force_rollback=True):
                cur = await conn.execute(
                    "EXPLAIN (ANALYZE, COSTS OFF) " + query, {"now": None, **params}
                )
                lines = [line for (line,) in await cur.fetchall()]
            scans = [ln.strip() for ln in lines if "Scan" in ln and " on tasks" in ln]
            total = next(ln for ln in lines if ln.startswith("Execution Time"))
            print(f"EXPLAIN {name}: {total}")
            for scan in scans:
                print("     ", scan)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default=pg_test_url())
    ap.add_argument("--ready", type=int, default=1_000_000)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    schema = unique_schema_name("fm_bench")
    store = PostgresStore(args.url, schema=schema)
    await store.open()
    try:
        await bench_insert(store, 1_000, "warm-up", runs=1)
        for n in (10_000, 100_000):
            await bench_insert(store, n, "plain")
        await bench_insert(store, 10_000, "keyed", keyed=True)
        await fill(store, max(0, args.ready - 361_000))
        await explain(args.url, schema)
        for limit in (1, 100):
            await bench_claim(store, limit, 200)
    finally:
        await store.close()
        if not args.keep:
            await drop_pg_schema(args.url, schema)


if __name__ == "__main__":
    asyncio.run(main())
