"""A small HTTP endpoint for signals: `POST /signals/{waitpoint_id}` resumes waiting tasks.

Mount `signals_app(app)` in any ASGI server, or run `flowmill serve module:app` (bound to
127.0.0.1 unless told otherwise). The waitpoint's HMAC token is the credential: in the JSON
body (`{"token": ..., "name": ..., "payload": ..., "idempotency_key": ...}`) or in an
`X-Flowmill-Token` header.

Whatever a client sends, a malformed request gets a 4xx answer with a JSON body saying what
was wrong: the body is read up to `MAX_BODY_BYTES` (chunked or not), JSON nested deeper than
`MAX_JSON_DEPTH` is refused before it is decoded, and ids, names and tokens must be text a
store can hold.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import ConfigurationError, PayloadTooLarge
from ..store.contract.signals import DeliverStatus

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    from .._app import App

MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_JSON_DEPTH = 64
MAX_ID_CHARS = 200  # a waitpoint id is `wp-` and 24 hex digits; anything far longer is junk


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    token: str | None = None
    payload: Any = None
    idempotency_key: str | None = None


# Rejection reasons -> HTTP status: the caller learns what to fix, not more.
_REJECTED_STATUS = {
    "unknown waitpoint": 404,
    "waitpoint expired": 410,
    "malformed token": 403,
    "token does not match this waitpoint": 403,
    "token signed with an unknown key": 403,
}

_JSON_STRUCTURE = re.compile(rb'["\\\[\]{}]')
_JSON_TYPES = ("application/json", "text/json")


class _Refused(Exception):
    """A malformed request: answered with `status` and a JSON `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_depth_exceeds(raw: bytes, limit: int) -> bool:
    """Whether JSON text nests arrays/objects deeper than `limit` (brackets in strings
    do not count). Cheap: text with at most `limit` brackets is not scanned at all."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth, in_string, escaped_at = 0, False, -1
    for m in _JSON_STRUCTURE.finditer(raw):
        at, c = m.start(), m.group()
        if in_string:
            if at == escaped_at:  # the character right after a backslash
                continue
            if c == b"\\":
                escaped_at = at + 1
            elif c == b'"':
                in_string = False
            continue
        if c == b'"':
            in_string = True
        elif c in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif c in (b"]", b"}"):
            depth -= 1
    return False


def _text_ok(value: str) -> bool:
    """Printable text a store column can hold (no NUL or other control characters)."""
    return value.isprintable()


async def _read_body(request: Request) -> bytes:
    """The body, refused as soon as it is known to exceed `MAX_BODY_BYTES`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isascii() or not declared.strip().isdigit():
            raise _Refused(400, "bad Content-Length header")
        if int(declared) > MAX_BODY_BYTES:
            raise _Refused(413, f"request body too large (limit {MAX_BODY_BYTES} bytes)")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():  # chunked bodies have no Content-Length to trust
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _Refused(413, f"request body too large (limit {MAX_BODY_BYTES} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def _content_type_ok(request: Request) -> bool:
    """JSON, or no content type at all (a bare `curl --data-binary`)."""
    given = request.headers.get("content-type")
    if given is None or not given.strip():
        return True
    media = given.split(";", 1)[0].strip().lower()
    return media in _JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


def _parse(raw: bytes) -> _Body:
    if json_depth_exceeds(raw, MAX_JSON_DEPTH):
        raise _Refused(400, f"bad request body: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        body = msgspec.json.decode(raw, type=_Body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _Refused(400, f"bad request body: {exc}") from None
    for field, value in (("name", body.name), ("idempotency_key", body.idempotency_key)):
        if value is not None and not _text_ok(value):
            raise _Refused(400, f"bad request body: {field} holds control characters")
    return body


def _token(body: _Body, request: Request) -> str:
    token = body.token or request.headers.get("x-flowmill-token")
    if not token:
        raise _Refused(401, "missing token")
    if not token.isascii() or not _text_ok(token):
        # Tokens are ASCII (key id, expiry, base64url MAC): anything else is forged.
        raise _Refused(403, "malformed token")
    return token


def need_starlette() -> None:
    """Fail with the `pip install` to run when the web extra is missing."""
    try:
        import starlette  # noqa: F401
    except ImportError as exc:  # the web parts are an optional extra
        raise ConfigurationError(
            f"the web endpoints need starlette: pip install 'flowmill[dashboard]' ({exc})"
        ) from exc


def deliver_endpoint(app: App) -> Callable[[Request], Awaitable[JSONResponse]]:
    """The `POST /signals/{waitpoint_id}` endpoint (shared by `signals_app` and the dashboard)."""
    from starlette.responses import JSONResponse

    async def deliver(request: Request) -> JSONResponse:
        try:
            if not _content_type_ok(request):
                raise _Refused(415, "send the body as application/json")
            body = _parse(await _read_body(request))
            token = _token(body, request)
            waitpoint_id = request.path_params["waitpoint_id"]
            if len(waitpoint_id) > MAX_ID_CHARS or not waitpoint_id.isascii():
                raise _Refused(404, "unknown waitpoint")
            if not _text_ok(waitpoint_id):
                raise _Refused(404, "unknown waitpoint")
            out = await app.deliver_signal(
                waitpoint_id, token, body.name, body.payload, body.idempotency_key
            )
        except _Refused as refused:
            return JSONResponse({"error": refused.message}, status_code=refused.status)
        except PayloadTooLarge as exc:
            return JSONResponse({"error": str(exc)}, status_code=413)
        except ConfigurationError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if out.status is DeliverStatus.REJECTED:
            code = _REJECTED_STATUS.get(out.reason or "", 409)
            return JSONResponse({"status": "rejected", "reason": out.reason}, status_code=code)
        if out.status is DeliverStatus.CLOSED:  # a one-shot waitpoint whose wait is over
            return JSONResponse({"status": "closed", "reason": out.reason}, status_code=409)
        code = 202 if out.status is DeliverStatus.ACCEPTED else 200
        return JSONResponse({"status": out.status.value, "resumed": out.resumed}, status_code=code)

    return deliver


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own answers (unknown path 404, wrong method 405) as JSON too."""
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse

    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def signals_app(app: App) -> Starlette:
    """An ASGI app with `POST /signals/{waitpoint_id}` and `GET /healthz`."""
    need_starlette()
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    deliver = deliver_endpoint(app)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await app.open()
        try:
            yield
        finally:
            await app.close()

    web = Starlette(
        routes=[
            Route("/signals/{waitpoint_id}", deliver, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    # A path with a trailing slash (or an encoded one, `/signals/wp%2F`) is not a
    # waitpoint: answer it with the JSON 404 instead of Starlette's empty-bodied 307, which
    # most HTTP clients do not follow for a POST.
    web.router.redirect_slashes = False
    return web
