"""Smoke test of bench/dag.py: a tiny DAG and chain on SQLite run and print every figure.

Not a timed test: the figures are only checked to be there and positive.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_prints_every_figure() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "dag.py"),
            "--nodes",
            "300",
            "--chain",
            "20",
            "--synchronous",
            "normal",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(out.stdout)
    assert data["dag"]["nodes"] == 300
    assert 600 <= data["dag"]["edges"] <= 900
    assert data["dag"]["store_s"] > 0 and data["dag"]["nodes_per_s"] > 0
    assert data["chain"]["steps"] == 20
    assert 0 < data["chain"]["p50_ms"] <= data["chain"]["p99_ms"]
