"""The `flowmill` command: inspection on a SQLite file, submit --wait with a real worker, errors."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

import flowmill as fm
from flowmill._loader import AppLoadError, load_app
from flowmill.cli import cli, to_json
from flowmill.store.sqlite._schema import SCHEMA_VERSION  # aligned on every backend

ROOT = Path(__file__).resolve().parents[2]
MODULE = "cli_jobs"

JOBS = """
from dataclasses import dataclass
from datetime import timedelta
import threading
import time

import flowmill as fm

app = fm.App({url!r})


@dataclass
class AddArgs:
    a: int
    b: int


@dataclass
class Sum:
    total: int


@app.task(name="add", retry=fm.Retry(max_attempts=3), timeout=timedelta(seconds=5))
async def add(args: AddArgs) -> Sum:
    return Sum(args.a + args.b)


@app.task(name="reject")
async def reject(x: int) -> None:
    raise fm.Fail(f"rejected [{{x}}]")


@app.task(name="flaky", retry=fm.Retry(max_attempts=1))
def flaky(x: int) -> int:
    raise ConnectionError("upstream down")


@app.task(name="stubborn", queue="slow")
def stubborn(marker: str) -> None:
    # Ignores every stop request: the worker has to abandon its thread.
    open(marker, "w").close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.01)
"""


@dataclass
class Jobs:
    dir: Path
    url: str
    env: dict[str, str]


@pytest.fixture
def jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Jobs]:
    """A `cli_jobs` module in tmp_path (the current directory), on its own SQLite file."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    (tmp_path / f"{MODULE}.py").write_text(JOBS.format(url=url))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLOWMILL_URL", raising=False)
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT / 'src'}"}
    env.pop("FLOWMILL_URL", None)
    yield Jobs(tmp_path, url, env)
    sys.modules.pop(MODULE, None)


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), prog_name="flowmill")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


@dataclass
class Populated:
    done: str
    failed: str
    dead: str
    scheduled: str


@pytest.fixture
def populated(jobs: Jobs) -> Populated:
    """One task in each of completed, failed, dead_lettered and scheduled."""
    loaded = load_app(f"{MODULE}:app")
    add_args = sys.modules[MODULE].AddArgs

    async def go() -> Populated:
        app = fm.App(jobs.url)  # its own App: the CLI closes the module's after each command
        app.registry.update(loaded.registry)
        async with app:
            done = await app.submit("add", add_args(1, 2))
            failed = await app.submit("reject", 7)
            dead = await app.submit("flaky", 1)
            await app.worker(queues=["default"], concurrency=4).run(stop_when_idle=True)
            later = await app.submit("add", add_args(5, 5), delay=timedelta(hours=1))
        return Populated(done.id, failed.id, dead.id, later.id)

    return asyncio.run(go())


# -- inspection -----------------------------------------------------------------------


def test_status_counts_by_queue_and_state(jobs: Jobs, populated: Populated) -> None:
    code, out, _ = run("status", "--url", jobs.url)
    assert code == 0
    # The title names the database, whose path may hold "queue" too: match the header itself.
    header = next(line for line in out.splitlines() if line.split()[:1] == ["queue"]).split()
    row = next(line for line in out.splitlines() if line.strip().startswith("default")).split()
    counts = dict(zip(header, row, strict=True))
    assert counts["completed"] == "1"
    assert counts["failed"] == "1"
    assert counts["dead_lettered"] == "1"
    assert counts["scheduled"] == "1"
    assert counts["total"] == "4"


