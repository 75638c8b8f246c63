"""flowmill throughput benchmark: enqueue rate, drain rate and round-trip latency.

    .venv/bin/python bench/throughput.py                      # SQLite file, N=20,000
    .venv/bin/python bench/throughput.py --synchronous normal
    .venv/bin/python bench/throughput.py --workers 1,2         # both drain figures
    .venv/bin/python bench/throughput.py --backend postgres --workers 2
    .venv/bin/python bench/throughput.py --json                # machine-readable

Every figure runs on a fresh store (a new SQLite file in a temporary directory, or a new
PostgreSQL schema that is dropped afterwards) and is printed as `name: value unit`,
followed by a summary table with ratios against the reference figures. See README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import flowmill as fm
from _bench_app import build_app

WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bench_app.py")
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
PHASES = ("submit-one", "submit-concurrent", "submit-many", "drain", "round-trip")
WARMUP_ROUND_TRIPS = 10
READY_TIMEOUT_S = 60.0
EXIT_OPEN_FAILED = 2


class BenchError(Exception):
    """A benchmark step failed (the message says which and why)."""


# -- figures and references ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Figure:
    key: str
    name: str
    value: float
    unit: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def higher_is_better(self) -> bool:
        return self.unit != "ms"

    def text(self) -> str:
        value = f"{self.value:.0f}" if self.unit == "tasks/s" else f"{self.value:.2f}"
        return f"{self.name}: {value} {self.unit}"


@dataclass(frozen=True, slots=True)
class Reference:
    label: str  # "goal" or "other"
    value: float
    note: str


# Measured on this 2-core machine; see README.md. "other" is the best SQLite-backed
# Python queue measured here.
REFERENCES: dict[str, dict[str, list[Reference]]] = {
    "sqlite": {
        "submit_one": [
            Reference("goal", 5000, ">= 5,000/s"),
            Reference("other", 5000, "~5,000/s"),
        ],
        "submit_many": [Reference("goal", 50000, ">= 50,000/s")],
        "drain_1": [Reference("goal", 5000, ">= 5,000/s")],
        "drain_2": [Reference("other", 2500, "~2,500/s (2 processes)")],
        "rt_p50": [Reference("goal", 3.0, "<= 3 ms"), Reference("other", 6.0, "~6 ms")],
    },
    "postgres": {
        "submit_many": [Reference("goal", 50000, ">= 50,000/s")],
        "drain_2": [Reference("goal", 6000, ">= 6,000/s (2 processes)")],
        "rt_p50": [Reference("goal", 5.0, "<= 5 ms")],
    },
}


async def backend_opens(backend: Backend, *, as_json: bool) -> bool:
    """Open the backend once; on failure say why (also as JSON when asked) and say no."""
    try:
        await backend.check()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if as_json:
            print(json.dumps({"error": str(exc)}))
        return False
    return True


def ratio(fig: Figure, ref: Reference) -> float:
    """>= 1.0 means at least as good as the reference (latency: reference / measured)."""
    if fig.value <= 0:
        return math.inf if not fig.higher_is_better else 0.0
    return fig.value / ref.value if fig.higher_is_better else ref.value / fig.value


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


# -- backends ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """One fresh store: the URL and (PostgreSQL) the schema to pass to the app."""

    url: str
    schema: str | None = None


class SQLiteBackend:
    name = "sqlite"

    def __init__(self, synchronous: str, directory: str | None) -> None:
        self.synchronous = synchronous.upper()
        self.dir = tempfile.mkdtemp(prefix="flowmill-bench-", dir=directory)
        self._paths: list[str] = []

    def describe(self) -> str:
        return f"sqlite (synchronous={self.synchronous}, files in {self.dir})"

    async def check(self) -> None:
        return None

    def fresh(self, label: str) -> Target:
        path = os.path.join(self.dir, f"{label}-{len(self._paths)}.db")
        self._paths.append(path)
        return Target(f"sqlite:///{path}?synchronous={self.synchronous.lower()}")

    async def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        # The store leaves one wake-up directory per database file in the temp dir.
        from flowmill.store._common import wake as _wake

        for path in self._paths:
            with contextlib.suppress(OSError):
                os.rmdir(_wake.wake_dir_for(path))


class PostgresBackend:
    name = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"fmbench_{os.getpid()}_{os.urandom(3).hex()}"
        self.schemas: list[str] = []
        self.isolated = True

    def describe(self) -> str:
        where = f"schemas {self.prefix}_*" if self.isolated else "the default schema"
        return f"postgres ({self.url}, {where})"

    async def check(self) -> None:
        """Open the backend once; BenchError (exit 2) when it cannot be opened."""
        try:
            from flowmill.store.postgres import PostgresStore
        except ImportError as exc:
            raise BenchError(f"the PostgreSQL store cannot be imported: {exc}") from exc
        self.isolated = "schema" in inspect.signature(PostgresStore.__init__).parameters
        target = self.fresh("check")
        app, _ = build_app(target.url, target.schema)
        try:
            await asyncio.wait_for(app.open(), 30)
            await app.status()
        except Exception as exc:
            self.schemas.clear()  # nothing to drop: the schema was never made
            raise BenchError(f"cannot open the PostgreSQL store at {self.url}: {exc}") from exc
        finally:
            with contextlib.suppress(Exception):
                await app.close()

    def fresh(self, label: str) -> Target:
        if not self.isolated:
            return Target(self.url)
        schema = f"{self.prefix}_{label}_{len(self.schemas)}".replace("-", "_")
        self.schemas.append(schema)
        return Target(self.url, schema)

    async def cleanup(self) -> None:
        if not self.schemas:
            return
        import psycopg
        from psycopg import sql

        try:
            async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                for schema in self.schemas:
                    await conn.execute(
                        sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                    )
        except Exception as exc:
            print(f"# warning: could not drop the benchmark schemas: {exc}", file=sys.stderr)


class RedisBackend:
    """Each figure under a key prefix of its own on one Redis/Valkey server."""

    name = "redis"

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"fmbench:{os.getpid()}:{os.urandom(3).hex()}:"
        self.count = 0

    def describe(self) -> str:
        return f"redis ({self.url}, keys {self.prefix}*)"

    async def check(self) -> None:
        """Open the backend once; BenchError (exit 2) when it cannot be opened."""
        target = self.fresh("check")
        app, _ = build_app(target.url, target.schema)
        try:
            await asyncio.wait_for(app.open(), 30)
            await app.status()
        except Exception as exc:
            raise BenchError(f"cannot open the Redis store at {self.url}: {exc}") from exc
        finally:
            with contextlib.suppress(Exception):
                await app.close()

    def fresh(self, label: str) -> Target:
        self.count += 1
        sep = "&" if "?" in self.url else "?"
        return Target(f"{self.url}{sep}prefix={self.prefix}{label}:{self.count}:")

    async def cleanup(self) -> None:
        try:
            from redis.asyncio import Redis

            client = Redis.from_url(self.url)
            keys = [k async for k in client.scan_iter(match=self.prefix + "*", count=1000)]
            for i in range(0, len(keys), 1000):
                await client.delete(*keys[i : i + 1000])
            await client.aclose()
        except Exception as exc:
            print(f"# warning: could not delete the benchmark keys: {exc}", file=sys.stderr)


Backend = SQLiteBackend | PostgresBackend | RedisBackend


# -- worker processes ----------------------------------------------------------------------


class WorkerProcess:
    """One `_bench_app.py` worker process, driven over stdin/stdout (see its docstring)."""

    # `--worker-prefix`: a command put in front of the worker's (a profiler); `{label}` in
    # it becomes a name unique to the worker, such as drain2-w1.
    prefix = ""

    def __init__(self, proc: asyncio.subprocess.Process, stderr_path: str) -> None:
        self.proc = proc
        self.stderr_path = stderr_path

    @classmethod
    async def start(
        cls, target: Target, concurrency: int, mode: str, label: str, logs: str
    ) -> WorkerProcess:
        stderr_path = os.path.join(logs, f"{label}.stderr")
        cmd = [
            *shlex.split(cls.prefix.replace("{label}", label)),
            sys.executable,
            WORKER_SCRIPT,
            "--url",
            target.url,
            "--concurrency",
            str(concurrency),
            "--mode",
            mode,
        ]
        if target.schema is not None:
            cmd += ["--schema", target.schema]
        # The child's stderr goes to a file (a pipe nobody reads could fill up and block it).
        err = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err
            )
        finally:
            os.close(err)
        return cls(proc, stderr_path)

    def stderr_tail(self, lines: int = 15) -> str:
        try:
            with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    async def expect(self, word: str, timeout_s: float) -> list[str]:
        """Wait for a line starting with `word`; return its fields."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"worker {self.proc.pid}: no {word!r} within {timeout_s:.0f}s")
            try:
                raw = await asyncio.wait_for(self.proc.stdout.readline(), left)
            except TimeoutError:
                continue
            if not raw:
                await self.proc.wait()
                raise BenchError(
                    f"worker {self.proc.pid} exited with code {self.proc.returncode} before "
                    f"{word!r}:\n{self.stderr_tail()}"
                )
            fields = raw.decode().split()
            if fields and fields[0] == word:
                return fields

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        if not self.proc.stdin.is_closing():
            self.proc.stdin.write(line.encode() + b"\n")

    async def finish(self, timeout_s: float = 30.0) -> None:
        """Ask the worker to stop and wait for it; kill it when it will not stop."""
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                self.send("stop")
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


