"""Waitpoints, signals and suspend/resume through handlers, claimers and HTTP."""

from __future__ import annotations

import asyncio
import collections
from datetime import timedelta
from typing import Any

import msgspec
import pytest

import flowmill as fm
from flowmill._conditions import Count, Signal
from flowmill._signals import Waitpoint
from flowmill.store.contract.signals import DeliverOutcome, DeliverStatus, OnTimeout, SuspendStatus

from ..conftest import eventually
from .test_worker import running

WAIT = timedelta(seconds=20)


def approval_task(
    app: fm.App,
    seen: list[Any],
    *,
    timeout: timedelta | None = None,
    on_timeout: OnTimeout = OnTimeout.FAIL,
) -> tuple[fm.TaskDef, dict[str, Waitpoint]]:
    waitpoints: dict[str, Waitpoint] = {}

    @app.task(name="approve", retry=fm.Retry(max_attempts=2))
    async def approve(doc: str, ctx: fm.Context) -> str:
        resumed = await ctx.resume_signals()
        if resumed:
            seen.append([(s.name, s.payload) for s in resumed])
            return f"{doc}: {resumed[0].name}"
        wp = await ctx.create_waitpoint("approval", expires_in=timedelta(days=2))
        waitpoints[ctx.task_id] = wp
        await ctx.suspend(
            Signal("approved", wp) | Signal("rejected", wp), timeout=timeout, on_timeout=on_timeout
        )
        return "resumed without suspending"  # only when signals were already there

    return approve, waitpoints


async def _waitpoint(made_by: dict[str, Waitpoint], task_id: str) -> Waitpoint:
    async def made() -> bool:
        return task_id in made_by

    await eventually(made, what="the waitpoint")
    return made_by[task_id]


async def test_suspend_then_signal_resumes_the_handler(app: fm.App) -> None:
    seen: list[Any] = []
    approve, made = approval_task(app, seen)
    async with running(app.worker()):
        h = await app.submit(approve, "invoice-7")
        wp = await _waitpoint(made, h.id)

        async def suspended() -> bool:
            return (await app.get(h.id)).state is fm.State.SUSPENDED

        await eventually(suspended, what="suspension")
        info = await app.get(h.id)
        assert info.attempts == 0  # the attempt was given back while it waits
        out = await app.deliver_signal(wp.id, wp.token, "approved", payload={"by": "ana"})
        assert out.status is DeliverStatus.ACCEPTED
        assert out.resumed
        assert await h.result(timeout=WAIT) == "invoice-7: approved"
        again = await app.deliver_signal(wp.id, wp.token, "approved")
        assert (again.status, again.reason) == (
            DeliverStatus.REJECTED,
            "task already ended (completed)",
        )
    assert seen == [[("approved", {"by": "ana"})]]


async def _is(app: fm.App, task_id: str, state: fm.State) -> bool:
    return (await app.get(task_id)).state is state


async def test_bad_tokens_are_rejected_and_change_nothing(app: fm.App) -> None:
    seen: list[Any] = []
    approve, made = approval_task(app, seen)
    async with running(app.worker()):
        a = await app.submit(approve, "a")
        b = await app.submit(approve, "b")
        wa, wb = await _waitpoint(made, a.id), await _waitpoint(made, b.id)
        kid, expiry, mac = wa.token.split(".")
        cases = {
            "forged": (wa.id, f"{kid}.{expiry}.{'x' * len(mac)}"),
            "other waitpoint's token": (wa.id, wb.token),
            "malformed": (wa.id, "nonsense"),
            "unknown waitpoint": ("wp-nope", wa.token),
        }
        for what, (wp_id, token) in cases.items():
            out = await app.deliver_signal(wp_id, token, "approved")
            assert out.status is DeliverStatus.REJECTED, what
        with pytest.raises(fm.PayloadTooLarge):
            await app.deliver_signal(wa.id, wa.token, "approved", payload="x" * 2_000_000)
        with pytest.raises(fm.ConfigurationError):
            await app.deliver_signal(wa.id, wa.token, "")
        for h in (a, b):
            # The waitpoint exists before its task suspends: wait for the suspension, then
            # see that no rejected delivery resumed it (`seen` stays empty).
            await eventually(
                lambda h=h: _is(app, h.id, fm.State.SUSPENDED), what=f"{h.id} to suspend"
            )
    assert seen == []


