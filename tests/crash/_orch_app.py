"""An orchestrator for the crash tests, run in worker subprocesses.

Marker files in the ledger's directory decide where an attempt blocks, so a test can
SIGKILL the worker at a chosen point: `block-execute`, `block-kids`, `block-finalize`.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import flowmill as fm

from ._crash_app import serve


@dataclass
class Memo:
    children: int
    note: str


def init_ledger(path: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE runs (what TEXT, task_id TEXT, attempt INTEGER, pid INTEGER)")


def build(url: str, ledger: str) -> fm.App:
    app = fm.App(url)
    marks = Path(ledger).parent

    def record(what: str, ctx: fm.Context) -> None:
        with sqlite3.connect(ledger, timeout=30) as conn:
            conn.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?)",
                (what, ctx.task_id, ctx.attempt, os.getpid()),
            )

    async def block_while(mark: str) -> None:
        # Parks the attempt while the marker exists: the test kills the worker meanwhile.
        while (marks / mark).exists():
            await asyncio.sleep(0.01)

    @app.task(name="kid", retry=fm.Retry(max_attempts=5, backoff=fm.Fixed(timedelta(0))))
    async def kid(n: int, ctx: fm.Context) -> int:
        record("kid", ctx)
        await block_while("block-kids")
        return n

    @app.executor(name="crashy", retry=fm.Retry(max_attempts=5, backoff=fm.Fixed(timedelta(0))))
    class Crashy(fm.Executor[int, Memo, int]):
        fail_fast = False

        async def execute(self, n: int, ctx: fm.Context) -> Memo:
            record("execute", ctx)
            await ctx.spawn_many(kid, range(n), keys=[f"kid-{i}" for i in range(n)])
            await block_while("block-execute")
            return Memo(n, f"memo of attempt {ctx.attempt}")

        async def finalize(self, n: int, memo: Memo, ctx: fm.Context) -> int:
            record("finalize", ctx)
            await block_while("block-finalize")
            total = 0
            async for child in ctx.children(kid):
                total += child.result if child.ok else 1000
            return total * 10 + memo.children

    return app


async def _main(url: str, ledger: str) -> None:
    await serve(build(url, ledger), lease_s=1.0, concurrency=8)


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], sys.argv[2]))
