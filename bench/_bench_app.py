"""The benchmark's app and task, and the worker process entry that `throughput.py` starts.

Both the benchmark and its worker processes build the app with `build_app`, so the task
is registered under the same name (`bench.noop`) whatever module name this file is
imported as.

Worker process protocol (one line per message, on stdin/stdout):

    python bench/_bench_app.py --url URL [--schema S] --concurrency 64 --mode drain|serve

* the process opens the app, then prints `ready`;
* `drain`: it waits for a `go` line, then runs `worker.run(stop_when_idle=True)`;
  `serve`: it runs `worker.run()` at once, until told to stop;
* a `stop` line (or end of input) stops the worker gracefully;
* at the end it prints `done <claimed> <seconds from go to the end of run()> name=cpu ...`:
  the CPU seconds each thread used between go and the end of `run()` (Linux only), and
  `process=` for the whole process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from typing import Any

import flowmill as fm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import say, stdin_reader, stop_on_stdin

TASK_NAME = "bench.noop"


async def noop(x: int) -> None:
    """The benchmark task: takes an int, does nothing."""


def build_app(url: str, schema: str | None = None) -> tuple[fm.App, fm.TaskDef]:
    """The benchmark app on `url` (with a PostgreSQL `schema` when given) and its task."""
    options: dict[str, Any] = {}
    if schema is not None:
        options["schema"] = schema
    app = fm.App(url, **options)
    task = app.task(name=TASK_NAME)(noop)
    return app, task


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) used so far by each live thread, and by the process."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for t in threading.enumerate():
        try:
            with open(f"/proc/self/task/{t.native_id}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[t.name.replace(" ", "_")] = (int(fields[11]) + int(fields[12])) / tick
    times = os.times()
    out["process"] = times.user + times.system
    return out


async def _worker_main(url: str, schema: str | None, concurrency: int, mode: str) -> int:
    app, _ = build_app(url, schema)
    await app.open()
    worker = app.worker(concurrency=concurrency)
    if os.environ.get("FLOWMILL_BENCH_METRICS") == "1":  # throughput.py --metrics
        from flowmill._metrics import instrument

        instrument(worker)
    stdin = await stdin_reader()
    say("ready")
    if mode == "drain":
        line = (await stdin.readline()).strip()
        if line != b"go":
            await app.close()
            return 0
    started = time.monotonic()
    cpu_before = thread_cpu()

    watcher = asyncio.get_running_loop().create_task(stop_on_stdin(stdin, worker))
    try:
        await worker.run(stop_when_idle=mode == "drain")
        elapsed = time.monotonic() - started
        cpu_after = thread_cpu()  # before close: the store's threads are still alive
    finally:
        watcher.cancel()
        await app.close()
    cpu = " ".join(
        f"{name}={used - cpu_before.get(name, 0.0):.2f}" for name, used in cpu_after.items()
    )
    say(f"done {worker.stats.claimed} {elapsed:.6f} {cpu}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="flowmill benchmark worker process")
    parser.add_argument("--url", required=True)
    parser.add_argument("--schema", default=None)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--mode", choices=("drain", "serve"), default="drain")
    args = parser.parse_args(argv)
    return asyncio.run(_worker_main(args.url, args.schema, args.concurrency, args.mode))


if __name__ == "__main__":
    sys.exit(main())
