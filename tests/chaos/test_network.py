"""The network misbehaves: acknowledgements lost on the way back; junk HTTP requests."""

from __future__ import annotations

import random
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed

import flowmill as fm
from flowmill.store.contract.tasks import TasksList
from tests.crash import _crash_app
from tests.engine.test_web import JunkRequest, junk_requests, live_endpoint, send

from . import _ledger
from ._proxy import AckDroppingProxy

pytestmark = pytest.mark.chaos


@pytest.mark.parametrize("n", [150, pytest.param(1000, marks=pytest.mark.long)])
async def test_lost_acks_with_dedup_keys_make_exactly_one_task(
    db_url: str, tmp_path: Path, rng: random.Random, seed: int, n: int
) -> None:
    parts = urlsplit(db_url)
    if parts.hostname is None:
        pytest.skip(f"{parts.scheme} is embedded: no connection to lose an answer on")
    book = _ledger.start("lost_acks", db_url, seed)
    direct = fm.App(db_url)
    await direct.open()  # the schema exists before the proxy starts dropping
    async with AckDroppingProxy((parts.hostname, parts.port or 5432), rng, 0.15) as proxy:
        netloc = f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username else None
        via = urlunsplit(parts._replace(netloc=netloc or f"127.0.0.1:{proxy.port}"))
        app = _crash_app.build(via, str(tmp_path / "unused-ledger.db"))
        await app.open()
        proxy.armed = True
        failures = 0
        for i in range(n):
            while True:
                try:
                    await app.submit("effect", i, key=f"k{i}")
                    break
                except fm.StoreError:  # StoreUnavailable and its kin: the answer was lost
                    failures += 1
        proxy.armed = False
        await app.close()
    rows = await direct.store.tasks_list(TasksList(limit=n * 2))
    await direct.close()
    keys = [r.dedup_key for r in rows]
    book.tasks, book.kills = n, proxy.dropped
    book.extra = {"submit_errors": failures}
    book.duplicate_runs = len(keys) - len(set(keys))  # here: tasks stored twice
    book.lost = n - len(set(keys))
    assert proxy.dropped > 0, "the proxy should have lost some answers"
    assert sorted(keys) == sorted(f"k{i}" for i in range(n))


@pytest.mark.parametrize("examples", [200, pytest.param(1500, marks=pytest.mark.long)])
def test_junk_http_never_gets_a_5xx(db_url: str, seed: int, examples: int) -> None:
    book = _ledger.start("junk_http", db_url, seed)
    statuses: dict[str, int] = {}
    with live_endpoint(db_url) as (client, target):

        @hypothesis_seed(seed)
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(junk_requests(target))
        def check(req: JunkRequest) -> None:
            resp = send(client, req)
            band = f"http_{resp.status_code // 100}xx"
            statuses[band] = statuses.get(band, 0) + 1
            assert resp.status_code < 500, (req, resp.status_code, resp.text)

        check()
    book.tasks = sum(statuses.values())
    book.extra = statuses
    assert statuses.get("http_5xx", 0) == 0
