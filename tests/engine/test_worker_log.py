"""The worker's log, read from a real `flowmill worker` process in text and in JSON: a
success, a retry, a failure with its traceback, a reclaim after `kill -9` of another
worker, a graceful SIGTERM and a hand-back each show, with their structured fields.

The tests wait for log lines and files the handlers write, never for a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import flowmill as fm

from .test_worker import reap_elsewhere, running

MODULE = "wlog_jobs"
WAIT_S = 60.0

JOBS = """
import asyncio
import contextlib
import os
import pathlib
import time
from datetime import timedelta

import flowmill as fm

app = fm.App(os.environ["FLOWMILL_URL"])
HERE = pathlib.Path(__file__).parent


@app.task
def ok(n: int) -> int:
    return n + 1


@app.task(retry=fm.Retry(max_attempts=2, backoff=fm.Fixed(timedelta(0))))
def flaky(n: int, ctx: fm.Context) -> int:
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return n


@app.task(retry=fm.Retry(max_attempts=1))
def broken(n: int) -> None:
    raise ValueError(f"broken for good {n}")


@app.task(queue="slow", retry=fm.Retry(max_attempts=3, backoff=fm.Fixed(timedelta(0))))
def hang(name: str, ctx: fm.Context) -> str:
    if ctx.attempt == 1:
        (HERE / name).write_text("started")
        while True:  # until the process is killed
            time.sleep(0.05)
    return "recovered"


@app.task
async def hold(name: str, ctx: fm.Context) -> str:
    # Runs until the test creates NAME.release, or until asked to stop (then handed back).
    (HERE / f"{name}.started").write_text("")
    while not (HERE / f"{name}.release").exists():
        ctx.check_cancelled()
        await asyncio.sleep(0.02)
    return "released"
"""


# -- a worker process and its log ------------------------------------------------------

_TEXT_HEAD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+)\s+([\w.]+): (.*)$")
_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def parse_text(line: str, records: list[dict[str, Any]]) -> None:
    """Add one text-format line: a new record, or a traceback line of the last one."""
    m = _TEXT_HEAD.match(line)
    if m is None:
        assert records, f"a continuation line before any record: {line!r}"
        records[-1]["exc"] = records[-1].get("exc", "") + line + "\n"
        return
    level, logger, rest = m.groups()
    rec: dict[str, Any] = {"level": level, "logger": logger, "message": rest}
    cut = rest.rfind(" [")
    if cut >= 0 and rest.endswith("]"):
        rec["message"] = rest[:cut]
        for key, value in _PAIR.findall(rest[cut + 2 : -1]):
            rec[key] = json.loads(value) if value.startswith('"') else value
    records.append(rec)


@dataclass
class Proc:
    """A `flowmill` subprocess whose stderr (its log) is parsed into records as it comes."""

    popen: subprocess.Popen[str]
    fmt: str
    records: list[dict[str, Any]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    reader: threading.Thread | None = None

    def start_reading(self) -> None:
        def read() -> None:
            assert self.popen.stderr is not None
            for line in self.popen.stderr:
                line = line.rstrip("\n")
                with self.cond:
                    self.raw.append(line)
                    if self.fmt == "json":
                        self.records.append(json.loads(line))  # every line is one object
                    else:
                        parse_text(line, self.records)
                    self.cond.notify_all()
            with self.cond:
                self.cond.notify_all()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()

    def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], what: str, timeout: float = WAIT_S
    ) -> dict[str, Any]:
        """The first record matching `pred`, waiting for it to be logged."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for rec in self.records:
                    if pred(rec):
                        return rec
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._reading()):
                    raise AssertionError(f"no log record: {what}\n" + "\n".join(self.raw))
                self.cond.wait(min(left, 0.5))

    def _reading(self) -> bool:
        return self.reader is not None and self.reader.is_alive()

    def find(self, pred: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        with self.cond:
            return [r for r in self.records if pred(r)]

    def exit_code(self, timeout: float = WAIT_S) -> int:
        code = self.popen.wait(timeout=timeout)
        if self.reader is not None:
            self.reader.join(timeout)
        return code

    def log(self) -> str:
        with self.cond:
            return "\n".join(self.raw)


@dataclass
class Env:
    dir: Path
    url: str
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)

    def flowmill(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flowmill", *args],
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=WAIT_S,
        )

    def flowmill_with(self, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flowmill", *args],
            cwd=self.dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=WAIT_S,
        )

    def submit(self, kind: str, payload: Any, module: str = MODULE) -> str:
        done = self.flowmill("submit", f"{module}:app", f"{module}.{kind}", json.dumps(payload))
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def worker(self, *args: str, fmt: str = "text", module: str = MODULE) -> Proc:
        popen = subprocess.Popen(
            [sys.executable, "-m", "flowmill", "worker", f"{module}:app", "--log-format", fmt,
             *args],
            cwd=self.dir,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # close() kills its whole group, --processes children too
        )  # fmt: skip
        proc = Proc(popen, fmt)
        proc.start_reading()
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        """Kill every worker started here, with any children, and stop their readers.

        The stderr pipe is not closed under a reader blocked on it: that close would wait
        on the reader's buffer lock, which no signal (not even the test timeout) breaks.
        """
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.popen.pid, signal.SIGKILL)
            p.popen.wait(timeout=30)
            if p.reader is not None:
                p.reader.join(timeout=30)
            if p.popen.stderr is not None and not p._reading():
                p.popen.stderr.close()

    def wait_file(self, name: str, proc: Proc | None = None) -> None:
        deadline = time.monotonic() + WAIT_S
        while not (self.dir / name).exists():  # a file the handler writes: an event
            assert time.monotonic() < deadline, f"{name} never appeared"
            if proc is not None:
                assert proc.popen.poll() is None, proc.log()
            time.sleep(0.02)


