"""What worker metrics cost on a drain: throughput and worker CPU with `instrument(worker)`
(Prometheus metrics on) against without, the same N, in interleaved runs.

Each run is `throughput.py`'s drain figure on a fresh store (N no-op tasks submitted, one
worker process started, timed from "go" to the last completion): A without metrics, B with
them (the worker process calls `flowmill._metrics.instrument(worker)`), run A, B, A, B, ...
`--repeat` times each, so drift on a shared machine falls on both alike. Prints every run,
then the median of the per-pair ratios: throughput B/A (1.00 = free; 0.97 = 3 % slower) and
worker CPU per task B/A (1.03 = 3 % more CPU).

    .venv/bin/python bench/metrics_cost.py                     # SQLite, N=20,000, 5 pairs
    .venv/bin/python bench/metrics_cost.py --backend postgres --n 20000 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import (  # the drain figure and its stores
    BenchError,
    Figure,
    PostgresBackend,
    SQLiteBackend,
    drain,
)

ENV = "FLOWMILL_BENCH_METRICS"  # read by each worker process (_bench_app.py)


def worker_cpu(fig: Figure) -> float:
    """CPU seconds the worker process used from go to the end of its run."""
    return sum(c.get("process", 0.0) for c in fig.extra["worker_cpu_seconds"])


async def one(backend: Any, n: int, concurrency: int, logs: str, metrics: bool) -> Figure:
    if metrics:
        os.environ[ENV] = "1"
    else:
        os.environ.pop(ENV, None)
    try:
        return await drain(backend, n, 1, concurrency, logs)
    finally:
        os.environ.pop(ENV, None)


async def run(args: argparse.Namespace) -> int:
    backend: Any
    if args.backend == "sqlite":
        backend = SQLiteBackend(args.synchronous, None)
    else:
        backend = PostgresBackend(args.pg_url)
        await backend.check()
    pairs: list[dict[str, float]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="flowmill-bench-logs-") as logs:
            for r in range(1, args.repeat + 1):
                row: dict[str, float] = {}
                for label, on in (("off", False), ("on", True)):
                    fig = await one(backend, args.n, args.concurrency, logs, on)
                    row[f"{label}_tps"] = fig.value
                    row[f"{label}_cpu_ms_per_task"] = worker_cpu(fig) * 1000 / args.n
                    if not args.json:
                        print(
                            f"# pair {r} metrics {label:>3}: {fig.value:,.0f} tasks/s, "
                            f"worker CPU {row[f'{label}_cpu_ms_per_task']:.3f} ms/task",
                            flush=True,
                        )
                pairs.append(row)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        await backend.cleanup()
    tput = statistics.median(p["on_tps"] / p["off_tps"] for p in pairs)
    cpu = statistics.median(p["on_cpu_ms_per_task"] / p["off_cpu_ms_per_task"] for p in pairs)
    summary = {
        "backend": args.backend,
        "n": args.n,
        "pairs": pairs,
        "median_off_tps": statistics.median(p["off_tps"] for p in pairs),
        "median_on_tps": statistics.median(p["on_tps"] for p in pairs),
        "median_throughput_ratio_on_off": round(tput, 4),
        "median_cpu_per_task_ratio_on_off": round(cpu, 4),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{args.backend} drain N={args.n}, {args.repeat} A/B pairs: median throughput "
            f"{summary['median_off_tps']:,.0f} tasks/s off, {summary['median_on_tps']:,.0f} on; "
            f"median ratio on/off: throughput {tput:.3f} ({(1 - tput) * 100:+.1f} % cost), "
            f"worker CPU per task {cpu:.3f} ({(cpu - 1) * 100:+.1f} %)"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--synchronous", choices=("full", "normal"), default="full")
    p.add_argument("--n", type=int, default=20_000, help="tasks per drain")
    p.add_argument("--concurrency", type=int, default=64, help="worker concurrency")
    p.add_argument("--repeat", type=int, default=5, help="A/B pairs (at least 3)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = p.parse_args(argv)
    if args.repeat < 3:
        p.error("--repeat: at least 3 pairs")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
