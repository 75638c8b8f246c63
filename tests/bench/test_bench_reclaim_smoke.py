"""Smoke test of bench/reclaim_latency.py: one tiny round prints its figures.

Not a timed test: the figures are only checked to be there and consistent, not against
the goal (a loaded machine may miss it; the exit status says so, 1).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "reclaim_latency.py"


def test_one_round_reports_reclaim_latency() -> None:
    args = ["--ttl", "1", "--rounds", "1", "--tasks", "3", "--victims", "1", "--json"]
    out = subprocess.run(
        [sys.executable, str(BENCH), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert out.returncode in (0, 1), out.stderr
    result = json.loads(out.stdout)
    assert (result["leases"], result["reap_interval_s"], result["goal_p99_s"]) == (3, 1.0, 3.0)
    assert result["goal_met"] is (out.returncode == 0)
    for key in ("expiry_to_reclaimed_s", "kill_to_reclaimed_s"):
        p50, p99, top = (result[key][q] for q in ("p50", "p99", "max"))
        assert 0 <= p50 <= p99 <= top
    # A lease is reclaimed only after it expired, and after the kill.
    assert result["kill_to_reclaimed_s"]["p50"] >= result["expiry_to_reclaimed_s"]["p50"]
