"""How long the first page of each `tasks_list` filter takes on a store of a million tasks.

Fills a fresh store (a SQLite file in a temporary directory, or a new PostgreSQL schema;
both removed afterwards) through the store's own batch insert, then moves most tasks to
`completed` with one UPDATE, and times the first page (`--limit`, 50) of each filter the
dashboard and `flowmill tasks list` offer, as the store serves it (`tasks_list`, rows
decoded into records), the median of `--repeat` runs after one warm-up:

    queue              a common queue (1 task in 10) and a rare one (100 tasks)
    kind               a common kind (1 in 20) and a rare one
    state              completed (90 %), ready (10 %), failed (100 tasks)
    tag                a key every task has; key=value held by 1 in 1,000; a rare key
    id prefix          the first 18 characters of one id; the first 8 (a broad prefix:
                       ids are time-ordered, so every task made in the same ~65 s shares it)
    key prefix         one dedup key; a prefix 1 in 2 tasks' keys start with

    .venv/bin/python bench/list_filters.py                       # SQLite and PostgreSQL
    .venv/bin/python bench/list_filters.py --backend sqlite --n 200000
    .venv/bin/python bench/list_filters.py --pg-url postgresql://postgres@127.0.0.1:5432/test

Prints `backend filter: ms` lines (and the fill time); `--json` prints one object instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from flowmill._rows import new_task_ids
from flowmill._states import State
from flowmill.store.contract import Store
from flowmill.store.contract.tasks import NewTask, TasksInsert, TasksList

BATCH = 5000
RARE = 100  # tasks in each rare group


def build_rows(n: int, start: int) -> list[NewTask]:
    ids = new_task_ids(n)
    rows = []
    for k, task_id in enumerate(ids):
        i = start + k
        rare = i % (1_000_000 // RARE) == 7  # RARE tasks per million, spread out
        tags = {"tenant": f"t{i % 1000}"}
        if rare:
            tags["vip"] = "yes"
        rows.append(
            NewTask(
                id=task_id,
                kind="rare-kind" if rare else f"kind{i % 20}",
                payload=b'{"n": 1}',
                queue="rare-queue" if rare else f"q{i % 10}",
                dedup_key=f"order-{i}" if i % 2 == 0 else None,
                tags=tags,
            )
        )
    return rows


async def fill(store: Store, n: int) -> list[str]:
    """Insert `n` tasks through the store's batch insert; returns their ids in order."""
    out: list[str] = []
    for start in range(0, n, BATCH):
        rows = build_rows(min(BATCH, n - start), start)
        outcomes = await store.tasks_insert(TasksInsert(rows))
        out.extend(o.id for o in outcomes)
    return out


# Most tasks finish: 90 % completed, the rest ready, the rare group failed.
_STATES_SQL = (
    "UPDATE {t} SET state = CASE WHEN kind = 'rare-kind' THEN 'failed' "
    "WHEN seq % 10 <> 0 THEN 'completed' ELSE 'ready' END"
)


def cases(ids: list[str]) -> list[tuple[str, TasksList]]:
    mid = ids[len(ids) // 2]
    return [
        ("queue common", TasksList(queue="q3")),
        ("queue rare", TasksList(queue="rare-queue")),
        ("kind common", TasksList(kind="kind4")),
        ("kind rare", TasksList(kind="rare-kind")),
        ("state completed", TasksList(states=[State.COMPLETED])),
        ("state ready", TasksList(states=[State.READY])),
        ("state failed (rare)", TasksList(states=[State.FAILED])),
        ("tag key (every task)", TasksList(tag_key="tenant")),
        ("tag key=value (1 in 1000)", TasksList(tag_key="tenant", tag_value="t123")),
        ("tag key (rare)", TasksList(tag_key="vip")),
        ("tag + state ready", TasksList(tag_key="tenant", tag_value="t129", states=[State.READY])),
        ("id prefix (18 chars)", TasksList(text=mid[:18])),
        ("id prefix (8 chars, broad)", TasksList(text=mid[:8])),
        ("key exact", TasksList(text=f"order-{len(ids) // 2}")),
        ("key prefix (broad)", TasksList(text="order-")),
    ]


async def time_cases(
    store: Store, ids: list[str], limit: int, repeat: int
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, p in cases(ids):
        p = TasksList(p.states, p.queue, p.kind, limit, None, p.tag_key, p.tag_value, p.text)
        await store.tasks_list(p)  # warm-up
        runs = []
        rows = 0
        for _ in range(repeat):
            t0 = time.perf_counter()
            rows = len(await store.tasks_list(p))
            runs.append((time.perf_counter() - t0) * 1000)
        out[name] = {"ms": round(statistics.median(runs), 2), "rows": rows}
    return out


async def with_sqlite(n: int, work: Callable[[Store, list[str]], Awaitable[Any]]) -> Any:
    from flowmill.store.sqlite import SQLiteStore

    folder = tempfile.mkdtemp(prefix="fm-list-bench-")
    path = os.path.join(folder, "bench.db")
    store = SQLiteStore(path)
    await store.open()
    try:
        t0 = time.perf_counter()
        ids = await fill(store, n)
        with sqlite3.connect(path) as conn:
            conn.execute(_STATES_SQL.format(t="fm_tasks"))
        filled = time.perf_counter() - t0
        return filled, await work(store, ids)
    finally:
        await store.close()
        shutil.rmtree(folder, ignore_errors=True)


async def with_postgres(
    n: int, url: str, work: Callable[[Store, list[str]], Awaitable[Any]]
) -> Any:
    import psycopg
    from psycopg import sql

    from flowmill.store.postgres import PostgresStore

    schema = f"fmbench_list_{os.getpid()}"
    store = PostgresStore(url, schema=schema)
    await store.open()
    try:
        t0 = time.perf_counter()
        ids = await fill(store, n)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            table = sql.Identifier(schema, "tasks").as_string(conn)
            await conn.execute(_STATES_SQL.format(t=table).encode())
            await conn.execute(f"VACUUM ANALYZE {table}".encode())  # what autovacuum does
        filled = time.perf_counter() - t0
        return filled, await work(store, ids)
    finally:
        await store.close()
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            await conn.execute(drop)


async def run(args: argparse.Namespace) -> int:
    results: dict[str, Any] = {"n": args.n, "limit": args.limit, "repeat": args.repeat}

    async def work(store: Store, ids: list[str]) -> dict[str, dict[str, Any]]:
        return await time_cases(store, ids, args.limit, args.repeat)

    for backend in args.backend.split(","):
        if backend == "sqlite":
            filled, timings = await with_sqlite(args.n, work)
        elif backend == "postgres":
            filled, timings = await with_postgres(args.n, args.pg_url, work)
        else:
            print(f"error: unknown backend {backend!r}: sqlite or postgres", file=sys.stderr)
            return 2
        results[backend] = {"fill_s": round(filled, 1), "first_page": timings}
        if not args.json:
            print(f"# {backend}: {args.n:,} tasks filled in {filled:.1f} s")
            for name, t in timings.items():
                print(f"{backend} {name}: {t['ms']:.2f} ms ({t['rows']} rows)")
            sys.stdout.flush()
    if args.json:
        print(json.dumps(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="tasks in the store")
    p.add_argument("--backend", default="sqlite,postgres", help="sqlite, postgres or both")
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--limit", type=int, default=50, help="page size")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per filter (median)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = p.parse_args(argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
