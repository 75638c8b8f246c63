"""Smoke test of bench/throughput.py: it runs with a tiny N and prints every figure.

Not a timed test: the figures are only checked to be there and positive.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "throughput.py"

FIGURES = {
    "submit one-by-one": "tasks/s",
    "submit concurrent": "tasks/s",
    "submit_many": "tasks/s",
    "drain (1 worker process)": "tasks/s",
    "drain (2 worker processes)": "tasks/s",
    "round trip p50": "ms",
    "round trip p99": "ms",
}


def run_bench(*args: str, timeout: float = 100) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_prints_every_figure(tmp_path: Path) -> None:
    out = run_bench("--n", "200", "--rt", "20", "--workers", "1,2", "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for name, unit in FIGURES.items():
        pattern = re.compile(rf"^{re.escape(name)}: (\d+(?:\.\d+)?) {re.escape(unit)}$")
        values = [float(m.group(1)) for line in lines if (m := pattern.match(line))]
        assert len(values) == 1, f"{name!r} not printed once:\n{out.stdout}"
        assert values[0] > 0
    assert "| figure" in out.stdout  # the summary table
    assert "vs goal" in out.stdout
    # The SQLite files live in the temporary directory the bench makes, removed at the end.
    assert list(tmp_path.iterdir()) == []


def test_json_output(tmp_path: Path) -> None:
    out = run_bench(
        "--n", "100", "--rt", "5", "--only", "submit-many,round-trip", "--json",
        "--synchronous", "normal", "--repeat", "2", "--dir", str(tmp_path),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["backend"] == "sqlite"
    assert data["synchronous"] == "normal"
    assert set(data["figures"]) == {"submit_many", "rt_p50", "rt_p99"}
    assert data["figures"]["submit_many"]["value"] > 0
    assert data["figures"]["rt_p50"]["unit"] == "ms"
    assert "goal" in data["figures"]["rt_p50"]["ratios"]
    assert len(data["figures"]["submit_many"]["runs"]) == 2  # --repeat: median of two runs


def test_unreachable_postgres_exits_2() -> None:
    out = run_bench(
        "--backend", "postgres", "--pg-url", "postgresql://nobody@127.0.0.1:1/none", "--n", "10",
        timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith("error: ")
    assert "submit" not in out.stdout
