"""flowmill fan-out/fan-in benchmark: one orchestrator, N children in a sibling-spawned BFS.

    .venv/bin/python bench/fanout.py                        # SQLite, N=23,800 then 238,000
    .venv/bin/python bench/fanout.py --children 238000      # one run
    .venv/bin/python bench/fanout.py --synchronous normal
    .venv/bin/python bench/fanout.py --backend postgres
    .venv/bin/python bench/fanout.py --backend redis       # keys under a private prefix
    .venv/bin/python bench/fanout.py --json                 # machine-readable
    .venv/bin/python bench/fanout.py --store-timings        # + the worker's store calls
    .venv/bin/python bench/fanout.py --spawn batch          # spawn_siblings, one call each

Each run gets a fresh store (a new SQLite file in a temporary directory, or a new
PostgreSQL schema that is dropped afterwards) and one worker process
(`bench/_fanout_app.py`). The bench submits `bench.scan_catalog`, says go to the worker and
waits for the orchestrator's result; it checks that finalize summed `discovered` = N over
N child results. It prints the wall time from submit to result, children/s and the
worker's peak RSS for each N, then a summary table with ratios to the goals. See README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import flowmill as fm
from _fanout_app import WORKER_SCRIPT, FanoutReport, ScanRequest, build_app
from throughput import (
    DEFAULT_PG_URL,
    DEFAULT_REDIS_URL,
    EXIT_OPEN_FAILED,
    READY_TIMEOUT_S,
    Backend,
    BenchError,
    PostgresBackend,
    RedisBackend,
    SQLiteBackend,
    Target,
    WorkerProcess,
    backend_opens,
    machine,
    print_table,
)

DEFAULT_CHILDREN = (23_800, 238_000)
# Goals (see README.md): 238,000 children on SQLite in <= 100 s with one worker process,
# worker peak RSS <= 300 MB, and peak RSS at 238,000 within 60 MB of peak RSS at 23,800.
GOAL_CHILDREN = 238_000
GOAL_SECONDS = 100.0
GOAL_RATE = GOAL_CHILDREN / GOAL_SECONDS  # 2,380 children/s
OTHER_RATE = 2_200.0  # best fan-out/fan-in measured here among Python queues
GOAL_PEAK_MB = 300.0
GOAL_GROWTH_MB = 60.0
RESULT_GRACE_S = 10.0  # the worker stopped (idle): the result is stored, wait this long for it
MB = 1024 * 1024


@dataclass(slots=True)
class Run:
    """One measured run: N children, what the worker reported, and the orchestrator's result."""

    children: int
    seconds: float  # submit -> result, in the bench process
    peak_rss_kb: int
    ready_rss_kb: int
    report: FanoutReport
    submit_ns: int
    worker_seconds: float
    claimed: int
    outcomes: dict[str, int]
    worker_cpu: dict[str, float]
    bench_cpu_s: float
    rss_samples: list[tuple[float, int, int]] = field(default_factory=list)
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after
    # --store-timings: operation -> (calls, seconds summed over calls, longest call's seconds)
    store_calls: dict[str, tuple[int, float, float]] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.children / self.seconds

    @property
    def peak_mb(self) -> float:
        return self.peak_rss_kb * 1024 / MB

    def phases(self) -> dict[str, float]:
        """Where the wall time went, by the worker's wall clock (same machine)."""
        r = self.report
        return {
            "submit_to_execute_s": (r.execute_started_ns - self.submit_ns) / 1e9,
            "execute_to_finalize_s": (r.finalize_started_ns - r.execute_started_ns) / 1e9,
            "finalize_s": (r.finalize_ended_ns - r.finalize_started_ns) / 1e9,
        }

    def rss_at_fractions(self) -> dict[str, float]:
        """Worker RSS (MB) when it had claimed 25/50/75/100% of the tasks (growth check)."""
        out: dict[str, float] = {}
        total = max(1, self.claimed)
        for pct in (25, 50, 75, 100):
            kb = next(
                (k for _, k, c in self.rss_samples if c * 100 >= total * pct),
                self.rss_samples[-1][1] if self.rss_samples else 0,
            )
            out[f"{pct}%"] = kb / 1024
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "children": self.children,
            "seconds": self.seconds,
            "children_per_s": self.rate,
            "worker_peak_rss_mb": self.peak_mb,
            "worker_ready_rss_mb": self.ready_rss_kb / 1024,
            "worker_rss_mb_at_claimed": self.rss_at_fractions(),
            "worker_seconds_in_run": self.worker_seconds,
            "worker_claimed": self.claimed,
            "worker_outcomes": self.outcomes,
            "worker_cpu_seconds": self.worker_cpu,
            "bench_cpu_seconds": self.bench_cpu_s,
            "load_average_1m": {"before": self.load[0], "after": self.load[1]},
            "phases": self.phases(),
            "discovered": self.report.discovered,
            "max_depth": self.report.max_depth,
            "rss_samples": [list(s) for s in self.rss_samples],
            "store_calls": {
                op: {"calls": n, "seconds": total, "max_seconds": longest}
                for op, (n, total, longest) in self.store_calls.items()
            },
        }