# -- phases --------------------------------------------------------------------------------


async def _count(app: fm.App, state: fm.State | None = None) -> int:
    rows = await app.status()
    return sum(r.count for r in rows if state is None or r.state is state)


async def _check_stored(app: fm.App, n: int, what: str) -> None:
    stored = await _count(app)
    if stored != n:
        raise BenchError(f"{what}: {stored} tasks stored, expected {n}")


async def submit_one(backend: Backend, n: int) -> Figure:
    target = backend.fresh("submit_one")
    app, task = build_app(target.url, target.schema)
    await app.open()
    try:
        start = time.perf_counter()
        for i in range(n):
            await app.submit(task, i)
        elapsed = time.perf_counter() - start
        await _check_stored(app, n, "submit one-by-one")
    finally:
        await app.close()
    return Figure("submit_one", "submit one-by-one", n / elapsed, "tasks/s", {"seconds": elapsed})


async def submit_concurrent(backend: Backend, n: int, producers: int) -> Figure:
    target = backend.fresh("submit_concurrent")
    app, task = build_app(target.url, target.schema)
    await app.open()

    async def producer(k: int) -> None:
        for i in range(k, n, producers):
            await app.submit(task, i)

    try:
        start = time.perf_counter()
        await asyncio.gather(*(producer(k) for k in range(producers)))
        elapsed = time.perf_counter() - start
        await _check_stored(app, n, "submit concurrent")
    finally:
        await app.close()
    return Figure(
        "submit_concurrent",
        "submit concurrent",
        n / elapsed,
        "tasks/s",
        {"seconds": elapsed, "producers": producers},
    )