async def test_signal_before_suspend_is_buffered(app: fm.App) -> None:
    async with app.claimer(worker_id="w", kinds=["buffered"]) as c:

        @app.task(name="buffered")
        async def buffered(n: int) -> None:
            return None

        await app.submit(buffered, 1)
        task = await c.claim()
        assert task is not None
        wp = await task.create_waitpoint("k", timedelta(hours=1))
        out = await app.deliver_signal(wp.id, wp.token, "go", idempotency_key="once")
        assert (out.status, out.resumed) == (DeliverStatus.ACCEPTED, False)
        dup = await app.deliver_signal(wp.id, wp.token, "go", idempotency_key="once")
        assert dup.status is DeliverStatus.DUPLICATE
        status = await task.suspend(Signal("go", wp))
        assert status is SuspendStatus.ALREADY_SATISFIED  # the lease is kept
        assert [s.name for s in await task.resume_signals()] == ["go"]
        await task.complete(None)


async def test_count_condition_and_idempotency(app: fm.App) -> None:
    @app.task(name="votes")
    async def votes(n: int) -> None:
        return None

    h = await app.submit(votes, 1)
    async with app.claimer(worker_id="w", kinds=["votes"]) as c:
        task = await c.claim()
        assert task is not None
        wp = await task.create_waitpoint("ballot", timedelta(hours=1))
        assert await task.suspend(Count(3, Signal("yes", wp))) is SuspendStatus.SUSPENDED
        results = [
            await app.deliver_signal(wp.id, wp.token, "yes", idempotency_key=f"v{i}")
            for i in (1, 2, 2, 3)
        ]
        assert [r.status for r in results] == [
            DeliverStatus.ACCEPTED,
            DeliverStatus.ACCEPTED,
            DeliverStatus.DUPLICATE,
            DeliverStatus.ACCEPTED,
        ]
        assert [r.resumed for r in results] == [False, False, False, True]
    assert (await app.get(h.id)).state is fm.State.READY


@pytest.mark.parametrize(
    ("behaviour", "state"),
    [
        (OnTimeout.FAIL, fm.State.FAILED),
        (OnTimeout.CANCEL, fm.State.CANCELLED),
        (OnTimeout.EXPIRE, fm.State.EXPIRED),
        (OnTimeout.RESUME, fm.State.READY),
    ],
)
async def test_each_timeout_behaviour(
    app: fm.App, clock: fm.ManualClock, behaviour: OnTimeout, state: fm.State
) -> None:
    @app.task(name="wait")
    async def wait(n: int) -> None:
        return None

    h = await app.submit(wait, 1)
    async with app.claimer(worker_id="w", kinds=["wait"]) as c:
        task = await c.claim()
        assert task is not None
        wp = await task.create_waitpoint("k", timedelta(days=1))
        await task.suspend(Signal("never", wp), timeout=timedelta(minutes=10), on_timeout=behaviour)
    maintenance = app.worker(queues=["nothing"])
    await clock.advance(timedelta(minutes=9))
    await maintenance.maintain()
    assert (await app.get(h.id)).state is fm.State.SUSPENDED
    await clock.advance(timedelta(minutes=2))
    await maintenance.maintain()
    assert (await app.get(h.id)).state is state


async def test_a_thousand_waitpoints_signalled_three_times_resume_once(app: fm.App) -> None:
    @app.task(name="many")
    async def many(n: int) -> None:
        return None

    n = 1000
    await app.submit_many(many, range(n))
    async with app.claimer(worker_id="w", kinds=["many"]) as c:
        tasks = await c.claim_many(n)
        assert len(tasks) == n
        wps = await asyncio.gather(*(t.create_waitpoint("k", timedelta(hours=1)) for t in tasks))
        await asyncio.gather(
            *(t.suspend(Signal("go", wp)) for t, wp in zip(tasks, wps, strict=True))
        )
        # The three deliveries of a waitpoint race each other; at most 100 waitpoints at a
        # time, so a loaded machine does not time out waiting for one of 10 pooled connections.
        gate = asyncio.Semaphore(100)

        async def three(wp: Waitpoint) -> list[DeliverOutcome]:
            async with gate:
                return list(
                    await asyncio.gather(
                        *(app.deliver_signal(wp.id, wp.token, "go") for _ in range(3))
                    )
                )

        outs = [o for group in await asyncio.gather(*(three(wp) for wp in wps)) for o in group]
    assert sum(o.resumed for o in outs) == n
    # One-shot waitpoints: the signal that resumed each is accepted, the two after it closed.
    statuses = collections.Counter(o.status for o in outs)
    assert statuses == {DeliverStatus.ACCEPTED: n, DeliverStatus.CLOSED: 2 * n}
    counts = {c.state: c.count for c in await app.status()}
    assert counts == {fm.State.READY: n}


async def test_tokens_survive_a_restart(db_url: str) -> None:
    first = fm.App(db_url)

    @first.task(name="persist")
    async def persist(n: int) -> None:
        return None

    await first.submit(persist, 1)
    async with first.claimer(worker_id="w", kinds=["persist"]) as c:
        task = await c.claim()
        assert task is not None
        wp = await task.create_waitpoint("k", timedelta(hours=1))
        await task.suspend(Signal("go", wp))
    await first.close()
    second = fm.App(db_url)  # a new process: the secret comes from the database
    out = await second.deliver_signal(wp.id, wp.token, "go")
    assert (out.status, out.resumed) == (DeliverStatus.ACCEPTED, True)
    await second.close()