# -- the worker process --------------------------------------------------------------------


async def start_worker(
    target: Target,
    concurrency: int,
    label: str,
    logs: str,
    prefix: str,
    store_timings: bool = False,
) -> WorkerProcess:
    """Start `_fanout_app.py` (under `prefix`, e.g. a profiler) as a `WorkerProcess`."""
    stderr_path = os.path.join(logs, f"{label}.stderr")
    cmd = [
        *shlex.split(prefix.replace("{label}", label)),
        sys.executable,
        WORKER_SCRIPT,
        "--url",
        target.url,
        "--concurrency",
        str(concurrency),
    ]
    if target.schema is not None:
        cmd += ["--schema", target.schema]
    if store_timings:
        cmd.append("--store-timings")
    # The child's stderr goes to a file (a pipe nobody reads could fill up and block it).
    err = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err
        )
    finally:
        os.close(err)
    return WorkerProcess(proc, stderr_path)


def _fields(words: list[str]) -> dict[str, str]:
    return dict(w.split("=", 1) for w in words if "=" in w)


class WorkerLines:
    """Reads the worker's stdout after `ready`: `tick` lines (progress, RSS) and `done`."""

    def __init__(self, proc: WorkerProcess) -> None:
        self.proc = proc
        self.ticks: list[tuple[float, int, int]] = []  # (seconds since go, RSS KiB, claimed)
        self.done: dict[str, str] | None = None
        self.last_progress = time.monotonic()
        self._task = asyncio.ensure_future(self._read())

    @property
    def exited(self) -> bool:
        return self._task.done()

    async def _read(self) -> None:
        stdout = self.proc.proc.stdout
        assert stdout is not None
        while True:
            raw = await stdout.readline()
            if not raw:
                return
            words = raw.decode().split()
            if not words:
                continue
            if words[0] == "tick" and len(words) == 4:
                tick = (float(words[1]), int(words[2]), int(words[3]))
                if not self.ticks or tick[2] != self.ticks[-1][2]:
                    self.last_progress = time.monotonic()
                self.ticks.append(tick)
            elif words[0] == "done":
                self.done = _fields(words[1:])

    async def wait_done(self, timeout_s: float) -> dict[str, str]:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self._task)
        if self.done is None:
            raise BenchError(
                f"worker {self.proc.proc.pid} exited with code {self.proc.proc.returncode} "
                f"without its done line:\n{self.proc.stderr_tail()}"
            )
        return self.done

    def close(self) -> None:
        self._task.cancel()

    def summary(self) -> str:
        """What the worker said last (for error messages)."""
        parts = []
        if self.ticks:
            t, kb, claimed = self.ticks[-1]
            parts.append(f"last tick at {t:.0f}s: {claimed:,} claimed, RSS {kb / 1024:.0f} MB")
        if self.done is not None:
            parts.append(" ".join(f"{k}={v}" for k, v in self.done.items() if "cpu" not in k))
        return "; ".join(parts) or "the worker reported nothing"


# -- one run -------------------------------------------------------------------------------


