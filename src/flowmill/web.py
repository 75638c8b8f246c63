"""A small HTTP endpoint for signals: `POST /signals/{waitpoint_id}` resumes waiting tasks.

Mount `signals_app(app)` in any ASGI server, or run `flowmill serve module:app` (bound to
127.0.0.1 unless told otherwise). The waitpoint's HMAC token is the credential: in the JSON
body (`{"token": ..., "name": ..., "payload": ..., "idempotency_key": ...}`) or in an
`X-Flowmill-Token` header.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec

from .errors import ConfigurationError, PayloadTooLarge
from .store.contract.signals import DeliverStatus

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    from ._app import App

MAX_BODY_BYTES = 2 * 1024 * 1024


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


def signals_app(app: App) -> Starlette:
    """An ASGI app with `POST /signals/{waitpoint_id}` and `GET /healthz`."""
    try:
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route
    except ImportError as exc:  # the web parts are an optional extra
        raise ConfigurationError(
            f"the signals endpoint needs starlette: pip install 'flowmill[dashboard]' ({exc})"
        ) from exc

    async def deliver(request: Request) -> JSONResponse:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return JSONResponse({"error": "request body too large"}, status_code=413)
        try:
            body = msgspec.json.decode(raw, type=_Body)
        except msgspec.DecodeError as exc:
            return JSONResponse({"error": f"bad request body: {exc}"}, status_code=400)
        token = body.token or request.headers.get("x-flowmill-token")
        if not token:
            return JSONResponse({"error": "missing token"}, status_code=401)
        try:
            out = await app.deliver_signal(
                request.path_params["waitpoint_id"],
                token,
                body.name,
                body.payload,
                body.idempotency_key,
            )
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

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await app.open()
        try:
            yield
        finally:
            await app.close()

    return Starlette(
        routes=[
            Route("/signals/{waitpoint_id}", deliver, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
