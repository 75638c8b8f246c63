"""PostgreSQL restarts mid-run: workers reconnect and nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import signal
from datetime import timedelta
from pathlib import Path

import pytest

import flowmill as fm

from ..conftest import CI
from . import _crash_app, _private_pg
from .test_crash import ledger_count, wait_for, worker_process

pytestmark = pytest.mark.slow


@pytest.fixture
def server() -> object:
    why = _private_pg.unavailable()
    if why is not None:
        if CI:
            pytest.fail(f"the restart test must run in CI: {why}")
        pytest.skip(why)
    with _private_pg.private_pg() as pg:
        yield pg


async def _submit_acknowledged(app: fm.App, n: int) -> list[str]:
    """Submit until the store acknowledges; a submit that raised may or may not be stored."""
    ids: list[str] = []
    for i in range(n):
        while True:
            try:
                ids.append((await app.submit("effect", i)).id)
                break
            except fm.StoreUnavailable:
                await asyncio.sleep(0.05)  # the server is restarting: try again
    return ids


async def test_restart_immediate_loses_nothing_acknowledged(
    server: _private_pg.PrivatePG, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.db"
    _crash_app.init_ledger(str(ledger))
    app = _crash_app.build(server.url, str(ledger))
    await app.open()
    before = await _submit_acknowledged(app, 300)
    with worker_process(server.url, ledger, until_idle=False) as worker:
        wait_for(
            lambda: ledger_count(ledger, "SELECT count(*) FROM effects") >= 50,
            what="work in progress before the restart",
        )
        done_at_restart = ledger_count(ledger, "SELECT count(*) FROM effects")
        await asyncio.to_thread(server.restart_immediate)
        after = await _submit_acknowledged(app, 300)
        acknowledged = before + after
        # Every acknowledged task reaches its end; the worker went on after the restart.
        for task_id in acknowledged:
            await app.handle(task_id, "effect").result(timeout=timedelta(seconds=120))
        assert worker.poll() is None, "the worker must survive the restart"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    assert done_at_restart < len(before), "the restart must land mid-run"
    with_effect = ledger_count(ledger, "SELECT count(DISTINCT task_id) FROM effects")
    assert with_effect == len(set(acknowledged))
    states = {t.state for t in await app.list_tasks(limit=1000)}
    assert states == {fm.State.COMPLETED}
    await app.close()
