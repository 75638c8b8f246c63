"""`dashboard_app(app)`: the operator's dashboard, its JSON API, `/metrics`, `/healthz` and
the signals endpoint, as one ASGI app (`flowmill serve` runs it; mount it in FastAPI or
Starlette with `Mount("/flowmill", dashboard_app(app, token=...))`).

Routes: `/` the page (static HTML + JS from the package, no CDN, no build step),
`/static/...` its assets, `/api/...` the JSON it reads (see `_api`), `/metrics` the
store-derived gauges in Prometheus text, `/healthz` (open), `/signals/{waitpoint_id}`
(open: the waitpoint's HMAC token is its credential). Auth: see `_auth`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from .._metrics import CONTENT_TYPE, render_gauges
from ..errors import StoreError
from ._api import Api, BadInput
from ._auth import CSRF_COOKIE, SESSION_COOKIE, Auth, new_token
from ._signals import deliver_endpoint, http_error, need_starlette

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from .._app import App

log = logging.getLogger("flowmill.web")

STATIC = resources.files("flowmill.web") / "static"
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'"
    ),
}

_LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>flowmill: log in</title><link rel="stylesheet" href="static/style.css"></head>
<body class="login"><main><h1>flowmill</h1>
<p>This dashboard needs its token. Open the login URL <code>flowmill serve</code> printed,
or paste the token:</p>
<form method="get" action="./"><input name="token" type="password" autocomplete="off"
aria-label="token" autofocus> <button type="submit">Log in</button></form>
{note}</main></body></html>"""


class RedactToken(logging.Filter):
    """Hides the login token in access log lines (`GET /?token=...`)."""

    _TOKEN = re.compile(r"([?&]token=)[^&\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self._TOKEN.sub(r"\1…", a) if isinstance(a, str) else a for a in record.args
            )
        elif isinstance(record.msg, str):
            record.msg = self._TOKEN.sub(r"\1…", record.msg)
        return True


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def resolve_token(token: str | None) -> tuple[str, bool]:
    """The dashboard token: `token`, else `FLOWMILL_TOKEN`, else a new one (second value
    True: the caller should show the login URL, as nobody knows it yet)."""
    if token:
        return token, False
    env = os.environ.get("FLOWMILL_TOKEN")
    if env:
        return env, False
    return new_token(), True


def login_url(host: str, port: int, token: str) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/?{urlencode({'token': token})}"


