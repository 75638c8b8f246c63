"""Deploying `flowmill worker`: repeated signals, exit codes, start and stop hooks, the
health endpoint, and --processes, each on a real worker process (SQLite)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import flowmill as fm
from flowmill.errors import StoreUnavailable
from flowmill.store.contract.tasks import ClaimedRow, TasksClaim
from flowmill.worker._health import HealthServer

from ..conftest import eventually
from ..engine.test_worker_log import MODULE, Env, Proc, make_env, message, task

HOOKS = """
import logging
import os
import pathlib

import flowmill as fm

app = fm.App(os.environ["FLOWMILL_URL"])
HERE = pathlib.Path(__file__).parent
log = logging.getLogger("hooks")


@app.on_worker_start
async def open_client(resources):
    if os.environ.get("FAIL_START"):
        raise ConnectionError("the pool cannot connect")
    resources["prefix"] = "hello"


@app.on_worker_start
def more():
    return {"n": 2}


@app.on_worker_stop
async def close_client(resources):
    (HERE / "stopped.txt").write_text(repr(sorted(resources)))
    log.info("stop hook ran")


@app.task
def greet(name: str, ctx: fm.Context) -> str:
    return f"{ctx.resources['prefix']} {name} x{ctx.resources['n']}"
"""


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = make_env(tmp_path)
    (tmp_path / "deploy_hooks.py").write_text(HOOKS)
    try:
        yield e
    finally:
        e.close()


def running_hold(env: Env, *args: str, name: str = "h") -> Proc:
    """A worker whose `hold` attempt is running (it ends when NAME.release appears)."""
    env.submit("hold", name)
    w = env.worker(*args)
    env.wait_file(f"{name}.started", w)
    return w


# -- signals --------------------------------------------------------------------------


def test_two_signals_at_once_keep_the_graceful_phase(env: Env) -> None:
    # GNU timeout and a double Ctrl-C send two at once: the attempt still gets its grace.
    w = running_hold(env, "--repeat-signal-window", "60")
    w.popen.send_signal(signal.SIGTERM)
    w.popen.send_signal(signal.SIGTERM)
    w.wait_for(message("SIGTERM: stopping"), "the graceful stop")
    w.popen.send_signal(signal.SIGINT)  # surely after the first was handled
    again = w.wait_for(message("again within 60s"), "the repeat is ignored")
    assert again["level"] == "INFO"
    w.wait_for(message("waiting up to 20s for 1 running attempt"), "the drain waits")
    (env.dir / "h.release").write_text("")
    w.wait_for(task("hold", "completed"), "the attempt ends on its own")
    assert w.exit_code() == 0
    assert not w.find(message("grace short"))


def test_a_later_second_signal_cuts_the_grace_short(env: Env) -> None:
    w = running_hold(env, "--repeat-signal-window", "0")
    w.popen.send_signal(signal.SIGTERM)
    w.wait_for(message("SIGTERM: stopping"), "the graceful stop")
    w.popen.send_signal(signal.SIGTERM)
    cut = w.wait_for(message("grace short"), "the second signal forces")
    assert cut["level"] == "WARNING" and "1 running attempt" in cut["message"]
    w.wait_for(task("hold", "handed_back"), "the attempt is handed back")
    assert w.exit_code() == fm.worker.ExitCode.FORCED.value == 5


# -- exit codes -----------------------------------------------------------------------


def test_exit_codes_say_why_the_worker_stopped(env: Env) -> None:
    bad_app = env.flowmill("worker", "no_such_module:app")
    assert bad_app.returncode == 1 and "no such module" in bad_app.stderr
    usage = env.flowmill("worker", f"{MODULE}:app", "--log-format", "xml")
    assert usage.returncode == 2 and "--log-format" in usage.stderr
    unknown = env.flowmill("worker", f"{MODULE}:app", "--no-such-option")
    assert unknown.returncode == 2

    gone = dict(env.env, FLOWMILL_URL=f"sqlite:///{env.dir / 'missing' / 'jobs.db'}")
    no_store = env.flowmill_with(gone, "worker", f"{MODULE}:app")
    assert no_store.returncode == 3
    assert "cannot open the store" in no_store.stderr and "missing" in no_store.stderr

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = env.flowmill("worker", f"{MODULE}:app", "--health-port", port)
    assert busy.returncode == 1 and "cannot serve the health endpoint" in busy.stderr

    idle = env.worker()
    idle.wait_for(message("claiming"), "started")
    idle.popen.send_signal(signal.SIGINT)
    assert idle.exit_code() == 0


def test_help_lists_the_exit_codes_and_the_shutdown_options(env: Env) -> None:
    out = env.flowmill("worker", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for needle in (
        "0 stopped as asked",
        "3 the store could not be opened",
        "4 an on_worker_start hook failed",
        "5 a repeated signal",
        "--shutdown-grace",
        "--cancel-grace",
        "--repeat-signal-window",
        "--health-port",
        "--log-format",
        "--processes",
    ):
        assert needle in text, needle


# -- hooks ----------------------------------------------------------------------------


def test_start_hooks_share_resources_and_stop_hooks_run_last(env: Env) -> None:
    w = env.worker(module="deploy_hooks")
    w.wait_for(message("claiming"), "started")
    done = env.flowmill("submit", "deploy_hooks:app", "deploy_hooks.greet", '"ana"', "--wait")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[1]) == "hello ana x2"
    w.popen.send_signal(signal.SIGTERM)
    assert w.exit_code() == 0
    assert (env.dir / "stopped.txt").read_text() == "['n', 'prefix']"
    names = [r["message"] for r in w.records]
    ended = next(i for i, r in enumerate(w.records) if r.get("outcome") == "completed")
    assert names.index("stop hook ran") > ended


def test_a_failing_start_hook_stops_the_worker_before_it_claims(env: Env) -> None:
    queued = env.submit("greet", "bo", module="deploy_hooks")
    failing = dict(env.env, FAIL_START="1")
    out = env.flowmill_with(failing, "worker", "deploy_hooks:app")
    assert out.returncode == 4, out.stderr
    assert "on_worker_start hook open_client failed: ConnectionError: the pool cannot connect" in (
        out.stderr
    )
    assert "Traceback" in out.stderr  # the hook's own traceback, for the cause
    assert (env.dir / "stopped.txt").read_text() == "[]"  # stop hooks still ran
    shown = env.flowmill("tasks", "show", queued, "--url", env.url)
    assert re.search(r"\bready\b", shown.stdout), shown.stdout


# -- health ---------------------------------------------------------------------------


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_health_endpoint_follows_the_worker(env: Env) -> None:
    w = running_hold(env, "--health-port", "0")
    where = w.wait_for(message("health endpoint on"), "the endpoint's address")
    port = int(re.findall(r":(\d+) ", where["message"])[0])
    w.wait_for(message("claiming"), "claiming")
    assert get(port, "/livez") == (200, "ok\n")
    assert get(port, "/readyz") == (200, "ready\n")
    assert get(port, "/nope")[0] == 404
    w.popen.send_signal(signal.SIGTERM)
    w.wait_for(message("waiting up to"), "the drain")
    assert get(port, "/readyz") == (503, "shutting down\n")
    assert get(port, "/livez") == (200, "ok\n")
    (env.dir / "h.release").write_text("")
    assert w.exit_code() == 0


async def test_readiness_says_starting_and_store_unreachable(tmp_path: Path) -> None:
    app = fm.App(f"sqlite:///{tmp_path / 'r.db'}")

    @app.task
    def noop() -> None: ...

    w = app.worker(poll_interval=timedelta(seconds=0.05))
    server = HealthServer(w.readiness, "127.0.0.1", 0)
    await server.start()
    try:
        assert await asyncio.to_thread(get, server.port, "/readyz") == (503, "starting\n")
        real_claim = app.store.tasks_claim
        broken = asyncio.Event()

        async def claim_fails(params: TasksClaim) -> list[ClaimedRow]:
            if not broken.is_set():
                return await real_claim(params)
            raise StoreUnavailable("the store went away")

        app.store.tasks_claim = claim_fails  # type: ignore[method-assign,assignment]
        run = asyncio.ensure_future(w.run())

        async def ready() -> bool:
            return w.readiness() == (True, "ready")

        await eventually(ready, what="ready")
        broken.set()
        w._wake.set()  # claim now rather than at the next poll

        async def unreachable() -> bool:
            return w.readiness() == (False, "store unreachable")

        await eventually(unreachable, what="unreachable")
        assert await asyncio.to_thread(get, server.port, "/readyz") == (
            503,
            "store unreachable\n",
        )
        broken.clear()
        w._wake.set()
        await eventually(ready, what="ready again")
        w.stop()
        await run
    finally:
        await server.close()
        await app.close()


# -- processes ------------------------------------------------------------------------


def test_processes_run_under_one_parent_that_forwards_signals(env: Env) -> None:
    w = env.worker("--processes", "2", fmt="json")
    started = w.wait_for(message("started 2 worker processes"), "the parent starts two")
    children = [int(p) for p in re.findall(r"\d+", started["message"].split(":", 1)[1])]
    assert len(children) == 2 and w.popen.pid not in children

    def said(pid: int, needle: str) -> Callable[[dict[str, Any]], bool]:
        return lambda r: r["pid"] == pid and needle in r["message"]

    for pid in children:
        w.wait_for(said(pid, "claiming"), f"child {pid} claims")
    w.popen.send_signal(signal.SIGTERM)  # the parent passes it on to each child
    assert w.exit_code() == 0
    for pid in children:
        assert w.find(said(pid, "SIGTERM: stopping"))


def test_processes_exit_with_the_worst_child_code(env: Env) -> None:
    failing = dict(env.env, FAIL_START="1")
    out = env.flowmill_with(failing, "worker", "deploy_hooks:app", "--processes", "2")
    assert out.returncode == 4, out.stderr
    assert out.stderr.count("the pool cannot connect") >= 2


def test_children_stop_when_the_parent_is_killed(env: Env) -> None:
    # SIGKILL (the OOM killer, kill -9) gives the parent no chance to pass anything on: each
    # child notices it was orphaned and stops gracefully instead of claiming on forever.
    w = env.worker("--processes", "2", fmt="json")
    started = w.wait_for(message("started 2 worker processes"), "the parent starts two")
    children = [int(p) for p in re.findall(r"\d+", started["message"].split(":", 1)[1])]
    for pid in children:
        w.wait_for(lambda r, pid=pid: r["pid"] == pid and "claiming" in r["message"], "claims")
    w.popen.kill()
    for pid in children:
        w.wait_for(
            lambda r, pid=pid: r["pid"] == pid and "parent process" in r["message"],
            f"child {pid} sees its parent gone",
        )
    assert w.reader is not None
    w.reader.join(timeout=60)  # stderr ends once both children have exited
    assert not w.reader.is_alive(), w.log()
    for pid in children:
        assert w.find(lambda r, pid=pid: r["pid"] == pid and "stopped" in r["message"]), w.log()