def make_env(tmp_path: Path, module: str = MODULE, source: str = JOBS) -> Env:
    (tmp_path / f"{module}.py").write_text(source)
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    env = {
        **os.environ,
        "FLOWMILL_URL": url,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
        "NO_COLOR": "1",
    }
    return Env(tmp_path, url, env)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = make_env(tmp_path)
    try:
        yield e
    finally:
        e.close()


def task(kind: str, outcome: str | None = None, **more: Any) -> Callable[[dict[str, Any]], bool]:
    """A predicate: a record about an attempt of `kind` (with that outcome and fields)."""

    def pred(r: dict[str, Any]) -> bool:
        if r.get("kind") != f"{MODULE}.{kind}":
            return False
        if outcome is not None and r.get("outcome") != outcome:
            return False
        return all(str(r.get(k)) == str(v) for k, v in more.items())

    return pred


def message(needle: str) -> Callable[[dict[str, Any]], bool]:
    return lambda r: needle in r["message"]


# -- the whole story, in both formats -----------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_run_shows_each_event_with_its_fields(env: Env, fmt: str) -> None:
    # Worker A holds the "slow" task when it is killed with -9: its lease is left behind.
    a = env.worker("--queues", "slow", "--lease-ttl", "1", fmt=fmt)
    hung = env.submit("hang", "hang.marker")
    env.wait_file("hang.marker", a)
    a.popen.send_signal(signal.SIGKILL)
    assert a.exit_code() == -signal.SIGKILL

    ok = env.submit("ok", 1)
    flaky = env.submit("flaky", 1)
    broken = env.submit("broken", 7)
    held = env.submit("hold", "h1")
    b = env.worker("--queues", "default,slow", "--reap-interval", "0.1", fmt=fmt)

    start = b.wait_for(message("starting"), "the start-up summary")
    assert start["level"] == "INFO"
    for kind in ("ok", "flaky", "broken", "hang", "hold"):
        assert f"{MODULE}.{kind}" in start["message"]
    assert "default, slow" in start["message"] and "concurrency 64" in start["message"]
    assert env.url in start["message"]
    assert start["worker_id"]
    if fmt == "json":
        assert start["queues"] == ["default", "slow"] and start["concurrency"] == 64

    done = b.wait_for(task("ok", "completed"), "ok completed")
    assert done["level"] == "INFO"
    assert (done["task_id"], str(done["attempt"]), done["queue"]) == (ok, "1", "default")
    assert int(done["duration_ms"]) >= 0 and done["worker_id"] == start["worker_id"]
    assert "exc" not in done

    retry = b.wait_for(task("flaky", "retry"), "flaky's first attempt fails and will retry")
    assert retry["level"] == "WARNING" and retry["task_id"] == flaky
    assert str(retry["attempt"]) == "1"
    assert "RuntimeError: first attempt fails" in retry["message"]
    assert (
        "Traceback" in retry["exc"]
        and 'raise RuntimeError("first attempt fails")' in (retry["exc"])
    )
    b.wait_for(task("flaky", "completed", attempt=2), "flaky's second attempt completes")

    dead = b.wait_for(task("broken", "dead_lettered"), "broken is dead-lettered")
    assert dead["level"] == "ERROR" and dead["task_id"] == broken
    assert "ValueError: broken for good 7" in dead["exc"]

    reclaim = b.wait_for(message("reclaimed"), "the reaper reclaims the killed worker's task")
    assert reclaim["level"] == "WARNING" and reclaim["task_id"] == hung
    assert reclaim["kind"] == f"{MODULE}.hang" and reclaim["outcome"] == "retry"
    assert str(a.popen.pid) in reclaim["message"]  # whose lease it was
    b.wait_for(task("hang", "completed", attempt=2), "the reclaimed task runs again")

    # A graceful SIGTERM: no new claims, the running attempt is let finish.
    env.wait_file("h1.started", b)
    b.popen.send_signal(signal.SIGTERM)
    b.wait_for(message("SIGTERM: stopping"), "the first SIGTERM starts the graceful stop")
    b.wait_for(message("waiting up to 20s for 1 running attempt"), "the drain waits")
    (env.dir / "h1.release").write_text("")
    finished = b.wait_for(task("hold", "completed"), "the held attempt finishes in the grace")
    assert finished["task_id"] == held
    b.wait_for(message("stopped"), "the worker says it stopped")
    assert b.exit_code() == 0
    assert not b.find(lambda r: r["level"] == "ERROR" and r.get("kind") != f"{MODULE}.broken")
    assert not b.find(message("lease lost"))


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_grace_over_hands_the_attempt_back(env: Env, fmt: str) -> None:
    held = env.submit("hold", "h2")
    w = env.worker("--shutdown-grace", "0.2", "--log-level", "debug", fmt=fmt)
    began = w.wait_for(task("hold"), "the attempt's start")
    assert began["level"] == "DEBUG" and "started" in began["message"]
    assert (began["task_id"], str(began["attempt"])) == (held, "1")
    env.wait_file("h2.started", w)
    w.popen.send_signal(signal.SIGTERM)
    over = w.wait_for(message("shutdown grace (0.2s) is over"), "the grace runs out")
    assert over["level"] == "WARNING" and "1 attempt(s)" in over["message"]
    back = w.wait_for(task("hold", "handed_back"), "the attempt is handed back")
    assert back["level"] == "WARNING" and back["task_id"] == held
    w.wait_for(message("stopped"), "the worker stops")
    assert w.exit_code() == 0
    shown = env.flowmill("tasks", "show", held, "--url", env.url)
    assert re.search(r"\bready\b", shown.stdout), shown.stdout