async def fanout_run(
    backend: Backend,
    n: int,
    *,
    roots: int,
    fanout: int,
    concurrency: int,
    logs: str,
    prefix: str,
    stall_s: float,
    store_timings: bool = False,
    batch: bool = False,
) -> Run:
    """Submit the orchestrator, say go, time until its result; check the sum and the counts."""
    load_before = os.getloadavg()[0]
    target = backend.fresh(f"fanout_{n}")
    app, _, catalog = build_app(target.url, target.schema)
    await app.open()
    proc = await start_worker(target, concurrency, f"fanout-{n}", logs, prefix, store_timings)
    lines: WorkerLines | None = None
    try:
        await proc.expect("ready", READY_TIMEOUT_S)
        lines = WorkerLines(proc)
        cpu0 = os.times()
        submit_ns = time.time_ns()
        start = time.perf_counter()
        handle = await app.submit(catalog, ScanRequest(n, roots, fanout, batch))
        proc.send("go")
        report = await _wait_result(handle, lines, n, stall_s)
        seconds = time.perf_counter() - start
        cpu1 = os.times()
        done = await lines.wait_done(60)
        await proc.finish()
        completed = sum(r.count for r in await app.status() if r.state is fm.State.COMPLETED)
    finally:
        if lines is not None:
            lines.close()
        await proc.finish(5.0)
        await app.close()
    _check(n, report, completed)
    outcomes = {
        k: int(v) for k, _, v in (o.partition(":") for o in done["outcomes"].split(",")) if v
    }
    return Run(
        children=n,
        seconds=seconds,
        peak_rss_kb=int(done["peak_rss_kb"]),
        ready_rss_kb=int(done["ready_rss_kb"]),
        report=report,
        submit_ns=submit_ns,
        worker_seconds=float(done["seconds"]),
        claimed=int(done["claimed"]),
        outcomes=outcomes,
        worker_cpu={k[4:]: float(v) for k, v in done.items() if k.startswith("cpu.")},
        bench_cpu_s=(cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
        rss_samples=lines.ticks,
        load=(round(load_before, 2), round(os.getloadavg()[0], 2)),
        store_calls=store_calls(done),
    )


def store_calls(done: dict[str, str]) -> dict[str, tuple[int, float, float]]:
    """The `store.<operation>=<calls>:<seconds>:<max seconds>` fields of the done line."""
    out: dict[str, tuple[int, float, float]] = {}
    for key, value in done.items():
        if key.startswith("store."):
            calls, total, longest = value.split(":")
            out[key[6:]] = (int(calls), float(total), float(longest))
    return out


async def _wait_result(
    handle: fm.TaskHandle[Any], lines: WorkerLines, n: int, stall_s: float
) -> FanoutReport:
    """The orchestrator's result; BenchError when it fails, the worker dies, or stalls."""
    result = asyncio.ensure_future(handle.result())
    try:
        while not result.done():
            await asyncio.wait((result,), timeout=1.0)
            if result.done():
                break
            if lines.exited:
                # The worker stops only once the store is idle, so the result is stored
                # (unless it failed): give the result waiter a moment to see it.
                await asyncio.wait((result,), timeout=RESULT_GRACE_S)
                if not result.done():
                    info = await handle.app.get(handle.id)
                    raise BenchError(
                        f"N={n}: the worker exited (code {lines.proc.proc.returncode}) while "
                        f"the orchestrator is {info.state}/{info.phase} "
                        f"({lines.summary()}):\n{lines.proc.stderr_tail()}"
                    )
            elif time.monotonic() - lines.last_progress > stall_s:
                raise BenchError(
                    f"N={n}: no task claimed for {stall_s:.0f}s ({lines.ticks[-1][2]:,} so far) "
                    f"and no result; the worker's last log lines:\n{lines.proc.stderr_tail()}"
                    if lines.ticks
                    else f"N={n}: the worker reported nothing for {stall_s:.0f}s"
                )
        report: FanoutReport = result.result()
        return report
    except fm.TaskFailed as exc:
        raise BenchError(
            f"N={n}: the orchestrator ended {exc.state}: {exc.message}\n{lines.proc.stderr_tail()}"
        ) from exc
    finally:
        if not result.done():
            result.cancel()
            with contextlib.suppress(BaseException):
                await result


def _check(n: int, r: FanoutReport, completed: int) -> None:
    problems = []
    if r.discovered != n:
        problems.append(f"finalize summed discovered={r.discovered:,}, expected {n:,}")
    if r.results != n:
        problems.append(f"finalize read {r.results:,} child results, expected {n:,}")
    if (r.total, r.completed, r.failed) != (n, n, 0):
        problems.append(
            f"children_summary: {r.total:,} children, {r.completed:,} completed, "
            f"{r.failed:,} failed ({r.summary}); expected {n:,} completed"
        )
    if completed != n + 1:
        problems.append(f"{completed:,} tasks completed in the store, expected {n + 1:,}")
    if problems:
        raise BenchError(f"N={n}: " + "; ".join(problems))


# -- output --------------------------------------------------------------------------------


def figure_lines(run: Run) -> list[str]:
    """The figures of one run, `name: value unit` each."""
    tag = f"({run.children:,} children)"
    return [
        f"wall time {tag}: {run.seconds:.2f} s",
        f"children/s {tag}: {run.rate:.0f} children/s",
        f"worker peak RSS {tag}: {run.peak_mb:.1f} MB",
    ]


def detail_lines(run: Run) -> list[str]:
    ph = run.phases()
    cpu = ", ".join(f"{k} {v:.2f}" for k, v in run.worker_cpu.items() if v >= 0.01)
    at = ", ".join(f"{k} {v:.0f}" for k, v in run.rss_at_fractions().items())
    return [
        f"#   submit->execute {ph['submit_to_execute_s']:.2f}s, execute->finalize "
        f"{ph['execute_to_finalize_s']:.2f}s, finalize {ph['finalize_s']:.2f}s "
        f"(max depth {run.report.max_depth})",
        f"#   worker: {run.worker_seconds:.2f}s in run(), {run.claimed:,} claimed; "
        f"CPU seconds: {cpu}",
        f"#   worker RSS: {run.ready_rss_kb / 1024:.1f} MB when ready; MB at claimed {at}",
        f"#   bench process CPU while waiting: {run.bench_cpu_s:.2f}s",
        *store_call_lines(run),
    ]


def store_call_lines(run: Run) -> list[str]:
    """--store-timings: the worker's store calls, most waited-for first (seconds are summed
    over calls that overlap: the time callers waited, not the time the store was busy)."""
    if not run.store_calls:
        return []
    ranked = sorted(run.store_calls.items(), key=lambda kv: -kv[1][1])
    return ["#   worker store calls: calls, seconds waited (summed), mean ms, max ms"] + [
        f"#     {op}: {n:,} calls, {total:.2f} s, {total * 1000 / n:.2f} ms, "
        f"{longest * 1000:.1f} ms"
        for op, (n, total, longest) in ranked
    ]


def growth_mb(runs: list[Run]) -> tuple[Run, Run, float] | None:
    """Peak RSS of the largest run minus that of the smallest (None with fewer than 2 sizes)."""
    if len({r.children for r in runs}) < 2:
        return None
    small = min(runs, key=lambda r: r.children)
    big = max(runs, key=lambda r: r.children)
    return small, big, big.peak_mb - small.peak_mb


def summary_rows(backend: str, runs: list[Run]) -> list[list[str]]:
    goals = backend == "sqlite"
    rows = [["figure", "measured", "goal", "vs goal", "best other Python queue", "vs other"]]
    for run in runs:
        tag = f"({run.children:,})"
        wall_goal = goals and run.children == GOAL_CHILDREN
        rows.append(
            [
                f"wall time {tag}",
                f"{run.seconds:.1f} s",
                f"<= {GOAL_SECONDS:.0f} s" if wall_goal else "",
                f"{GOAL_SECONDS / run.seconds:.2f}x" if wall_goal else "",
                "",
                "",
            ]
        )
        rows.append(
            [
                f"children/s {tag}",
                f"{run.rate:,.0f}/s",
                f">= {GOAL_RATE:,.0f}/s" if goals else "",
                f"{run.rate / GOAL_RATE:.2f}x" if goals else "",
                f"~{OTHER_RATE:,.0f}/s",
                f"{run.rate / OTHER_RATE:.2f}x",
            ]
        )
        rows.append(
            [
                f"worker peak RSS {tag}",
                f"{run.peak_mb:.1f} MB",
                f"<= {GOAL_PEAK_MB:.0f} MB",
                f"{GOAL_PEAK_MB / run.peak_mb:.2f}x",
                "",
                "",
            ]
        )
    grown = growth_mb(runs)
    if grown is not None:
        small, big, mb = grown
        rows.append(
            [
                f"peak RSS growth ({big.children:,} vs {small.children:,})",
                f"{mb:+.1f} MB",
                f"<= {GOAL_GROWTH_MB:.0f} MB",
                f"{GOAL_GROWTH_MB / mb:.2f}x" if mb >= 1 else "met (< 1 MB)",
                "",
                "",
            ]
        )
    return rows


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--children",
        default=",".join(str(n) for n in DEFAULT_CHILDREN),
        help="children per run; a list such as 23800,238000 gives one run each "
        "(default 23800,238000)",
    )
    p.add_argument("--roots", type=int, default=10, help="root directories spawned by execute")
    p.add_argument("--fanout", type=int, default=4, help="sub-directories per directory")
    p.add_argument("--backend", choices=("sqlite", "postgres", "redis"), default="sqlite")
    p.add_argument("--pg-url", default=DEFAULT_PG_URL, help=f"default {DEFAULT_PG_URL}")
    p.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help=f"default {DEFAULT_REDIS_URL}")
    p.add_argument("--concurrency", type=int, default=64, help="worker concurrency")
    p.add_argument("--synchronous", choices=("full", "normal"), default="full")
    p.add_argument("--dir", default=None, help="where SQLite files go (default: system temp)")
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=60.0,
        help="give up when the worker claims nothing for this many seconds (default 60)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the SQLite files / PostgreSQL schemas / Redis keys",
    )
    p.add_argument(
        "--worker-prefix",
        default="",
        help="command to run the worker process under, e.g. "
        "'py-spy record -o /tmp/{label}.svg --' ({label} becomes fanout-<N>)",
    )
    p.add_argument(
        "--store-timings",
        action="store_true",
        help="report the worker's store calls: per operation the calls, the seconds they "
        "took (summed over overlapping calls) and the longest",
    )
    p.add_argument(
        "--spawn",
        choices=("each", "batch"),
        default="each",
        help="how a directory spawns its sub-directories: one spawn_sibling call each "
        "(default, the benchmark's workload) or all in one spawn_siblings call",
    )
    args = p.parse_args(argv)
    try:
        args.children = [int(c) for c in str(args.children).split(",") if c.strip()]
    except ValueError:
        p.error(f"--children: expected a number or a list like 23800,238000, got {args.children}")
    if not args.children or min(args.children) < 1:
        p.error("--children must be >= 1")
    if min(args.roots, args.fanout, args.concurrency) < 1:
        p.error("--roots, --fanout and --concurrency must be >= 1")
    if args.stall_timeout <= 0:
        p.error("--stall-timeout must be > 0")
    return args


