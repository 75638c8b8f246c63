"""Signal latency: suspend -> deliver_signal (from another process) -> resumed handler.

An idle worker process runs a task that creates a waitpoint, publishes it as an output
frame and suspends. This process reads the frame, waits until the task is suspended,
notes the time, delivers the signal, and takes the resumed handler's own start time from
its result. Nothing polls on a timer: the worker is woken by the store's wake-ups.

    python bench/signals.py [--backend sqlite|postgres] [--n 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import msgspec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import flowmill as fm  # noqa: E402
from _signals_app import TASK, build  # noqa: E402
from throughput import BenchError, PostgresBackend, SQLiteBackend, percentile  # noqa: E402

GOALS_MS = {"p50": 10.0, "p99": 50.0}


async def one(app: fm.App) -> float:
    h = await app.submit(TASK, 0)
    async for frame in app.frames(h.id, follow=True):
        if frame.frame_type == "waitpoint":
            wp = msgspec.json.decode(frame.payload)
            break
    while (await app.get(h.id)).state is not fm.State.SUSPENDED:
        await app.store.wait_for_finish(0.01)  # the suspend is a moment away
    start = time.time_ns()
    out = await app.deliver_signal(wp["id"], wp["token"], "approved")
    if not out.resumed:
        raise BenchError(f"signal not resumed: {out}")
    resumed_at: int = await h.result(timeout=timedelta(seconds=30))
    return (resumed_at - start) / 1e6


async def run(args: argparse.Namespace) -> int:
    backend = (
        PostgresBackend(args.pg_url)
        if args.backend == "postgres"
        else SQLiteBackend(args.synchronous, None)
    )
    await backend.check()
    target = backend.fresh("signals")
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, str(HERE / "_signals_app.py"), target.url]
    if target.schema:
        cmd.append(target.schema)
    app = build(target.url, target.schema)
    await app.open()
    worker = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, env=env)
    try:
        assert worker.stdout is not None
        if (await worker.stdout.readline()).strip() != b"ready":
            raise BenchError("the worker did not start")
        for _ in range(5):
            await one(app)  # warm-up
        lat = [await one(app) for _ in range(args.n)]
    finally:
        worker.terminate()
        await asyncio.wait_for(worker.wait(), 60)
        await app.close()
        await backend.cleanup()
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    print(f"backend: {backend.describe()}")
    print(
        f"signal -> resumed handler p50: {p50:.2f} ms (goal <= {GOALS_MS['p50']} ms, "
        f"{GOALS_MS['p50'] / p50:.2f}x)"
    )
    print(
        f"signal -> resumed handler p99: {p99:.2f} ms (goal <= {GOALS_MS['p99']} ms, "
        f"{GOALS_MS['p99'] / p99:.2f}x)"
    )
    print(f"samples: {len(lat)}, max {max(lat):.2f} ms; load average {os.getloadavg()[0]:.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