async def submit_many(backend: Backend, n: int) -> Figure:
    target = backend.fresh("submit_many")
    app, task = build_app(target.url, target.schema)
    await app.open()
    try:
        start = time.perf_counter()
        await app.submit_many(task, range(n))
        elapsed = time.perf_counter() - start
        await _check_stored(app, n, "submit_many")
    finally:
        await app.close()
    return Figure("submit_many", "submit_many", n / elapsed, "tasks/s", {"seconds": elapsed})


async def _last_completed_ms(app: fm.App) -> tuple[int, int]:
    """(events of completed tasks, time of the last one) from the event log."""
    count, last = 0, 0
    async for ev in app.events(after=0, follow=False, batch=5000):
        if ev.state is fm.State.COMPLETED:
            count += 1
            last = max(last, ev.at_ms)
    return count, last


async def drain(backend: Backend, n: int, workers: int, concurrency: int, logs: str) -> Figure:
    """Enqueue n, start the workers, say go to all at once, time until the last completion.

    The end is the time of the last `completed` event in the store (so the workers' idle
    detection at the end is not counted); the start is the moment the bench says go.
    """
    target = backend.fresh(f"drain_{workers}")
    app, task = build_app(target.url, target.schema)
    await app.open()
    procs: list[WorkerProcess] = []
    try:
        await app.submit_many(task, range(n))
        for w in range(workers):
            label = f"drain{workers}-w{w}"
            procs.append(await WorkerProcess.start(target, concurrency, "drain", label, logs))
        await asyncio.gather(*(p.expect("ready", READY_TIMEOUT_S) for p in procs))
        go_wall_ms = time.time() * 1000
        for p in procs:
            p.send("go")
        budget = max(120.0, n / 200)
        done = await asyncio.gather(*(p.expect("done", budget) for p in procs))
        for p in procs:
            await p.finish()
        completed = await _count(app, fm.State.COMPLETED)
        if completed != n:
            raise BenchError(f"drain: {completed} of {n} tasks completed")
        events, last_ms = await _last_completed_ms(app)
    finally:
        for p in procs:
            await p.finish(5.0)
        await app.close()
    claimed = [int(d[1]) for d in done]
    worker_s = [float(d[2]) for d in done]
    cpu = [dict(_cpu_field(f) for f in d[3:] if "=" in f) for d in done]
    elapsed = (last_ms - go_wall_ms) / 1000
    if events != n or elapsed <= 0:  # no usable event times: fall back to the workers' clocks
        elapsed = max(worker_s)
    noun = "process" if workers == 1 else "processes"
    return Figure(
        f"drain_{workers}",
        f"drain ({workers} worker {noun})",
        n / elapsed,
        "tasks/s",
        {
            "seconds": elapsed,
            "worker_seconds": worker_s,
            "claimed_per_worker": claimed,
            "worker_cpu_seconds": cpu,
        },
    )