async def run(args: argparse.Namespace) -> int:
    backend: Backend
    if args.backend == "sqlite":
        backend = SQLiteBackend(args.synchronous, args.dir)
    elif args.backend == "redis":
        backend = RedisBackend(args.redis_url)
    else:
        backend = PostgresBackend(args.pg_url)
    info = machine()  # the load average before the run says how busy the machine was
    runs: list[Run] = []
    try:
        if not await backend_opens(backend, as_json=args.json):
            return EXIT_OPEN_FAILED
        if not args.json:
            print(
                f"# flowmill {info['flowmill']} fan-out: backend {backend.describe()}, "
                f"children {', '.join(f'{n:,}' for n in args.children)}, {args.roots} roots, "
                f"fan-out {args.fanout} (spawn {args.spawn}), "
                f"worker concurrency {args.concurrency}, "
                f"{info['cpus']} CPUs, load average {info['load_average_1m']}, "
                f"Python {info['python']}",
                flush=True,
            )
        with tempfile.TemporaryDirectory(prefix="flowmill-bench-logs-") as logs:
            for n in args.children:
                r = await fanout_run(
                    backend,
                    n,
                    roots=args.roots,
                    fanout=args.fanout,
                    concurrency=args.concurrency,
                    logs=logs,
                    prefix=args.worker_prefix,
                    stall_s=args.stall_timeout,
                    store_timings=args.store_timings,
                    batch=args.spawn == "batch",
                )
                runs.append(r)
                if not args.json:
                    print(f"# N={n:,} (load average {r.load[0]:.2f} before, {r.load[1]:.2f} after)")
                    for line in figure_lines(r) + detail_lines(r):
                        print(line, flush=True)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": str(exc), "runs": [r.as_json() for r in runs]}))
        return 1
    finally:
        if args.keep:
            print(f"# kept the stores: {backend.describe()}", file=sys.stderr)
        else:
            await backend.cleanup()

    grown = growth_mb(runs)
    if args.json:
        out = {
            "backend": backend.name,
            "synchronous": args.synchronous if backend.name == "sqlite" else None,
            "roots": args.roots,
            "fanout": args.fanout,
            "spawn": args.spawn,
            "concurrency": args.concurrency,
            "machine": info,
            "load_average_1m_after": round(os.getloadavg()[0], 2),
            "runs": [r.as_json() for r in runs],
            "peak_rss_growth_mb": None if grown is None else grown[2],
            "goals": {
                "seconds_at_238000": GOAL_SECONDS,
                "children_per_s": GOAL_RATE,
                "other_children_per_s": OTHER_RATE,
                "peak_rss_mb": GOAL_PEAK_MB,
                "peak_rss_growth_mb": GOAL_GROWTH_MB,
            },
        }
        print(json.dumps(out, indent=2))
        return 0
    if grown is not None:
        small, big, mb = grown
        print(f"peak RSS growth ({big.children:,} vs {small.children:,} children): {mb:+.1f} MB")
    print()
    print("summary (ratio >= 1.00 means the goal is met; goals are for SQLite)")
    print_table(summary_rows(backend.name, runs))
    return 0


def main(argv: list[str] | None = None) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(parse_args(argv)))
    return 130


if __name__ == "__main__":
    sys.exit(main())