OTHER = """
import os

import flowmill as fm

app = fm.App(os.environ["FLOWMILL_URL"])


@app.task
def ghost(n: int) -> int:
    return n
"""

EMPTY = """
import os

import flowmill as fm

app = fm.App(os.environ["FLOWMILL_URL"])
"""


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_warns_of_no_tasks_and_of_ready_tasks_nobody_here_serves(env: Env, fmt: str) -> None:
    (env.dir / "wlog_other.py").write_text(OTHER)
    (env.dir / "wlog_empty.py").write_text(EMPTY)
    env.submit("ghost", 1, module="wlog_other")  # a kind the jobs app does not register
    env.submit("hang", "never.marker")  # a kind it registers, in a queue left unserved

    empty = env.worker(fmt=fmt, module="wlog_empty")
    none = empty.wait_for(message("no task is registered"), "the empty app's warning")
    assert none["level"] == "WARNING"
    empty.wait_for(message("store open, claiming"), "the empty worker still starts")
    empty.popen.send_signal(signal.SIGTERM)
    assert empty.exit_code() == 0

    w = env.worker("--queues", "default", fmt=fmt)

    def unserved(kind: str) -> Callable[[dict[str, Any]], bool]:
        return lambda r: r.get("kind") == kind and "will not claim" in r["message"]

    ghost = w.wait_for(unserved("wlog_other.ghost"), "ghost waits in vain")
    hang = w.wait_for(unserved(f"{MODULE}.hang"), "hang waits in an unserved queue")
    assert (ghost["level"], hang["level"]) == ("WARNING", "WARNING")
    assert "no task of that name is registered here" in ghost["message"]
    assert "serves queues default only" in hang["message"]
    assert (ghost["queue"], hang["queue"]) == ("default", "slow")
    assert (str(ghost["count"]), str(hang["count"])) == ("1", "1")
    w.popen.send_signal(signal.SIGTERM)
    assert w.exit_code() == 0
    assert not (env.dir / "never.marker").exists()


