"""PostgreSQL accounting: statements, round trips, commits and WAL bytes per submit, per
drained task (claim + finish) and per round trip (submit, then await the result), and the
plans (generic or custom) of the prepared statements, measured on a private database.

    createdb -h 127.0.0.1 -U postgres pgspeed_1
    .venv/bin/python bench/pg_accounting.py [--url URL] [--n 2000]

Statements are counted on the client (every `execute` of the store's cursor, by the name
the store gives the text in `Queries`); WAL from `pg_walinspect` over the run, counting
only records that touch this database's relations or belong to the transactions that
did (commit records), so other databases' traffic on the same server is left out. The
database needs `CREATE EXTENSION pg_walinspect` (superuser; done here if missing).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import time
from typing import Any

import psycopg

import flowmill as fm
from flowmill.store.postgres import _cursor
from flowmill.store.postgres._sql import Queries

COUNTS: collections.Counter[str] = collections.Counter()
NAMES: dict[str, str] = {}


def _name(query: Any) -> str:
    if not isinstance(query, str):
        return "?"
    return NAMES.get(query) or query.split()[0] + ":" + " ".join(query.split()[:6])


def _instrument(schema: str) -> None:
    q = Queries(schema)
    for attr, text in vars(q).items():
        if isinstance(text, str):
            NAMES.setdefault(text, attr)
    cls = _cursor.StoreCursor
    plain = cls.execute

    async def execute(self: Any, query: Any, params: Any = None, **kw: Any) -> Any:
        COUNTS[_name(query)] += 1
        return await plain(self, query, params, **kw)

    cls.execute = execute  # type: ignore[method-assign]


async def wal_between(url: str, start: str, end: str) -> dict[str, Any]:
    """WAL of this database between two LSNs: records, bytes, FPI bytes, commits."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            """
WITH r AS (SELECT * FROM pg_get_wal_records_info(%s::pg_lsn, %s::pg_lsn)),
mine AS (SELECT DISTINCT xid FROM r
    WHERE block_ref LIKE '%%/' || (SELECT oid FROM pg_database
        WHERE datname = current_database()) || '/%%' AND xid::text <> '0')
SELECT count(*), coalesce(sum(record_length), 0), coalesce(sum(fpi_length), 0),
    count(*) FILTER (WHERE resource_manager = 'Transaction' AND record_type = 'COMMIT'),
    count(DISTINCT xid::text)
FROM r WHERE xid::text IN (SELECT xid::text FROM mine)
""",
            (start, end),
        )
        row = await cur.fetchone()
        assert row is not None
        recs, nbytes, fpi, commits, xids = row
        cur = await conn.execute(
            """
WITH r AS (SELECT * FROM pg_get_wal_records_info(%s::pg_lsn, %s::pg_lsn)),
mine AS (SELECT DISTINCT xid FROM r
    WHERE block_ref LIKE '%%/' || (SELECT oid FROM pg_database
        WHERE datname = current_database()) || '/%%' AND xid::text <> '0')
SELECT resource_manager || ':' || split_part(record_type, ' ', 1), count(*),
    sum(record_length)
FROM r WHERE xid::text IN (SELECT xid::text FROM mine) GROUP BY 1 ORDER BY 3 DESC
""",
            (start, end),
        )
        kinds = await cur.fetchall()
    return {
        "records": recs,
        "bytes": int(nbytes),
        "fpi": int(fpi),
        "commits": commits,
        "xids": xids,
        "kinds": kinds,
    }


async def lsn(url: str) -> str:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        row = await (await conn.execute("SELECT pg_current_wal_lsn()::text")).fetchone()
        assert row is not None
        return str(row[0])


def report(what: str, n: int, wal: dict[str, Any], dt: float) -> None:
    print(f"\n== {what}: {n} tasks, {dt * 1000 / n:.3f} ms/task wall")
    for name, c in sorted(COUNTS.items(), key=lambda kv: -kv[1]):
        print(f"   {c / n:8.3f} /task  {name}")
    print(
        f"   WAL: {wal['bytes'] / n:,.0f} B/task ({wal['fpi'] / n:,.0f} B of it full pages), "
        f"{wal['records'] / n:.2f} records/task, commits {wal['commits'] / n:.3f}/task "
        f"({wal['xids']} transactions)"
    )
    for kind, c, b in wal["kinds"][:12]:
        print(f"      {kind:<28} {c / n:7.2f} rec/task {int(b) / n:8.0f} B/task")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/pgspeed_1")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    schema = f"acct_{os.urandom(4).hex()}"
    async with await psycopg.AsyncConnection.connect(args.url, autocommit=True) as conn:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        await conn.execute("CHECKPOINT")  # full-page images come after a checkpoint
    _instrument(schema)
    app = fm.App(args.url, schema=schema)

    @app.task(name="noop")
    async def noop(i: int) -> None:
        return None

    @app.task(name="echo")
    async def echo(i: int) -> int:
        return i

    await app.open()
    try:
        for i in range(50):  # warm: the pool, psycopg's prepared statements
            await app.submit(noop, i)
        worker = app.worker(concurrency=args.concurrency)
        await worker.run(stop_when_idle=True)

        COUNTS.clear()
        start = await lsn(args.url)
        t0 = time.perf_counter()
        for i in range(args.n):
            await app.submit(noop, i)
        dt = time.perf_counter() - t0
        end = await lsn(args.url)
        report(
            "submit one by one (await app.submit)",
            args.n,
            await wal_between(args.url, start, end),
            dt,
        )

        COUNTS.clear()
        worker = app.worker(concurrency=args.concurrency)
        start = await lsn(args.url)
        t0 = time.perf_counter()
        await worker.run(stop_when_idle=True)
        dt = time.perf_counter() - t0
        end = await lsn(args.url)
        report(
            f"drain (app.worker(concurrency={args.concurrency}))",
            args.n,
            await wal_between(args.url, start, end),
            dt,
        )
        COUNTS.clear()
        worker = app.worker(concurrency=args.concurrency)
        running = asyncio.get_running_loop().create_task(worker.run())
        for i in range(20):  # warm: the worker's claims and finishes prepared
            await (await app.submit(echo, i)).result()
        COUNTS.clear()
        rts = max(1, args.n // 10)
        start = await lsn(args.url)
        t0 = time.perf_counter()
        for i in range(rts):
            await (await app.submit(echo, i)).result()
        dt = time.perf_counter() - t0
        end = await lsn(args.url)
        worker.stop()
        await running
        plans = await app.store.backend._fetch(  # type: ignore[attr-defined]
            "SELECT generic_plans, custom_plans, statement FROM pg_prepared_statements"
        )
        print("\n== prepared statements on one pooled connection (generic, custom plans)")
        for generic, custom, text in plans:
            print(f"   {generic:6} {custom:6}  {text[:40]} ... {text[-110:]}")
        report(
            "round trip (submit, then await its result; worker in this process)",
            rts,
            await wal_between(args.url, start, end),
            dt,
        )
    finally:
        await app.close()
        async with await psycopg.AsyncConnection.connect(args.url, autocommit=True) as conn:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    asyncio.run(main())