def _cpu_field(field: str) -> tuple[str, float]:
    name, _, value = field.partition("=")
    return name, float(value)


async def round_trip(
    backend: Backend, rt: int, concurrency: int, logs: str
) -> tuple[Figure, Figure]:
    target = backend.fresh("round_trip")
    app, task = build_app(target.url, target.schema)
    await app.open()
    proc = await WorkerProcess.start(target, concurrency, "serve", "round-trip", logs)
    samples: list[float] = []
    try:
        await proc.expect("ready", READY_TIMEOUT_S)
        for i in range(WARMUP_ROUND_TRIPS + rt):
            start = time.perf_counter()
            handle = await app.submit(task, i)
            await handle.result()
            samples.append((time.perf_counter() - start) * 1000)
    finally:
        await proc.finish()
        await app.close()
    measured = samples[WARMUP_ROUND_TRIPS:]
    extra = {"samples": len(measured), "max_ms": max(measured), "mean_ms": sum(measured) / rt}
    return (
        Figure("rt_p50", "round trip p50", percentile(measured, 50), "ms", extra),
        Figure("rt_p99", "round trip p99", percentile(measured, 99), "ms", extra),
    )


# -- output --------------------------------------------------------------------------------


def median_figure(figs: list[Figure]) -> Figure:
    """The run with the median value (the lower one of two), with every run's value."""
    if len(figs) == 1:
        return figs[0]
    ordered = sorted(figs, key=lambda f: f.value)
    mid = ordered[(len(ordered) - 1) // 2]
    values = [f.value for f in figs]
    return Figure(mid.key, mid.name, mid.value, mid.unit, {**mid.extra, "runs": values})


def summary_rows(backend: str, figures: list[Figure]) -> list[list[str]]:
    refs = REFERENCES.get(backend, {})
    rows = [["figure", "measured", "goal", "vs goal", "best other SQLite queue", "vs other"]]
    with_other = any(r.label == "other" for f in figures for r in refs.get(f.key, []))
    for fig in figures:
        value = f"{fig.value:,.0f} {fig.unit}" if fig.unit == "tasks/s" else f"{fig.value:.2f} ms"
        row = [fig.name, value, "", "", "", ""]
        for ref in refs.get(fig.key, []):
            col = 2 if ref.label == "goal" else 4
            row[col] = ref.note
            row[col + 1] = f"{ratio(fig, ref):.2f}x"
        rows.append(row)
    return rows if with_other else [r[:4] for r in rows]


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "flowmill": fm.__version__,
    }


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=20_000, help="tasks per figure (default 20000)")
    p.add_argument("--rt", type=int, default=500, help="timed round trips (default 500)")
    p.add_argument("--backend", choices=("sqlite", "postgres", "redis"), default="sqlite")
    p.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help=f"default {DEFAULT_REDIS_URL}")
    p.add_argument("--pg-url", default=DEFAULT_PG_URL, help=f"default {DEFAULT_PG_URL}")
    p.add_argument("--concurrency", type=int, default=64, help="worker concurrency")
    p.add_argument(
        "--workers",
        default="1",
        help="worker processes for the drain figure; a list such as 1,2 gives one figure each",
    )
    p.add_argument("--synchronous", choices=("full", "normal"), default="full")
    p.add_argument("--producers", type=int, default=100, help="coroutines for submit concurrent")
    p.add_argument("--dir", default=None, help="where SQLite files go (default: system temp)")
    p.add_argument(
        "--only",
        default=",".join(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)}",
    )
    p.add_argument(
        "--repeat", type=int, default=1, help="run everything this many times; report medians"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument(
        "--metrics",
        action="store_true",
        help="workers collect Prometheus metrics (flowmill._metrics), to measure their cost",
    )
    p.add_argument(
        "--worker-prefix",
        default="",
        help="command to run each worker process under, e.g. "
        "'py-spy record --format raw -o /tmp/{label}.txt --'",
    )
    args = p.parse_args(argv)
    try:
        args.workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    except ValueError:
        p.error(f"--workers: expected a number or a list like 1,2, got {args.workers!r}")
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in args.only if s not in PHASES]
    if bad:
        p.error(f"--only: unknown phase(s) {', '.join(bad)}; choose from {', '.join(PHASES)}")
    if min(args.n, args.rt, args.concurrency, args.producers, args.repeat) < 1:
        p.error("--n, --rt, --concurrency, --producers and --repeat must be >= 1")
    if not args.workers or min(args.workers) < 1:
        p.error("--workers must be >= 1")
    return args