def dashboard_app(
    app: App,
    *,
    token: str | None = None,
    metrics_open: bool = False,
    manage_app: bool = True,
) -> Starlette:
    """The dashboard over `app` as an ASGI app.

    `token`: the login token (else `FLOWMILL_TOKEN`, else a new one, logged once with the
    login path: read it from `.state.token`). `metrics_open`: serve `/metrics` without the
    token (for a scraper on a trusted network). `manage_app`: open and close `app` with the
    ASGI lifespan (False when the host application does)."""
    need_starlette()
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    chosen, generated = resolve_token(token)
    if generated:
        log.warning("flowmill dashboard: log in at /?token=%s", chosen)
    auth = Auth(chosen)
    api = Api(app)

    def secured(response: Response) -> Response:
        response.headers.update(_SECURITY_HEADERS)
        return response

    def refused(status: int, message: str, field: str | None = None) -> Response:
        body: dict[str, Any] = {"error": message}
        if field is not None:
            body["field"] = field
        return secured(JSONResponse(body, status_code=status))

    def guarded(
        handler: Callable[[Request], Awaitable[Any]], *, post: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        """An API endpoint: auth, CSRF on POSTs, and errors as JSON (400/404/503)."""

        async def endpoint(request: Request) -> Response:
            if not auth.authenticated(request):
                return refused(401, "log in first: open /?token=... or send Authorization: Bearer")
            if post and (why := auth.csrf_refusal(request)) is not None:
                return refused(403, why)
            try:
                out = await handler(request)
            except BadInput as bad:
                return refused(bad.status, bad.message, bad.field)
            except StoreError as exc:
                return refused(503, f"store unavailable: {one_line(exc)}")
            if isinstance(out, Response):
                return secured(out)
            return secured(JSONResponse(out, headers={"Cache-Control": "no-store"}))

        return endpoint

    async def index(request: Request) -> Response:
        given = request.query_params.get("token")
        if given is not None:
            if not auth.token_ok(given):
                page = _LOGIN_PAGE.format(note='<p class="error">That token is wrong.</p>')
                return secured(HTMLResponse(page, status_code=401))
            # Log in: the session cookie, then the same page without the token in the URL.
            target = str(request.url.replace(query="")) if request.url.query else "./"
            redirect = RedirectResponse(target, status_code=303)
            secure = request.url.scheme == "https"
            redirect.set_cookie(
                SESSION_COOKIE, auth.session_value(), httponly=True, samesite="strict",
                secure=secure, path="/",
            )  # fmt: skip
            redirect.set_cookie(
                CSRF_COOKIE, new_token(), httponly=False, samesite="strict", secure=secure,
                path="/",
            )  # fmt: skip
            return secured(redirect)
        if not auth.authenticated(request):
            return secured(HTMLResponse(_LOGIN_PAGE.format(note=""), status_code=401))
        page = (STATIC / "index.html").read_text(encoding="utf-8")
        response: Response = HTMLResponse(page, headers={"Cache-Control": "no-store"})
        if CSRF_COOKIE not in request.cookies:  # a bearer login, or a lost cookie
            response.set_cookie(CSRF_COOKIE, new_token(), samesite="strict", path="/")
        return secured(response)

    async def metrics(request: Request) -> Response:
        if not metrics_open and not auth.authenticated(request):
            return refused(401, "send the dashboard token: Authorization: Bearer <token>")
        try:
            snap = await app.metrics_snapshot()
        except StoreError as exc:
            return refused(503, f"store unavailable: {one_line(exc)}")
        return Response(render_gauges(snap), media_type=CONTENT_TYPE)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def not_found(request: Request, exc: Exception) -> Response:
        return secured(await http_error(request, exc))

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if manage_app:
            try:
                await app.open()
            except StoreError as exc:  # serve anyway: pages say the store is down (503)
                log.warning("flowmill dashboard: the store is not reachable yet: %s", exc)
        try:
            yield
        finally:
            if manage_app:
                await app.close()

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/signals/{waitpoint_id}", deliver_endpoint(app), methods=["POST"]),
        Route("/api/overview", guarded(api.overview), methods=["GET"]),
        Route("/api/tasks", guarded(api.tasks), methods=["GET"]),
        Route("/api/tasks/{task_id}", guarded(api.task), methods=["GET"]),
        Route("/api/tasks/{task_id}/children", guarded(api.children), methods=["GET"]),
        Route("/api/tasks/{task_id}/frames", guarded(api.frames), methods=["GET"]),
        Route("/api/tasks/{task_id}/cancel", guarded(api.cancel, post=True), methods=["POST"]),
        Route("/api/tasks/{task_id}/retry", guarded(api.retry, post=True), methods=["POST"]),
        Route("/api/dead-letters", guarded(api.dead_letters), methods=["GET"]),
        Route("/api/dead-letters/replay", guarded(api.replay, post=True), methods=["POST"]),
        Route("/api/workflows", guarded(api.workflows), methods=["GET"]),
        Route("/api/workflows/{run_id}", guarded(api.workflow), methods=["GET"]),
        Route("/api/queues/{queue}/pause", guarded(api.pause, post=True), methods=["POST"]),
        Route("/api/queues/{queue}/resume", guarded(api.resume, post=True), methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
    web = Starlette(routes=routes, exception_handlers={HTTPException: not_found}, lifespan=lifespan)
    web.state.token = chosen
    return web
