"""The dashboard's JSON API on every backend: auth (401s, login cookie, CSRF), reads, actions,
bad input (400 naming the field, 404), a store that is down (503), and `/metrics` text."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

import flowmill as fm
from flowmill._conditions import Signal
from flowmill.web import dashboard_app

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")

TOKEN = "t0ken-for-tests"


@pytest.fixture
async def client(app: fm.App) -> AsyncIterator[httpx.AsyncClient]:
    web = dashboard_app(app, token=TOKEN, manage_app=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=web), base_url="http://testserver"
    ) as c:
        yield c


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


async def logged_in(client: httpx.AsyncClient) -> dict[str, str]:
    """Log in as a browser does; returns the CSRF header to send with POSTs."""
    r = await client.get("/", params={"token": TOKEN})
    assert r.status_code == 303
    assert r.headers["location"].endswith("/")
    assert "token" not in r.headers["location"]
    cookies = r.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("flowmill_session="))
    assert "HttpOnly" in session and "SameSite=strict" in session
    assert TOKEN not in session  # the cookie holds an HMAC of the token, not the token
    return {"X-CSRF-Token": client.cookies["flowmill_csrf"]}


def register(app: fm.App) -> Any:
    @app.task(name="job", retry=fm.Retry(max_attempts=1))
    async def job(n: int) -> int:
        if n < 0:
            raise ValueError("negative")
        return n

    return job


async def run_all(app: fm.App) -> None:
    await app.worker(concurrency=4).run(stop_when_idle=True)


async def test_everything_needs_the_token_but_healthz(client: httpx.AsyncClient) -> None:
    for path in ("/", "/api/overview", "/api/tasks", "/api/tasks/x", "/metrics", "/api/workflows"):
        r = await client.get(path)
        assert r.status_code == 401, path
    assert (await client.get("/healthz")).json() == {"ok": True}
    r = await client.post("/api/queues/default/pause")
    assert r.status_code == 401
    wrong = await client.get("/api/overview", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    bad_login = await client.get("/", params={"token": "nope"})
    assert bad_login.status_code == 401
    assert "flowmill_session" not in bad_login.headers.get("set-cookie", "")


async def test_login_sets_a_cookie_that_opens_pages_and_api(client: httpx.AsyncClient) -> None:
    await logged_in(client)
    page = await client.get("/")
    assert page.status_code == 200
    assert "static/app.js" in page.text
    assert page.headers["x-frame-options"] == "DENY"
    assert (await client.get("/api/overview")).status_code == 200
    assert (await client.get("/static/app.js")).status_code == 200
    client.cookies.set("flowmill_session", "forged")
    assert (await client.get("/api/overview")).status_code == 401


async def test_posts_need_the_csrf_token_and_same_origin(
    app: fm.App, client: httpx.AsyncClient
) -> None:
    csrf = await logged_in(client)
    no_csrf = await client.post("/api/queues/default/pause")
    assert no_csrf.status_code == 403
    assert "CSRF" in no_csrf.json()["error"]
    wrong = await client.post("/api/queues/default/pause", headers={"X-CSRF-Token": "x"})
    assert wrong.status_code == 403
    other_site = await client.post(
        "/api/queues/default/pause", headers={**csrf, "Origin": "http://evil.example"}
    )
    assert other_site.status_code == 403
    assert [q.paused for q in await app.list_queues()] == []
    ok = await client.post(
        "/api/queues/default/pause", headers={**csrf, "Origin": "http://testserver"}
    )
    assert ok.status_code == 200
    assert ok.json() == {"queue": "default", "paused": True, "changed": True}
    assert [(q.name, q.paused) for q in await app.list_queues()] == [("default", True)]
    # A bearer call carries no ambient credential: no CSRF token needed.
    client.cookies.clear()
    r = await client.post("/api/queues/default/resume", headers=bearer())
    assert r.json()["paused"] is False
    assert [q.paused for q in await app.list_queues()] == [False]


async def test_overview_tasks_and_task_page(app: fm.App, client: httpx.AsyncClient) -> None:
    job = register(app)
    ok = await app.submit(job, 2, key="order-7", tags={"team": "blue"})
    bad = await app.submit(job, -1, tags={"team": "red"})
    await run_all(app)
    o = (await client.get("/api/overview", headers=bearer())).json()
    (queue,) = o["queues"]
    assert queue["counts"] == {"completed": 1, "dead_lettered": 1}
    assert o["dead_letters"] == 1
    assert sum(o["throughput"]["completed"]) == 1
    assert sum(o["throughput"]["failed"]) == 1
    assert len(o["throughput"]["completed"]) == 60

    listed = (await client.get("/api/tasks", headers=bearer())).json()
    assert [t["id"] for t in listed["tasks"]] == [ok.id, bad.id]
    assert listed["next"] is None
    first = (await client.get("/api/tasks?limit=1", headers=bearer())).json()
    assert [t["id"] for t in first["tasks"]] == [ok.id]
    second = (
        await client.get(f"/api/tasks?limit=1&after={first['next']}", headers=bearer())
    ).json()
    assert [t["id"] for t in second["tasks"]] == [bad.id]
    by_tag = (await client.get("/api/tasks?tag=team=red", headers=bearer())).json()
    assert [t["id"] for t in by_tag["tasks"]] == [bad.id]
    by_key = (await client.get("/api/tasks?q=order-", headers=bearer())).json()
    assert [t["id"] for t in by_key["tasks"]] == [ok.id]
    by_id = (await client.get(f"/api/tasks?q={bad.id}", headers=bearer())).json()
    assert [t["id"] for t in by_id["tasks"]] == [bad.id]
    dead = await client.get("/api/tasks?state=dead_lettered&queue=default", headers=bearer())
    assert [t["id"] for t in dead.json()["tasks"]] == [bad.id]

    page = (await client.get(f"/api/tasks/{bad.id}", headers=bearer())).json()
    assert page["state"] == "dead_lettered"
    assert page["payload"] == -1
    assert page["error"]["type"] == "ValueError"
    assert "Traceback" in page["error"]["traceback"]
    assert page["can_retry"] is True
    done = (await client.get(f"/api/tasks/{ok.id}", headers=bearer())).json()
    assert (done["result"], done["key"], done["can_retry"]) == (2, "order-7", False)


async def test_replay_many_and_cancel(app: fm.App, client: httpx.AsyncClient) -> None:
    job = register(app)
    dead = [await app.submit(job, -n) for n in (1, 2)]
    await run_all(app)
    waiting = await app.submit(job, 5, delay=timedelta(hours=1))
    csrf = await logged_in(client)
    listed = (await client.get("/api/dead-letters")).json()
    assert [t["id"] for t in listed["tasks"]] == [h.id for h in dead]
    r = await client.post(
        "/api/dead-letters/replay", json={"ids": [dead[0].id, dead[1].id, "nope"]}, headers=csrf
    )
    assert r.status_code == 200
    assert r.json()["results"] == [
        {"id": dead[0].id, "state": "ready"},
        {"id": dead[1].id, "state": "ready"},
        {"id": "nope", "error": "no such task: nope"},
    ]
    again = await client.post(f"/api/tasks/{dead[0].id}/retry", headers=csrf)
    assert again.status_code == 409  # ready now: nothing to retry
    c = await client.post(f"/api/tasks/{waiting.id}/cancel", headers=csrf)
    assert c.json() == {"id": waiting.id, "state": "cancelled"}


async def test_bad_input_is_a_4xx_naming_the_field(client: httpx.AsyncClient) -> None:
    async def get(path: str) -> httpx.Response:
        return await client.get(path, headers=bearer())

    for path, field in [
        ("/api/tasks?state=nope", "state"),
        ("/api/tasks?limit=0", "limit"),
        ("/api/tasks?limit=abc", "limit"),
        ("/api/tasks?queue=%00", "queue"),
        ("/api/tasks?tag==x", "tag"),
        ("/api/tasks?after=" + "a" * 300, "after"),
        ("/api/dead-letters?limit=100000", "limit"),
    ]:
        r = await get(path)
        assert r.status_code == 400, path
        assert r.json()["field"] == field, path
        assert field in r.json()["error"], path
    r = await get("/api/tasks/01-no-such-task")
    assert r.status_code == 404
    assert r.json() == {"error": "no such task: 01-no-such-task"}
    assert (await get("/api/workflows/nope")).status_code == 404
    assert (await get("/api/tasks/nope/children")).status_code == 404
    assert (await get("/api/nope")).status_code == 404
    replay = await client.post("/api/dead-letters/replay", json={"ids": "x"}, headers=bearer())
    assert (replay.status_code, replay.json()["field"]) == (400, "ids")
    deep = await client.post("/api/dead-letters/replay", content=b"[" * 10_000, headers=bearer())
    assert deep.status_code == 400


async def test_children_workflows_and_frames(app: fm.App, client: httpx.AsyncClient) -> None:
    @app.task(name="leaf")
    async def leaf(n: int, ctx: fm.Context) -> int:
        await ctx.append_frame("log", f"leaf {n}".encode())
        return n

    wf = app.workflow("pipe")
    a = wf.add(leaf, 1, name="a")
    wf.add(leaf, 2, name="b", after=[a])
    run = await wf.submit()
    await run_all(app)
    runs = (await client.get("/api/workflows", headers=bearer())).json()["runs"]
    assert [(r["id"], r["state"], r["total"]) for r in runs] == [(run.id, "completed", 2)]
    got = (await client.get(f"/api/workflows/{run.id}", headers=bearer())).json()
    assert [(n["node"], n["depth"], n["upstream"]) for n in got["nodes"]] == [
        ("a", 0, []),
        ("b", 1, ["a"]),
    ]
    task_id = got["nodes"][0]["task_id"]
    async with client.stream("GET", f"/api/tasks/{task_id}/frames", headers=bearer()) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join([chunk async for chunk in r.aiter_text()])
    assert "event: frame" in text and '"text":"leaf 1"' in text
    assert text.rstrip().endswith('data: {"attempt":1}')  # the end event: the attempt ended


async def test_a_suspended_task_shows_its_signals(app: fm.App, client: httpx.AsyncClient) -> None:
    @app.task(name="waits")
    async def waits(n: int) -> None:
        return None

    await app.submit(waits, 1)
    async with app.claimer(worker_id="w", kinds=["waits"]) as c:
        task = await c.claim()
        assert task is not None
        wp = await task.create_waitpoint("k", timedelta(hours=1))
        await task.suspend(Signal("approved", wp))
    # The signals endpoint is served by the dashboard app too, open (its token is the HMAC).
    r = await client.post(f"/signals/{wp.id}", json={"token": wp.token, "name": "approved"})
    assert r.status_code == 202
    page = (await client.get(f"/api/tasks/{task.task_id}", headers=bearer())).json()
    assert page["state"] == "ready"
    assert [s["name"] for s in page["signals"]] == ["approved"]


async def test_a_task_page_lists_its_waitpoints(
    app: fm.App, client: httpx.AsyncClient, clock: fm.ManualClock
) -> None:
    @app.task(name="waits")
    async def waits(n: int) -> None:
        return None

    await app.submit(waits, 1)
    async with app.claimer(worker_id="w", kinds=["waits"]) as c:
        task = await c.claim()
        assert task is not None
        approval = await task.create_waitpoint("approval", timedelta(hours=1))
        await clock.advance(timedelta(seconds=1))  # listed oldest first
        other = await task.create_waitpoint("other", timedelta(minutes=1))
        await task.suspend(Signal("approved", approval))
    made = (await client.get(f"/api/tasks/{task.task_id}", headers=bearer())).json()
    assert [(w["key"], w["state"], w["signals"]) for w in made["waitpoints"]] == [
        ("approval", "pending", []),
        ("other", "pending", []),
    ]
    assert made["waitpoints_more"] is False
    await clock.advance(timedelta(seconds=30))
    r = await client.post(
        f"/signals/{approval.id}",
        json={"token": approval.token, "name": "approved", "payload": {"by": "ann"}},
    )
    assert r.status_code == 202
    await clock.advance(timedelta(seconds=31))  # the other one is past its due time now
    page = (await client.get(f"/api/tasks/{task.task_id}", headers=bearer())).json()
    first, second = page["waitpoints"]
    assert (first["id"], first["state"], first["closed_reason"]) == (
        approval.id,
        "delivered",
        "resumed",
    )
    assert [(s["name"], s["payload"]) for s in first["signals"]] == [("approved", {"by": "ann"})]
    assert first["delivered_at_ms"] == first["created_at_ms"] + 31_000
    assert first["expires_at_ms"] == first["created_at_ms"] + 3_600_000
    assert (second["id"], second["state"], second["delivered_at_ms"]) == (other.id, "expired", None)


async def test_metrics_text_and_the_open_option(app: fm.App) -> None:
    job = register(app)
    await app.submit(job, 1, queue="mail")
    await app.pause_queue("mail")
    web = dashboard_app(app, token=TOKEN, manage_app=False)
    transport = httpx.ASGITransport(app=web)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        assert (await c.get("/metrics")).status_code == 401
        text = (await c.get("/metrics", headers=bearer())).text
    assert 'flowmill_tasks{queue="mail",state="ready"} 1' in text
    assert 'flowmill_tasks{queue="mail",state="completed"} 0' in text
    assert 'flowmill_queue_paused{queue="mail"} 1' in text
    assert "flowmill_workers_alive 0" in text
    assert "flowmill_dead_letters 0" in text
    assert "# TYPE flowmill_queue_oldest_ready_seconds gauge" in text
    open_web = dashboard_app(app, token=TOKEN, metrics_open=True, manage_app=False)
    transport = httpx.ASGITransport(app=open_web)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert (await c.get("/api/overview")).status_code == 401  # only /metrics is open


async def test_a_store_that_is_down_is_a_503_with_one_line(tmp_path: Any) -> None:
    down = fm.App(f"sqlite:///{tmp_path}/missing-dir/x.db")
    web = dashboard_app(down, token=TOKEN, manage_app=False)
    transport = httpx.ASGITransport(app=web)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        for path in ("/api/overview", "/api/tasks", "/api/tasks/x", "/metrics"):
            r = await c.get(path, headers=bearer())
            assert r.status_code == 503, path
            error = r.json()["error"]
            assert error.startswith("store unavailable: ") and "\n" not in error
    await down.close()


def test_the_token_comes_from_the_environment_or_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flowmill.web._dashboard import login_url, resolve_token

    monkeypatch.setenv("FLOWMILL_TOKEN", "from-env")
    assert resolve_token(None) == ("from-env", False)
    assert resolve_token("given") == ("given", False)
    monkeypatch.delenv("FLOWMILL_TOKEN")
    made, generated = resolve_token(None)
    assert generated and len(made) >= 24
    assert login_url("127.0.0.1", 8765, "a b") == "http://127.0.0.1:8765/?token=a+b"
