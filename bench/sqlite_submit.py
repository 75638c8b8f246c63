"""One-by-one submits on SQLite: rate alone and under 32 submitters, WAL bytes, statements.

    .venv/bin/python bench/sqlite_submit.py [--n 3000] [--only one|coro|threads|cost]

Each figure uses a fresh file (synchronous=FULL, the default) and `App.submit` of a no-op
task with an int payload, as a web request that enqueues one job would:

- one: one coroutine submits N tasks one after another (each waits for its commit);
- coro: 32 coroutines on one loop submit N in all (their commits are grouped);
- threads: 32 threads call `submit_sync` N times in all (they share the app's loop);
- cost: N one-by-one submits with the writer's automatic checkpoint off, so that the WAL
  only grows: its frames (4 KiB pages + 24-byte headers) per submit, by the table or
  index each page belongs to, and the statements the writer's connection ran per submit
  (its trace callback).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import struct
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from typing import Any

import flowmill as fm
from flowmill.store.sqlite import SQLiteStore

CONCURRENCY = 32


def _app(path: str) -> tuple[fm.App, Any]:
    app = fm.App(f"sqlite:///{path}")

    @app.task()
    async def noop(i: int) -> None:
        return None

    return app, noop


async def _one(path: str, n: int) -> float:
    app, noop = _app(path)
    async with app:
        await app.submit(noop, -1)  # open and warm up outside the timing
        t0 = time.perf_counter()
        for i in range(n):
            await app.submit(noop, i)
        return n / (time.perf_counter() - t0)


async def _coro(path: str, n: int) -> float:
    app, noop = _app(path)
    async with app:
        await app.submit(noop, -1)
        per = n // CONCURRENCY

        async def submitter() -> None:
            for i in range(per):
                await app.submit(noop, i)

        t0 = time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(CONCURRENCY)))
        return per * CONCURRENCY / (time.perf_counter() - t0)


def _threads(path: str, n: int) -> float:
    app, noop = _app(path)
    app.submit_sync(noop, -1)
    per = n // CONCURRENCY
    start = threading.Barrier(CONCURRENCY + 1)

    def submitter() -> None:
        start.wait()
        for i in range(per):
            app.submit_sync(noop, i)

    threads = [threading.Thread(target=submitter) for _ in range(CONCURRENCY)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    rate = per * CONCURRENCY / (time.perf_counter() - t0)
    app.close_sync()
    return rate


def _wal_frames(path: str) -> Counter[str]:
    """The frames in the WAL file, counted by the B-tree (table or index) of their page."""
    with open(path + "-wal", "rb") as f:
        data = f.read()
    if len(data) < 32:
        return Counter()
    page_size = struct.unpack(">I", data[8:12])[0]
    pages: Counter[int] = Counter()
    for off in range(32, len(data) - 24, 24 + page_size):
        pages[struct.unpack(">I", data[off : off + 4])[0]] += 1
    with closing(sqlite3.connect(path)) as conn:
        names = dict(conn.execute("SELECT pageno, name FROM dbstat"))
    out: Counter[str] = Counter()
    for page, count in pages.items():
        out[names.get(page, "?")] += count
    return out


async def _cost(path: str, n: int) -> str:
    app, noop = _app(path)
    async with app:
        await app.submit(noop, -1)
        store = app.store.backend
        assert isinstance(store, SQLiteStore) and store._writer is not None
        traced: list[str] = []

        def setup(c: sqlite3.Connection, tx: Any) -> None:
            c.execute("PRAGMA wal_autocheckpoint = 0")
            c.set_trace_callback(traced.append)

        await store._writer.run(setup)
        with closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for i in range(n):
            await app.submit(noop, i)
        await store._writer.run(lambda c, tx: c.set_trace_callback(None))
        frames = _wal_frames(path)
    # Drop the setup job's COMMIT and the last job's BEGIN IMMEDIATE. The trace reports a statement
    # again (same text) each time it enters a trigger program: counted apart.
    seen: Counter[str] = Counter()
    previous = ""
    for sql in traced[1:-1]:
        seen["  (trigger program)" if sql == previous else " ".join(sql.split()[:3])] += 1
        previous = sql
    statements = sum(v for k, v in seen.items() if not k.startswith(" "))
    total = sum(frames.values())
    lines = [
        f"WAL per submit: {total / n:.2f} frames ({total * 4120 / n:,.0f} bytes)",
    ]
    for name, count in frames.most_common():
        lines.append(f"  {count / n:5.2f}  {name}")
    lines.append(f"statements per submit: {statements / n:.2f}")
    for sql, count in seen.most_common():
        lines.append(f"  {count / n:5.2f}  {sql}")
    return "\n".join(lines)


def fresh(fn: Callable[[str], Any]) -> Any:
    d = tempfile.mkdtemp(prefix="flowmill-submit-")
    try:
        return fn(os.path.join(d, "bench.db"))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--only", choices=("one", "coro", "threads", "cost"))
    args = p.parse_args()
    n = args.n
    want = {args.only} if args.only else {"one", "coro", "threads", "cost"}
    one = None
    if "one" in want:
        one = fresh(lambda path: asyncio.run(_one(path, n)))
        print(f"one by one: {one:,.0f} submits/s ({1e6 / one:.0f} us each)")
    for name, label, run in (
        ("coro", f"{CONCURRENCY} coroutines", lambda path: asyncio.run(_coro(path, n))),
        ("threads", f"{CONCURRENCY} threads (submit_sync)", lambda path: _threads(path, n)),
    ):
        if name in want:
            rate = fresh(run)
            ratio = f" ({rate / one:.1f}x one by one)" if one else ""
            print(f"{label}: {rate:,.0f} submits/s{ratio}")
    if "cost" in want:
        print(fresh(lambda path: asyncio.run(_cost(path, n))))
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
