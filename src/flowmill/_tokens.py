"""Waitpoint tokens: HMAC-SHA256 over (waitpoint id, task id, expiry), with a key id.

A token proves that whoever presents it was given it by the task that created the
waitpoint: an e-mail link or a webhook URL carries it, and `deliver_signal` checks it in
constant time. Two keys may be valid at once, so the secret can be rotated without
breaking tokens already handed out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

from .errors import ConfigurationError

SECRET_ENV = "FLOWMILL_SECRET"  # noqa: S105 - the variable's name, not a secret
PREVIOUS_SECRET_ENV = "FLOWMILL_SECRET_PREVIOUS"  # noqa: S105
MIN_SECRET_BYTES = 16
_VERSION = "v1"


def key_id(secret: bytes) -> str:
    """A short public name for a secret, so a token says which key signed it."""
    return hashlib.sha256(b"flowmill-key-id:" + secret).hexdigest()[:8]


def _mac(secret: bytes, waitpoint_id: str, task_id: str, expires_at_ms: int) -> str:
    message = f"{_VERSION}\x1f{waitpoint_id}\x1f{task_id}\x1f{expires_at_ms}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class TokenKeys:
    """The current signing secret and, during a rotation, the previous one."""

    current: bytes
    previous: bytes | None = None

    def __post_init__(self) -> None:
        for name, secret in (("current", self.current), ("previous", self.previous)):
            if secret is not None and len(secret) < MIN_SECRET_BYTES:
                raise ConfigurationError(
                    f"the {name} waitpoint secret is too short: use at least "
                    f"{MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)"
                )

    @classmethod
    def from_env(cls, stored: bytes | None = None) -> TokenKeys | None:
        """Keys from FLOWMILL_SECRET(_PREVIOUS); `stored` is the embedded default's secret."""
        current = os.environ.get(SECRET_ENV)
        previous = os.environ.get(PREVIOUS_SECRET_ENV)
        if current:
            return cls(current.encode(), previous.encode() if previous else stored)
        if stored is not None:
            return cls(stored, previous.encode() if previous else None)
        return None

    def sign(self, waitpoint_id: str, task_id: str, expires_at_ms: int) -> str:
        """`<key id>.<expiry ms>.<mac>`: the key id selects the key when checking."""
        mac = _mac(self.current, waitpoint_id, task_id, expires_at_ms)
        return f"{key_id(self.current)}.{expires_at_ms}.{mac}"

    def verify(self, token: str, waitpoint_id: str, task_id: str, expires_at_ms: int) -> str | None:
        """None when the token is valid for this waitpoint; otherwise why it is not."""
        parts = token.split(".") if isinstance(token, str) else []
        if len(parts) != 3 or not token.isascii():
            # Tokens are ASCII (hex key id, digits, base64url): anything else is forged, and
            # compare_digest refuses non-ASCII str, so it must never get that far.
            return "malformed token"
        kid, expiry, mac = parts
        if expiry != str(expires_at_ms):
            return "token does not match this waitpoint"
        candidates = [
            s
            for s in (self.current, self.previous)
            if s is not None and hmac.compare_digest(key_id(s).encode(), kid.encode())
        ]
        if not candidates:
            return "token signed with an unknown key"
        expected = _mac(candidates[0], waitpoint_id, task_id, expires_at_ms)
        if not hmac.compare_digest(expected.encode(), mac.encode()):
            return "token does not match this waitpoint"
        return None


def new_secret() -> bytes:
    """A fresh random secret (hex, 64 characters) for the embedded default."""
    return os.urandom(32).hex().encode()