async def run(args: argparse.Namespace) -> int:
    backend: Backend
    if args.backend == "sqlite":
        backend = SQLiteBackend(args.synchronous, args.dir)
    elif args.backend == "redis":
        backend = RedisBackend(args.redis_url)
    else:
        backend = PostgresBackend(args.pg_url)
    runs: dict[str, list[Figure]] = {}
    WorkerProcess.prefix = args.worker_prefix
    if args.metrics:
        os.environ["FLOWMILL_BENCH_METRICS"] = "1"  # read by each worker process
    info = machine()  # the load average before the run says how busy the machine was

    def report(fig: Figure, run_no: int) -> None:
        runs.setdefault(fig.key, []).append(fig)
        if args.json:
            return
        print((f"# run {run_no}: " if args.repeat > 1 else "") + fig.text(), flush=True)
        cpus = fig.extra.get("worker_cpu_seconds", [])
        walls = fig.extra.get("worker_seconds", [])
        for w, (cpu, wall) in enumerate(zip(cpus, walls, strict=True)):
            used = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items() if v >= 0.01)
            print(f"#   worker {w}: {wall:.2f}s in run(); CPU seconds: {used}")

    try:
        if not await backend_opens(backend, as_json=args.json):
            return EXIT_OPEN_FAILED
        if not args.json:
            print(
                f"# flowmill {info['flowmill']} throughput: backend {backend.describe()}, "
                f"N={args.n}, round trips={args.rt}, worker concurrency={args.concurrency}, "
                f"{info['cpus']} CPUs, load average {info['load_average_1m']}, "
                f"Python {info['python']}",
                flush=True,
            )
        with tempfile.TemporaryDirectory(prefix="flowmill-bench-logs-") as logs:
            for r in range(1, args.repeat + 1):
                if "submit-one" in args.only:
                    report(await submit_one(backend, args.n), r)
                if "submit-concurrent" in args.only:
                    report(await submit_concurrent(backend, args.n, args.producers), r)
                if "submit-many" in args.only:
                    report(await submit_many(backend, args.n), r)
                if "drain" in args.only:
                    for w in args.workers:
                        report(await drain(backend, args.n, w, args.concurrency, logs), r)
                if "round-trip" in args.only:
                    for fig in await round_trip(backend, args.rt, args.concurrency, logs):
                        report(fig, r)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        await backend.cleanup()

    figures = [median_figure(figs) for figs in runs.values()]
    if args.repeat > 1 and not args.json:
        print(f"# median of {args.repeat} runs:")
        for fig in figures:
            print(fig.text())

    if args.json:
        out = {
            "backend": backend.name,
            "synchronous": args.synchronous if backend.name == "sqlite" else None,
            "n": args.n,
            "round_trips": args.rt,
            "concurrency": args.concurrency,
            "machine": info,
            "figures": {
                f.key: {
                    "name": f.name,
                    "value": f.value,
                    "unit": f.unit,
                    **f.extra,
                    "ratios": {
                        r.label: ratio(f, r)
                        for r in REFERENCES.get(backend.name, {}).get(f.key, [])
                    },
                }
                for f in figures
            },
        }
        print(json.dumps(out, indent=2))
    else:
        print()
        print("summary (ratio >= 1.00 means at least as good; latency ratio = reference/measured)")
        print_table(summary_rows(backend.name, figures))
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
