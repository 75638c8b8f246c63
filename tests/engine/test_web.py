"""The signals endpoint under junk: every malformed request gets a 4xx with a JSON body.

`junk_requests()` is the hypothesis strategy the chaos tier reuses (tests/chaos/).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import quote

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flowmill as fm
from flowmill._conditions import Signal
from flowmill.web import MAX_BODY_BYTES, MAX_JSON_DEPTH, json_depth_exceeds, signals_app

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")


@dataclass(frozen=True)
class Target:
    """A live waitpoint to aim junk at (and a real token, so some requests get far)."""

    waitpoint_id: str
    token: str


@dataclass(frozen=True)
class JunkRequest:
    method: str
    path: str
    headers: dict[str, bytes]
    body: bytes | list[bytes]  # a list is sent chunked, without a Content-Length


T = TypeVar("T")


class Client:
    """A synchronous HTTP client of an ASGI app whose event loop runs in a thread of its own
    (hypothesis drives plain functions; the app's store lives on that loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, asgi: Any) -> None:
        self.loop = loop
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=asgi), base_url="http://testserver"
        )

    def call(self, job: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(job, self.loop).result(timeout=60)  # type: ignore[arg-type]

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, bytes] | None = None,
        content: bytes | list[bytes] = b"",
    ) -> Any:
        async def chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
            for part in parts:
                yield part

        body: Any = chunks(content) if isinstance(content, list) else content
        return self.call(self.http.request(method, path, headers=headers, content=body))

    def post(self, path: str, content: bytes) -> Any:
        return self.request("POST", path, content=content)


