"""A SQLite worker loads none of the optional packages (issue 17: worker memory and
start-up time): not the CLI's rich, the dashboard's starlette/uvicorn, the metrics and
tracing exporters, nor the PostgreSQL and Redis drivers.

Each check runs in a fresh interpreter, so what the test process imported does not count.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import flowmill

# Optional for a SQLite worker, whether run in-process or by `flowmill worker`: the CLI
# framework (typer, with click, shellingham and pydantic), rich, the dashboard, the metrics
# and tracing exporters, the other backends and their drivers.
OPTIONAL = (
    "typer",
    "click",
    "shellingham",
    "pydantic",
    "pydantic_core",
    "rich",
    "starlette",
    "uvicorn",
    "psycopg",
    "psycopg_pool",
    "redis",
    "hiredis",
    "prometheus_client",
    "opentelemetry",
    "importlib.metadata",  # the heartbeat's version is `flowmill._version`'s
    "email",
    "flowmill.web",
    "flowmill.store.postgres",
    "flowmill.store.redis",
)

APP_MODULE = """
import json, os, signal, sys

import flowmill

app = flowmill.App(os.environ["FOOTPRINT_URL"])


@app.task()
async def probe() -> None:
    # The first task has been claimed, run and is being recorded: everything the worker
    # needs to get here is imported. Write what is loaded; `flowmill worker` is then
    # stopped the way a supervisor stops it (an in-process worker stops when idle).
    with open(os.environ["FOOTPRINT_OUT"], "w") as f:
        json.dump(sorted(sys.modules), f)
    if os.environ.get("FOOTPRINT_SIGTERM"):
        os.kill(os.getpid(), signal.SIGTERM)
"""

IN_PROCESS = """
import asyncio, json, os, sys

import footprint_app


async def main() -> None:
    app = footprint_app.app
    await app.submit(footprint_app.probe)
    await app.worker(concurrency=4).run(stop_when_idle=True)
    await app.close()


asyncio.run(main())
with open(os.environ["FOOTPRINT_OUT"], "w") as f:
    json.dump(sorted(sys.modules), f)
"""


def test_the_version_is_the_installed_packages() -> None:
    assert flowmill.__version__ == importlib.metadata.version("flowmill")


def _loaded(names: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


def _env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "footprint_app.py").write_text(textwrap.dedent(APP_MODULE))
    return {
        "FOOTPRINT_URL": f"sqlite:///{tmp_path / 'footprint.db'}",
        "FOOTPRINT_OUT": str(tmp_path / "modules.json"),
        "PYTHONPATH": str(tmp_path),
        "PATH": "/usr/bin:/bin",
    }


def test_an_in_process_sqlite_worker_loads_no_optional_package(tmp_path: Path) -> None:
    env = _env(tmp_path)
    (tmp_path / "run.py").write_text(textwrap.dedent(IN_PROCESS))
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "run.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    modules = json.loads((tmp_path / "modules.json").read_text())
    assert "flowmill.store.sqlite" in modules  # the check sees what the worker loaded
    assert _loaded(modules, OPTIONAL) == []


def test_flowmill_worker_on_sqlite_loads_no_optional_package(tmp_path: Path) -> None:
    env = {**_env(tmp_path), "FOOTPRINT_SIGTERM": "1"}
    submit = "import asyncio, footprint_app as m; asyncio.run(m.app.submit(m.probe))"
    subprocess.run([sys.executable, "-c", submit], cwd=tmp_path, env=env, check=True, timeout=60)
    proc = subprocess.run(
        [sys.executable, "-m", "flowmill", "worker", "footprint_app:app", "--concurrency", "4"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    modules = json.loads((tmp_path / "modules.json").read_text())
    assert "flowmill.store.sqlite" in modules
    assert _loaded(modules, OPTIONAL) == []
    # A plain worker command line is parsed without typer: no other command is loaded.
    assert _loaded(modules, ("flowmill.cli",)) == [
        "flowmill.cli",
        "flowmill.cli._base",
        "flowmill.cli._worker",
    ]
