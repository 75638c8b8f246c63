"""Smoke test of bench/fanout.py: a tiny fan-out on SQLite runs and prints every figure.

Not a timed test: the figures are only checked to be there and positive.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "fanout.py"


def run_bench(*args: str, timeout: float = 100) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def figure(stdout: str, name: str, unit: str) -> float:
    pattern = re.compile(rf"^{re.escape(name)}: (\d+(?:\.\d+)?) {re.escape(unit)}$")
    values = [float(m.group(1)) for line in stdout.splitlines() if (m := pattern.match(line))]
    assert len(values) == 1, f"{name!r} not printed once:\n{stdout}"
    return values[0]


def test_prints_every_figure(tmp_path: Path) -> None:
    out = run_bench("--children", "300", "--dir", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert figure(out.stdout, "wall time (300 children)", "s") > 0
    assert figure(out.stdout, "children/s (300 children)", "children/s") > 0
    assert figure(out.stdout, "worker peak RSS (300 children)", "MB") > 0
    assert "| figure" in out.stdout  # the summary table
    assert "vs goal" in out.stdout
    # The SQLite files live in the temporary directory the bench makes, removed at the end.
    assert list(tmp_path.iterdir()) == []


def test_json_two_sizes_report_the_growth(tmp_path: Path) -> None:
    out = run_bench(
        "--children", "40,250", "--fanout", "3", "--roots", "2", "--synchronous", "normal",
        "--json", "--dir", str(tmp_path),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(out.stdout)
    assert data["backend"] == "sqlite"
    assert data["synchronous"] == "normal"
    assert [r["children"] for r in data["runs"]] == [40, 250]
    for run in data["runs"]:
        assert run["discovered"] == run["children"]  # finalize summed one per child
        assert run["worker_claimed"] == run["children"] + 2  # + execute and finalize
        assert run["seconds"] > 0
        assert run["worker_peak_rss_mb"] > 0
        assert run["store_calls"] == {}  # only with --store-timings
    assert isinstance(data["peak_rss_growth_mb"], float)


def test_store_timings_count_the_workers_store_calls(tmp_path: Path) -> None:
    out = run_bench(
        "--children", "300", "--synchronous", "normal", "--store-timings", "--json",
        "--dir", str(tmp_path),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    (run,) = json.loads(out.stdout)["runs"]
    calls = run["store_calls"]
    # execute spawns the 10 roots in one call; every other directory is one spawn_sibling.
    assert calls["tasks_insert"]["calls"] == 300 - 10 + 1
    assert calls["children_summary"]["calls"] == 1
    assert calls["children_page"]["calls"] >= 1
    assert calls["tasks_finish"]["calls"] >= 1
    for op in calls.values():
        assert op["calls"] >= 1
        assert 0 <= op["max_seconds"] <= op["seconds"]

    text = run_bench("--children", "300", "--store-timings", "--dir", str(tmp_path))
    assert text.returncode == 0, text.stdout + text.stderr
    assert re.search(r"^#     tasks_insert: 291 calls, ", text.stdout, re.MULTILINE), text.stdout


def test_spawn_batch_spawns_a_directorys_subdirectories_in_one_call(tmp_path: Path) -> None:
    out = run_bench(
        "--children", "300", "--synchronous", "normal", "--spawn", "batch", "--store-timings",
        "--json", "--dir", str(tmp_path),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(out.stdout)
    assert data["spawn"] == "batch"
    (run,) = data["runs"]
    assert run["discovered"] == 300  # the same tree: finalize summed one per child
    assert run["worker_claimed"] == 302
    # Directories 0..72 have sub-directories (10 + 72 * 4 = 298 < 300): one call each,
    # and execute's one call for the roots.
    assert run["store_calls"]["tasks_insert"]["calls"] == 73 + 1


def test_unreachable_postgres_exits_2() -> None:
    out = run_bench(
        "--backend", "postgres", "--pg-url", "postgresql://nobody@127.0.0.1:1/none",
        "--children", "10",
        timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith("error: ")
    assert "wall time" not in out.stdout


def test_redis_runs_under_a_private_prefix_and_cleans_it() -> None:
    redis = pytest.importorskip("redis")
    url = os.environ.get("FLOWMILL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        pytest.skip(f"{url} does not answer: {exc}")
    try:
        out = run_bench("--backend", "redis", "--redis-url", url, "--children", "200")
        assert out.returncode == 0, out.stdout + out.stderr
        assert figure(out.stdout, "wall time (200 children)", "s") > 0
        prefix = re.search(r"keys (fmbench:\d+:[0-9a-f]+:)\*", out.stdout)
        assert prefix is not None, out.stdout
        assert list(client.scan_iter(match=prefix.group(1) + "*", count=1000)) == []
    finally:
        client.close()
