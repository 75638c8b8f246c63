"""flowmill against the peer task queues: runs the shared peer harness, prints the ratios.

    .venv/bin/python bench/peers.py                     # SQLite and PostgreSQL, N=10,000, 1 run
    .venv/bin/python bench/peers.py --backends sqlite --runs 3
    .venv/bin/python bench/peers.py --report-only      # ratios of the last results, no run

The harness (`peers-bench/`, with `run_all.py` and `setup-peers.sh`) lives outside this
repository; it is looked for in `$PEERS_BENCH`, else in a `shared/peers-bench` folder next
to this checkout or one of its parents. Without it this prints one line and exits 0.

For each backend it runs flowmill and that backend's peers in one sitting (SQLite:
flowmill-sqlite, huey-sqlite; PostgreSQL: flowmill-postgres, pgqueuer, saq-postgres,
procrastinate), keeps the raw results in `--results`, and prints per workload flowmill's
figure, the best peer's and the ratio (>= 1.00: flowmill is at least as good), with the
load average before and after (the machine may be shared: a ratio from one sitting is the
figure that means something).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PEERS = {
    "sqlite": ("flowmill-sqlite", ["huey-sqlite"]),
    "postgres": ("flowmill-postgres", ["pgqueuer", "saq-postgres", "procrastinate"]),
}
DEFAULT_RESULTS = os.path.join(tempfile.gettempdir(), "flowmill-peers", "results.json")

Runs = list[dict[str, Any]]


def find_harness() -> Path | None:
    given = os.environ.get("PEERS_BENCH")
    if given:
        return Path(given) if (Path(given) / "run_all.py").is_file() else None
    for base in (ROOT, *ROOT.parents):
        candidate = base / "shared" / "peers-bench"
        if (candidate / "run_all.py").is_file():
            return candidate
    return None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def enqueue_rate(n: int, runs: Runs) -> float | None:
    return _median([n / r["enqueue"]["seconds"] for r in runs if "seconds" in r.get("enqueue", {})])


def drain_rate(n: int, runs: Runs) -> float | None:
    return _median([n / r["drain"]["seconds"] for r in runs if "seconds" in r.get("drain", {})])


def p50_ms(n: int, runs: Runs) -> float | None:
    return _median(
        [
            statistics.median(r["latency"]["lat_ms"])
            for r in runs
            if r.get("latency", {}).get("lat_ms")
        ]
    )


def drain_pss(n: int, runs: Runs) -> float | None:
    return _median(
        [
            r["drain"]["worker_peak_pss_mb"]
            for r in runs
            if "worker_peak_pss_mb" in r.get("drain", {})
        ]
    )


def fanout_s(n: int, runs: Runs) -> float | None:
    return _median([r["fanout"]["seconds"] for r in runs if "seconds" in r.get("fanout", {})])


# name, figure, unit, True when higher is better
WORKLOADS: list[tuple[str, Callable[[int, Runs], float | None], str, bool]] = [
    ("submit one by one", enqueue_rate, "/s", True),
    ("drain (2 processes)", drain_rate, "/s", True),
    ("round trip p50", p50_ms, " ms", False),
    ("fan-out N + callback", fanout_s, " s", False),
    ("worker peak PSS, drain", drain_pss, " MB", False),
]


def table(results: dict[str, Any], backend: str) -> list[str]:
    ours, peers = PEERS[backend]
    if ours not in results:
        return [f"({backend}: no results for {ours})"]
    n = int(results[ours].get("N", 10000))
    lines = [
        f"### {backend}, N = {n:,} ({len(results[ours]['runs'])} run(s); median)",
        "",
        "| workload | flowmill | best peer | ratio |",
        "|---|---|---|---|",
    ]
    for name, figure, unit, higher in WORKLOADS:
        mine = figure(n, results[ours]["runs"])
        theirs = [(figure(n, results[p]["runs"]), p) for p in peers if p in results]
        known = [(v, p) for v, p in theirs if v is not None]
        if mine is None or not known:
            lines.append(f"| {name} | {_fmt(mine, unit)} | {'n/a' if not known else ''} | |")
            continue
        best, who = max(known) if higher else min(known)
        ratio = mine / best if higher else best / mine
        lines.append(f"| {name} | {_fmt(mine, unit)} | {who} {_fmt(best, unit)} | {ratio:.2f}x |")
    return lines


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}{unit}" if value >= 100 else f"{value:.1f}{unit}"


def run(harness: Path, backends: list[str], n: int, runs: int, results: str) -> None:
    peers_python = subprocess.run(
        ["bash", str(harness / "setup-peers.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()
    env = {
        **os.environ,
        "N": str(n),
        "RUNS": str(runs),
        "RESULTS": results,
        "LOGS": os.path.join(os.path.dirname(results), "logs"),
        "PEERS_BIN": os.path.dirname(peers_python),
        "FLOWMILL_BIN": os.path.dirname(sys.executable),
    }
    for backend in backends:
        ours, peers = PEERS[backend]
        print(f"# {backend}: load average {_load()} before", flush=True)
        subprocess.run([peers_python, "run_all.py", ours, *peers], cwd=harness, env=env, check=True)
        print(f"# {backend}: load average {_load()} after", flush=True)


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backends", default="sqlite,postgres", help="sqlite,postgres (default both)")
    p.add_argument("--n", type=int, default=10000, help="tasks per workload (default 10000)")
    p.add_argument("--runs", type=int, default=1, help="runs per system (default 1)")
    p.add_argument("--results", default=DEFAULT_RESULTS, help=f"default {DEFAULT_RESULTS}")
    p.add_argument("--report-only", action="store_true", help="print the last results, run nothing")
    args = p.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in PEERS]
    if unknown:
        p.error(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    results_path = os.path.abspath(args.results)
    if not args.report_only:
        harness = find_harness()
        if harness is None:
            print("peer harness not found (set PEERS_BENCH): no peer ratios")
            return 0
        os.makedirs(os.path.dirname(results_path), exist_ok=True)
        run(harness, backends, args.n, args.runs, results_path)
    if not os.path.isfile(results_path):
        print(f"no peer results at {results_path}: run bench/peers.py without --report-only")
        return 0
    with open(results_path) as f:
        results = json.load(f)
    for backend in backends:
        print("\n".join(table(results, backend)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
