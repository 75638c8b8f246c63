"""Who may use the dashboard: one shared token, a session cookie after login, and a CSRF
check on every state-changing call.

- A request is let in with `Authorization: Bearer <token>`, or with the session cookie
  (`flowmill_session`, HttpOnly, SameSite=Strict) that `GET /?token=<token>` sets. The
  cookie holds an HMAC of the token, never the token itself.
- State-changing calls are POSTs. A POST that rides on the cookie must carry the CSRF
  token (`X-CSRF-Token` header equal to the `flowmill_csrf` cookie: a double submit), and
  an `Origin`, when the browser sends one, must be this server's. A bearer-token call has
  no ambient credential to abuse, so it needs neither.
- Every comparison of a secret is constant time (`hmac.compare_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from starlette.requests import Request

SESSION_COOKIE = "flowmill_session"
CSRF_COOKIE = "flowmill_csrf"
CSRF_HEADER = "x-csrf-token"


def new_token() -> str:
    """A fresh random login token (what `flowmill serve` prints when given none)."""
    return secrets.token_urlsafe(24)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True)
class Auth:
    """The dashboard's credentials. `token=None` turns authentication off (for an app
    mounted behind an authenticating proxy: the caller says so explicitly)."""

    token: str | None

    @property
    def enabled(self) -> bool:
        return self.token is not None

    def session_value(self) -> str:
        """The session cookie's value: an HMAC of the token (so the cookie is not the token)."""
        assert self.token is not None
        return hmac.new(self.token.encode(), b"flowmill-session", hashlib.sha256).hexdigest()

    def token_ok(self, given: str | None) -> bool:
        if self.token is None:
            return True
        return given is not None and _same(given, self.token)

    def bearer(self, request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else None

    def authenticated(self, request: Request) -> bool:
        """Whether the request carries the token (bearer) or a valid session cookie."""
        if self.token is None:
            return True
        bearer = self.bearer(request)
        if bearer is not None:
            return self.token_ok(bearer)
        cookie = request.cookies.get(SESSION_COOKIE)
        return cookie is not None and _same(cookie, self.session_value())

    def csrf_refusal(self, request: Request) -> str | None:
        """Why a state-changing request is refused (None when it may go on)."""
        if self.token is None or self.bearer(request) is not None:
            return None
        origin = request.headers.get("origin")
        if origin is not None and origin != "null":
            host = request.headers.get("host", "")
            if urlsplit(origin).netloc != host:
                return "cross-origin request refused"
        elif origin == "null":
            return "cross-origin request refused"
        cookie = request.cookies.get(CSRF_COOKIE)
        header = request.headers.get(CSRF_HEADER)
        if not cookie or not header or not _same(cookie, header):
            return "missing or wrong CSRF token (send the flowmill_csrf cookie as X-CSRF-Token)"
        return None


__all__ = ["CSRF_COOKIE", "CSRF_HEADER", "SESSION_COOKIE", "Auth", "new_token"]
