"""Store-level PostgreSQL figures: drain rate with worker processes, NOTIFY round trip.

    .venv/bin/python bench/pg_drain.py [--url URL] [--tasks 60000] [--procs 2]

Drain: N no-op tasks inserted up front, then `--procs` processes each run a few claim ->
finish loops (claim batches, one tasks_finish per batch) until the queue is empty.
Round trip: an idle worker process blocked in wait_for_work; the parent inserts one task
and waits (wait_for_finish) for its result row; p50/p95 over `--rounds`.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import time

from flowmill._states import State
from flowmill.store.contract.tasks import (
    Finish,
    NewTask,
    TasksClaim,
    TasksFinish,
    TasksInsert,
)
from flowmill.store.postgres import PostgresStore
from flowmill.testing._pg import drop_pg_schema, pg_test_url, unique_schema_name


async def drain_worker(url: str, schema: str, loops: int, batch: int) -> int:
    store = PostgresStore(url, schema=schema, max_size=loops + 1)
    await store.open()
    done = 0

    async def loop() -> None:
        nonlocal done
        idle = 0
        while idle < 3:
            rows = await store.tasks_claim(TasksClaim("w", ["default"], ["noop"], batch, 30_000))
            if not rows:
                idle += 1
                await store.wait_for_work(0.05)
                continue
            idle = 0
            await store.tasks_finish(
                TasksFinish([Finish(r.id, r.lease_epoch, State.COMPLETED, b"null") for r in rows])
            )
            done += len(rows)

    await asyncio.gather(*(loop() for _ in range(loops)))
    await store.close()
    return done


def drain_proc(url: str, schema: str, loops: int, batch: int, out: mp.Queue[int]) -> None:
    out.put(asyncio.run(drain_worker(url, schema, loops, batch)))


async def idle_worker(url: str, schema: str, rounds: int) -> None:
    store = PostgresStore(url, schema=schema)
    await store.open()
    done = 0
    while done < rounds:
        rows = await store.tasks_claim(TasksClaim("w", ["rt"], ["noop"], 10, 30_000))
        if rows:
            await store.tasks_finish(
                TasksFinish([Finish(r.id, r.lease_epoch, State.COMPLETED, b"1") for r in rows])
            )
            done += len(rows)
            continue
        await store.wait_for_work(1.0)
    await store.close()


def idle_proc(url: str, schema: str, rounds: int) -> None:
    asyncio.run(idle_worker(url, schema, rounds))


async def round_trips(url: str, schema: str, rounds: int) -> list[float]:
    store = PostgresStore(url, schema=schema)
    await store.open()
    proc = mp.get_context("spawn").Process(target=idle_proc, args=(url, schema, rounds))
    proc.start()
    await asyncio.sleep(2.0)  # the worker is up and idle, blocked in wait_for_work
    lat: list[float] = []
    for i in range(rounds):
        await store.wait_for_finish(0)
        t0 = time.perf_counter()
        await store.tasks_insert(
            TasksInsert([NewTask(id=f"rt-{i}", kind="noop", payload=b"{}", queue="rt")])
        )
        while not await store.results_get([f"rt-{i}"]):
            await store.wait_for_finish(1.0)
        lat.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(0.02)  # let the worker go idle again
    proc.join()
    await store.close()
    return lat


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default=pg_test_url())
    ap.add_argument("--tasks", type=int, default=60_000)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--loops", type=int, default=2, help="claim loops per process")
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    schema = unique_schema_name("fm_drain")
    store = PostgresStore(args.url, schema=schema)
    await store.open()
    try:
        await store.tasks_insert(
            TasksInsert(
                [NewTask(id=f"d-{i}", kind="noop", payload=b"{}") for i in range(args.tasks)]
            )
        )
        ctx = mp.get_context("spawn")
        out: mp.Queue[int] = ctx.Queue()
        procs = [
            ctx.Process(target=drain_proc, args=(args.url, schema, args.loops, args.batch, out))
            for _ in range(args.procs)
        ]
        t0 = time.perf_counter()
        for p in procs:
            p.start()
        total = sum(out.get() for _ in procs)
        dt = time.perf_counter() - t0
        for p in procs:
            p.join()
        print(
            f"drain: {total} tasks by {args.procs} processes x {args.loops} loops "
            f"(batch {args.batch}) in {dt:.2f}s = {total / dt:,.0f} tasks/s "
            "(includes process start-up)"
        )
        lat = sorted(await round_trips(args.url, schema, args.rounds))
        print(
            f"round trip (insert -> idle worker woken by NOTIFY -> finish -> result seen): "
            f"p50 {statistics.median(lat):.2f} ms, p95 {lat[int(len(lat) * 0.95) - 1]:.2f} ms"
        )
    finally:
        await store.close()
        await drop_pg_schema(args.url, schema)


if __name__ == "__main__":
    asyncio.run(main())