def test_json_masks_the_password_of_the_store_url() -> None:
    from flowmill._logging import mask_url

    assert mask_url("postgresql://app:s3cr:et@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert mask_url("postgresql://app@db/x") == "postgresql://app@db/x"
    assert mask_url("sqlite:///a/b.db") == "sqlite:///a/b.db"
    assert mask_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"


# -- a lost lease, in process ---------------------------------------------------------


async def test_a_lost_lease_is_logged_where_it_is_found_and_at_the_attempt_end(
    app: fm.App, caplog: pytest.LogCaptureFixture
) -> None:
    started = asyncio.Event()

    @app.task(retry=fm.Retry(max_attempts=3, backoff=fm.Fixed(timedelta(0))))
    async def stalls(n: int, ctx: fm.Context) -> int:
        if ctx.attempt == 1:
            started.set()
            await ctx.wait_cancelled()  # until the worker finds its lease gone
        return n

    caplog.set_level(logging.INFO, logger="flowmill")
    w = app.worker()
    async with running(w):
        h = await app.submit(stalls, 5)
        await asyncio.wait_for(started.wait(), WAIT_S)
        await reap_elsewhere(app, h.id)
        await w.renew_leases()  # the next renewal finds the lease gone
        assert await h.result(timeout=timedelta(seconds=WAIT_S)) == 5

    def about(r: logging.LogRecord) -> bool:
        return getattr(r, "task_id", None) == h.id

    found = next(r for r in caplog.records if about(r) and "lease lost" in r.getMessage())
    assert found.levelno == logging.WARNING
    ended = [r for r in caplog.records if about(r) and hasattr(r, "outcome")]
    # One record per attempt end. Attempt 2 may be logged first: attempt 1's end waits for
    # its handler to stop, while the retry is claimed as soon as the reaper released it.
    assert sorted((r.attempt, r.outcome, r.levelname) for r in ended) == [  # type: ignore[attr-defined]
        (1, "lease_lost", "WARNING"),
        (2, "completed", "INFO"),
    ]
    assert all(r.kind == stalls.name and r.queue == "default" for r in ended)  # type: ignore[attr-defined]