def test_status_title_keeps_a_long_url_on_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long database URL (a deep path, a PostgreSQL URL) is never wrapped in the title."""
    deep = tmp_path / ("d" * 60) / ("queue-" * 12) / ("e" * 50)
    deep.mkdir(parents=True)
    url = f"sqlite:///{deep / 'long.db'}"

    async def go() -> None:
        async with fm.App(url) as app:

            @app.task(name="anything")
            async def anything(x: int) -> None: ...

            await app.submit(anything, 1)

    asyncio.run(go())
    monkeypatch.setenv("COLUMNS", "60")
    code, out, _ = run("status", "--url", url)
    assert code == 0
    assert any(url in line for line in out.splitlines()), out
    header = next(line for line in out.splitlines() if line.split()[:1] == ["queue"]).split()
    assert header[1:] == ["ready", "dead_lettered", "total"]


def test_status_shows_dead_letters_column_even_when_zero(jobs: Jobs) -> None:
    async def go() -> None:
        async with fm.App(jobs.url) as app:
            app.task(name="add")(lambda x: x)
            await app.submit("add", 1)

    asyncio.run(go())
    code, out, _ = run("status", "--url", jobs.url)
    assert code == 0
    assert "dead_lettered" in out
    assert "ready" in out


def test_tasks_list_filters_and_pages(jobs: Jobs, populated: Populated) -> None:
    code, out, _ = run("tasks", "list", "--url", jobs.url)
    assert code == 0
    ids = re.findall(r"^([0-9a-f-]{36})\s", out, flags=re.M)
    assert ids == [populated.done, populated.failed, populated.dead, populated.scheduled]

    code, out, _ = run("tasks", "list", "--url", jobs.url, "--state", "failed,dead_lettered")
    assert code == 0
    assert populated.failed in out and populated.dead in out
    assert populated.done not in out
    assert "Fail: rejected [7]" in out  # brackets in an error are text, not markup

    code, out, _ = run("tasks", "list", "--url", jobs.url, "--name", "add", "--limit", "1")
    assert code == 0
    assert populated.done in out and populated.scheduled not in out
    assert f"--after {populated.done}" in out
    code, out, _ = run(
        "tasks", "list", "--url", jobs.url, "--name", "add", "--after", populated.done
    )
    assert code == 0
    assert populated.scheduled in out and populated.done not in out

    code, out, _ = run("tasks", "list", "--url", jobs.url, "--queue", "nope")
    assert code == 0
    assert "no matching tasks" in out


def test_tasks_list_by_tag_and_search(jobs: Jobs) -> None:
    async def go() -> list[str]:
        async with fm.App(jobs.url) as app:
            app.task(name="add")(lambda x: x)
            blue = await app.submit("add", 1, key="order-7", tags={"team": "blue"})
            red = await app.submit("add", 2, key="invoice-7", tags={"team": "red"})
            return [blue.id, red.id]

    blue, red = asyncio.run(go())
    code, out, _ = run("tasks", "list", "--url", jobs.url, "--tag", "team")
    assert code == 0
    assert re.findall(r"^([0-9a-f-]{36})\s", out, flags=re.M) == [blue, red]
    code, out, _ = run("tasks", "list", "--url", jobs.url, "--tag", "team=red", "--json")
    assert code == 0
    assert [t["id"] for t in json.loads(out)] == [red]
    code, out, _ = run("tasks", "list", "--url", jobs.url, "--search", "order-")
    assert code == 0
    assert blue in out and red not in out
    code, out, _ = run("tasks", "list", "--url", jobs.url, "--search", red[:30])
    assert code == 0
    assert red in out and blue not in out
    code, _, err = run("tasks", "list", "--url", jobs.url, "--tag", "=x")
    assert code == 2
    assert "bad --tag '=x'" in err


def test_tasks_show_raw_and_typed(jobs: Jobs, populated: Populated) -> None:
    code, out, _ = run("tasks", "show", populated.done, "--url", jobs.url)
    assert code == 0
    assert "completed" in out
    assert '"total": 3' in out  # the result, as raw JSON without the app
    assert '"a": 1' in out

    code, out, _ = run("tasks", "show", populated.done, "--app", f"{MODULE}:app")
    assert code == 0
    assert '"total": 3' in out  # decoded to Sum and shown as JSON again

    code, out, _ = run("tasks", "show", populated.dead, "--url", jobs.url)
    assert code == 0
    assert "dead_lettered" in out
    assert "ConnectionError (handler_error): upstream down" in out
    assert "Traceback (most recent call last)" in out  # the last attempt's traceback


def test_dead_letters_and_replay(jobs: Jobs, populated: Populated) -> None:
    code, out, _ = run("dead-letters", "--url", jobs.url)
    assert code == 0
    assert populated.dead in out
    assert populated.failed not in out
    assert "ConnectionError: upstream down" in out

    code, out, _ = run("replay", populated.dead, "--url", jobs.url)
    assert code == 0
    assert "ready" in out
    code, out, _ = run("dead-letters", "--url", jobs.url)
    assert code == 0
    assert "no dead letters" in out

    code, _, err = run("replay", populated.done, "--url", jobs.url)
    assert code == 1
    assert "only failed or dead-lettered" in one_line_error(err)


def test_tasks_retry_failed(jobs: Jobs, populated: Populated) -> None:
    code, out, _ = run("tasks", "retry", populated.failed, "--app", f"{MODULE}:app")
    assert code == 0
    assert f"task {populated.failed}: ready" in out


def test_tasks_cancel(jobs: Jobs, populated: Populated) -> None:
    code, out, _ = run("tasks", "cancel", populated.scheduled, "--url", jobs.url)
    assert code == 0
    assert "cancelled" in out
    code, out, _ = run("tasks", "show", populated.scheduled, "--url", jobs.url)
    assert "cancelled" in out

    code, _, err = run("tasks", "cancel", populated.done, "--url", jobs.url)
    assert code == 1
    assert "completed" in one_line_error(err)


def test_migrate_creates_then_reports_up_to_date(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    code, out, _ = run("migrate", "--url", url)
    assert code == 0
    assert f"created schema version {SCHEMA_VERSION}" in out
    code, out, _ = run("migrate", "--url", url)
    assert code == 0
    assert f"schema version {SCHEMA_VERSION} is up to date" in out


def test_url_comes_from_flowmill_url(
    jobs: Jobs, populated: Populated, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWMILL_URL", jobs.url)
    code, out, _ = run("tasks", "show", populated.done)
    assert code == 0
    assert populated.done in out


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["worker", "no_such_module:app"], "no such module"),
        (["worker", "cli_jobs"], "expected MODULE:ATTRIBUTE"),
        (["worker", "cli_jobs:nope"], "has no attribute 'nope'"),
        (["worker", "cli_jobs:AddArgs"], "not a flowmill App"),
        (["submit", "cli_jobs:app", "nope"], "no task named 'nope'"),
        (["submit", "cli_jobs:app", "add", '{"a": 1}'], "missing required field `b`"),
        (["submit", "cli_jobs:app", "add", "{bad"], "malformed"),
        (["status", "--url", "nonsense"], "bad store URL"),
        (["status", "--url", "mysql://x/y"], "unknown store URL scheme"),
        (["status", "--url", "sqlite:///missing.db"], "no flowmill database"),
        (["status", "--app", "cli_jobs:nope"], "has no attribute"),
        (["tasks", "show", "no-such-id"], "no task with id 'no-such-id'"),
        (["tasks", "cancel", "no-such-id"], "no task with id"),
        (["tasks", "retry", "no-such-id"], "no task with id"),
        (["replay", "no-such-id"], "no task with id"),
        (["tasks", "list", "--state", "bogus"], "unknown state 'bogus'"),
    ],
)
def test_bad_input_is_one_line(
    jobs: Jobs, populated: Populated, args: list[str], needle: str
) -> None:
    if args[0] not in ("worker", "submit") and "--url" not in args and "--app" not in args:
        args = [*args, "--url", jobs.url]
    code, _, err = run(*args)
    assert code in (1, 2)
    assert needle in one_line_error(err)


def test_broken_module_names_the_culprit(jobs: Jobs) -> None:
    (jobs.dir / "broken_jobs.py").write_text("import flowmill\nraise RuntimeError('oops')\n")
    try:
        code, _, err = run("worker", "broken_jobs:app")
    finally:
        sys.modules.pop("broken_jobs", None)
    assert code == 1
    line = one_line_error(err)
    assert "RuntimeError: oops" in line and "broken_jobs.py:2" in line


def test_loader_puts_cwd_first(jobs: Jobs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(jobs.dir)])
    app = load_app(f"{MODULE}:app")
    assert isinstance(app, fm.App)
    assert sys.path[0] == str(jobs.dir)
    with pytest.raises(AppLoadError, match="not a flowmill App"):
        load_app(f"{MODULE}:add")


def test_to_json_handles_typed_values() -> None:
    @dataclass
    class P:
        x: int

    assert json.loads(to_json(P(1))) == {"x": 1}
    assert json.loads(to_json({"a": [1, None]}, indent=2)) == {"a": [1, None]}


# -- real processes -------------------------------------------------------------------


def flowmill(jobs: Jobs, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowmill", *args],
        cwd=jobs.dir,
        env=jobs.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_worker(jobs: Jobs, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "flowmill", "worker", f"{MODULE}:app", *args],
        cwd=jobs.dir,
        env=jobs.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)
    if proc.stderr is not None:
        proc.stderr.close()


def test_submit_wait_with_worker_then_sigterm(jobs: Jobs) -> None:
    worker = start_worker(jobs, "--concurrency", "4")
    try:
        done = flowmill(jobs, "submit", f"{MODULE}:app", "add", '{"a": 40, "b": 2}', "--wait",
                        "--timeout", "60")  # fmt: skip
        assert done.returncode == 0, done.stderr
        task_id, result = done.stdout.strip().splitlines()
        assert re.fullmatch(r"[0-9a-f-]{36}", task_id)
        assert json.loads(result) == {"total": 42}

        failed = flowmill(jobs, "submit", f"{MODULE}:app", "reject", "3", "--wait")
        assert failed.returncode == 1
        assert "ended failed: Fail: rejected [3]" in one_line_error(failed.stderr)

        queued = flowmill(jobs, "submit", f"{MODULE}:app", "add", '{"a": 1, "b": 1}',
                          "--delay", "3600", "--key", "k1", "--priority", "5")  # fmt: skip
        assert queued.returncode == 0, queued.stderr
        shown = flowmill(jobs, "tasks", "show", queued.stdout.strip(), "--url", jobs.url)
        assert "scheduled" in shown.stdout and "k1" in shown.stdout

        # The worker answered, so its signal handlers are in place: SIGTERM stops it cleanly.
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
        assert worker.stderr is not None
        assert "stopped" in worker.stderr.read()
    finally:
        stop(worker)


def test_worker_exits_despite_a_handler_thread_that_ignores_stop(jobs: Jobs) -> None:
    marker = jobs.dir / "started"
    worker = start_worker(jobs, "--queues", "slow", "--shutdown-grace", "0.1")
    try:
        sent = flowmill(jobs, "submit", f"{MODULE}:app", "stubborn", json.dumps(str(marker)))
        assert sent.returncode == 0, sent.stderr
        deadline = time.monotonic() + 60
        while not marker.exists():  # wait for the handler to be running, not for a timer
            assert time.monotonic() < deadline, "the stubborn task never started"
            assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
            time.sleep(0.02)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
        assert worker.stderr is not None
        assert "did not stop" in worker.stderr.read()
    finally:
        stop(worker)