@contextlib.contextmanager
def live_endpoint(url: str) -> Iterator[tuple[Client, Target]]:
    """`signals_app` of a fresh app with one suspended task waiting on a waitpoint."""
    app = fm.App(url)

    @app.task(name="waits")
    async def waits(n: int) -> None:
        return None

    async def suspended_task() -> Target:
        await app.open()
        await app.submit(waits, 1)
        async with app.claimer(worker_id="w", kinds=["waits"]) as c:
            task = await c.claim()
            assert task is not None
            wp = await task.create_waitpoint("k", timedelta(hours=1))
            await task.suspend(Signal("approved", wp))
        return Target(wp.id, wp.token)

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    client = Client(loop, signals_app(app))
    try:
        yield client, client.call(suspended_task())
    finally:
        client.call(client.http.aclose())
        client.call(app.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


def send(client: Client, req: JunkRequest) -> Any:
    return client.request(req.method, req.path, req.headers, req.body)


_json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_text = st.text(max_size=40) | st.sampled_from(["", "\x00", "é", "approved", "\u2028", "a" * 300])


def junk_requests(target: Target) -> st.SearchStrategy[JunkRequest]:
    """Requests a careless or hostile client might send to the signals endpoint."""
    waitpoint = st.sampled_from([target.waitpoint_id, "wp-missing", "", "%00", "é"]) | st.text(
        max_size=30
    )
    path = st.one_of(
        waitpoint.map(lambda w: "/signals/" + quote(w, safe="%")),
        st.sampled_from(["/", "/healthz", "/signals", "/signals/", "/nope", "/signals/a/b"]),
    )
    token = st.sampled_from([target.token, "x.y.z", "é.1.2", "ключ.5.mac"]) | _text
    fields = st.fixed_dictionaries(
        {},
        optional={
            "name": st.sampled_from(["approved", "rejected"]) | _text | _json,
            "token": token | _json,
            "payload": _json,
            "idempotency_key": _text | _json,
            "extra": _json,
        },
    )
    depth = st.integers(MAX_JSON_DEPTH - 2, 20_000)
    body = st.one_of(
        fields.map(msgspec.json.encode),
        _json.map(msgspec.json.encode),  # a list, a number, a string: not an object
        st.binary(max_size=200),
        depth.map(lambda n: b"[" * n + b"]" * n),
        depth.map(lambda n: b'{"name": "approved", "payload": ' + b"[" * n + b"]" * n + b"}"),
        depth.map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        fields.map(msgspec.json.encode).map(lambda b: [b[: len(b) // 2], b[len(b) // 2 :]]),
    )
    header_value = st.binary(max_size=30).filter(lambda b: b"\r" not in b and b"\n" not in b)
    headers = st.fixed_dictionaries(
        {},
        optional={
            "content-type": st.sampled_from(
                [b"application/json", b"text/plain", b"application/x-www-form-urlencoded", b""]
            )
            | header_value,
            "x-flowmill-token": st.sampled_from([target.token.encode(), b"\xc3\xa9.1.2", b"\xff"])
            | header_value,
        },
    )
    method = st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE", "PATCH"])
    return st.builds(JunkRequest, method, path, headers, body)


def assert_answered_as_json(resp: Any) -> None:
    assert resp.status_code < 500, (resp.status_code, resp.text)
    decoded = msgspec.json.decode(resp.content)
    assert isinstance(decoded, dict)
    if resp.status_code >= 400:
        assert decoded.get("error") or decoded.get("reason"), decoded


def test_fuzzed_requests_never_get_a_5xx(db_url: str) -> None:
    with live_endpoint(db_url) as (client, target):

        @settings(
            max_examples=300,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(junk_requests(target))
        def check(req: JunkRequest) -> None:
            assert_answered_as_json(send(client, req))

        check()


def test_each_kind_of_junk_gets_its_4xx(db_url: str) -> None:
    with live_endpoint(db_url) as (client, target):
        path = f"/signals/{target.waitpoint_id}"

        def post(body: bytes | list[bytes], **headers: str | bytes) -> tuple[int, Any]:
            given = {k: v if isinstance(v, bytes) else v.encode() for k, v in headers.items()}
            resp = send(client, JunkRequest("POST", path, given, body))
            assert_answered_as_json(resp)
            return resp.status_code, msgspec.json.decode(resp.content)

        deep = b"[" * 100_000 + b"]" * 100_000
        assert post(b'{"name": "approved", "payload": ' + deep + b"}")[0] == 400
        assert post(deep)[0] == 400
        # Too large, with and without a Content-Length (chunked: refused while reading).
        big = b'{"name": "approved", "payload": "' + b"x" * MAX_BODY_BYTES + b'"}'
        assert post(big)[0] == 413
        assert post([big[:1000], big[1000:]])[0] == 413
        name = {"name": "approved"}
        assert post(msgspec.json.encode({**name, "token": "é.1.2"}))[0] == 403
        assert post(msgspec.json.encode(name), **{"x-flowmill-token": b"\xc3\xa9.1.2"})[0] == 403
        assert post(msgspec.json.encode(name), **{"x-flowmill-token": b"\xff"})[0] == 403
        assert post(msgspec.json.encode(name))[0] == 401
        assert post(b"[1, 2]")[0] == 400
        assert post(b'"approved"')[0] == 400
        assert post(msgspec.json.encode({**name, "token": target.token, "color": 1}))[0] == 400
        assert post(msgspec.json.encode({**name, "token": 7}))[0] == 400
        assert post(msgspec.json.encode({"name": "a\x00b", "token": target.token}))[0] == 400
        form = msgspec.json.encode({**name, "token": target.token})
        assert post(form, **{"content-type": "text/plain"})[0] == 415
        assert post(b"\xff\xfe")[0] == 400
        for method, where, code in (("GET", path, 405), ("POST", "/nope", 404)):
            resp = client.request(method, where)
            assert resp.status_code == code
            assert msgspec.json.decode(resp.content)["error"]
        resp = client.post("/signals/%00", content=form)
        assert (resp.status_code, resp.json()["error"]) == (404, "unknown waitpoint")
        for slashed in (f"{path}/", f"{path}%2F", "/signals/0%2F"):  # no empty-bodied 307
            resp = client.post(slashed, content=form)
            assert resp.status_code == 404, (slashed, resp.status_code)
            assert msgspec.json.decode(resp.content)["error"]
        # After all that junk the real thing still works.
        ok = post(form, **{"content-type": "application/json; charset=utf-8"})
        assert ok == (202, {"status": "accepted", "resumed": True})


@pytest.mark.parametrize(
    ("raw", "deeper"),
    [
        (b"[[[]]]", False),
        (b"[" * 65 + b"]" * 65, True),
        (b'["' + b"[" * 200 + b'"]', False),  # brackets inside a string do not nest
        (b'["\\"' + b"[" * 200 + b'"]', False),  # nor after an escaped quote
        (b'["\\\\"' + b"[" * 65 + b"]" * 65 + b"]", True),  # an escaped backslash ends it
        (b'{"a":' * 65 + b"1" + b"}" * 65, True),
    ],
)
def test_json_depth(raw: bytes, deeper: bool) -> None:
    assert json_depth_exceeds(raw, 64) is deeper


@given(st.recursive(st.integers(), lambda i: st.lists(i, max_size=3), max_leaves=20))
def test_json_depth_agrees_with_the_structure(value: Any) -> None:
    def depth(v: Any) -> int:
        return 1 + max(map(depth, v), default=0) if isinstance(v, list) else 0

    raw = msgspec.json.encode(value)
    assert json_depth_exceeds(raw, 3) is (depth(value) > 3)