async def test_frames_are_ordered_and_tailable_live(app: fm.App) -> None:
    release = asyncio.Event()

    @app.task(name="stream")
    async def stream(n: int, ctx: fm.Context) -> int:
        await asyncio.gather(
            *(ctx.append_frame("token", f"t{i}".encode(), {"i": i}) for i in range(n))
        )
        await release.wait()
        with pytest.raises(fm.FrameTooLarge):
            await ctx.append_frame("token", b"x" * (64 * 1024 + 1))
        return n

    async with running(app.worker()):
        h = await app.submit(stream, 50)
        seen: list[int] = []

        async def tail() -> None:
            async for f in app.frames(h.id, follow=True):
                seen.append(f.seq)
                if len(seen) == 50:
                    release.set()

        await asyncio.wait_for(tail(), 20)  # ends on its own when the attempt ends
        assert await h.result(timeout=WAIT) == 50
    assert seen == list(range(1, 51))
    frames = [f async for f in app.frames(h.id, follow=False)]
    assert {f.metadata["i"] for f in frames} == set(range(50))
    assert {f.payload for f in frames} == {f"t{i}".encode() for i in range(50)}


async def suspended_web_waitpoint(app: fm.App) -> Waitpoint:
    """A task suspended on a fresh waitpoint's "approved" signal; returns the waitpoint."""

    @app.task(name="web")
    async def web(n: int) -> None:
        return None

    await app.submit(web, 1)
    async with app.claimer(worker_id="w", kinds=["web"]) as c:
        task = await c.claim()
        assert task is not None
        wp = await task.create_waitpoint("k", timedelta(hours=1))
        await task.suspend(Signal("approved", wp))
    return wp


async def asgi_post(asgi: Any, path: str, body: bytes) -> tuple[int, Any]:
    """POST `body` to `path` of an ASGI app in-process; the status and the decoded JSON."""
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [],
        "query_string": b"",
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "root_path": "",
    }
    await asgi(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body_out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, msgspec.json.decode(body_out)


async def test_http_endpoint(app: fm.App) -> None:
    from flowmill.web import signals_app

    wp = await suspended_web_waitpoint(app)
    asgi = signals_app(app)

    async def post(path: str, body: bytes) -> tuple[int, Any]:
        return await asgi_post(asgi, path, body)

    bad = await post(
        f"/signals/{wp.id}", msgspec.json.encode({"name": "approved", "token": "x.y.z"})
    )
    assert bad == (403, {"status": "rejected", "reason": "token does not match this waitpoint"})
    assert (await post(f"/signals/{wp.id}", b"{not json"))[0] == 400
    assert (
        await post(
            "/signals/wp-missing", msgspec.json.encode({"name": "approved", "token": wp.token})
        )
    )[0] == 404
    ok = await post(
        f"/signals/{wp.id}", msgspec.json.encode({"name": "approved", "token": wp.token})
    )
    assert ok == (202, {"status": "accepted", "resumed": True})


async def test_a_cancel_while_running_is_not_lost_when_the_handler_suspends(app: fm.App) -> None:
    asked = asyncio.Event()
    go = asyncio.Event()

    @app.task(name="waits")
    async def waits(_: None, ctx: fm.Context) -> str:
        wp = await ctx.create_waitpoint("w", expires_in=timedelta(hours=1))
        asked.set()
        await go.wait()  # the operator cancels here, before the suspend
        await ctx.suspend(Signal("go", wp))
        return "not reached"

    async with running(app.worker()):
        h = await app.submit(waits)
        await asked.wait()
        assert await app.cancel(h.id) is fm.State.RUNNING  # a running task is asked to stop
        go.set()
        with pytest.raises(fm.TaskFailed, match="cancelled"):
            await h.result(timeout=WAIT)
    assert (await app.get(h.id)).state is fm.State.CANCELLED


async def test_a_claimed_task_asked_to_cancel_is_cancelled_by_suspend(app: fm.App) -> None:
    @app.task(name="held")
    async def held(_: None) -> None:
        return None

    h = await app.submit(held)
    async with app.claimer(worker_id="w", queues=["default"]) as c:
        task = await c.claim()
        assert task is not None
        wp = await task.create_waitpoint("w", expires_in=timedelta(hours=1))
        await app.cancel(h.id)
        assert await task.suspend(Signal("go", wp)) is SuspendStatus.CANCEL_REQUESTED
        with pytest.raises(fm.TaskAlreadyFinished):
            await task.complete(None)
    assert (await app.get(h.id)).state is fm.State.CANCELLED
