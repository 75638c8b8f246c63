"""Connection settings and driver-error translation for the PostgreSQL store."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import PoolTimeout

from ...errors import FlowmillError, SchemaError, StoreError, StoreUnavailable

SCHEMES = ("postgresql://", "postgres://")

# Applied only where the URL does not say otherwise.
_DEFAULTS: dict[str, Any] = {
    "application_name": "flowmill",
    "connect_timeout": 10,
    # A dead peer (not a clean restart) is noticed within about a minute.
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    # ...and a request the server never acknowledges fails after 30 s instead of hanging.
    "tcp_user_timeout": 30_000,
}

# FATAL messages at connect time that mean "try again later", not "fix your settings".
_TRANSIENT = (
    "starting up",
    "shutting down",
    "in recovery",
    "too many",
    "remaining connection slots",
    "terminating connection",
)


def one_line(text: str) -> str:
    """Driver messages span lines (hints, tabs); logs and errors want one line."""
    return " ".join(text.split())


def split_schema(url: str) -> tuple[str, str | None]:
    """(the URL without flowmill's own `schema=` query parameter, that schema if given).

    libpq refuses query parameters it does not know, so ours is taken out first; this lets
    a bare URL (FLOWMILL_URL, the CLI) name the schema: postgresql://host/db?schema=jobs.
    """
    base, sep, query = url.partition("?")
    if not sep:
        return url, None
    schema: str | None = None
    kept: list[str] = []
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == "schema":
            schema = unquote(value)
        elif part:
            kept.append(part)
    return (f"{base}?{'&'.join(kept)}" if kept else base), schema


def conninfo_for(url: str) -> tuple[str, str]:
    """(libpq connection string with our defaults, a display form without the password)."""
    if not url.startswith(SCHEMES):
        raise StoreError(
            f"not a PostgreSQL URL: {redact(url)!r} (expected postgresql://user@host/db)"
        )
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise StoreError(f"invalid PostgreSQL URL {redact(url)!r}: {one_line(str(exc))}") from exc
    for key, value in _DEFAULTS.items():
        params.setdefault(key, value)
    display = "{user}@{host}:{port}/{db}".format(
        user=params.get("user", ""),
        host=params.get("host", "localhost"),
        port=params.get("port", 5432),
        db=params.get("dbname", ""),
    )
    return make_conninfo("", **params), display


def redact(url: str) -> str:
    """The URL with any password replaced, for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, at, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***{at}{host}" if ":" in creds else url


def connect_error(exc: BaseException, display: str) -> FlowmillError:
    """The error to raise when opening a connection failed."""
    if isinstance(exc, FlowmillError):
        return exc
    msg = one_line(str(exc)).removeprefix("connection failed: ")
    text = f"cannot connect to PostgreSQL at {display}: {msg}"
    if isinstance(exc, PoolTimeout):
        return StoreUnavailable(f"no PostgreSQL connection to {display} became available: {msg}")
    if isinstance(exc, psycopg.OperationalError):
        rejected = "FATAL:" in msg or msg.startswith("connection is bad: invalid")
        if rejected and not any(t in msg for t in _TRANSIENT):
            return StoreError(text)
        return StoreUnavailable(text)
    if isinstance(exc, psycopg.Error):
        return StoreError(text)
    if isinstance(exc, OSError):
        return StoreUnavailable(text)
    return StoreError(text)


def is_retryable(exc: BaseException) -> bool:
    """The whole transaction was rolled back by the server and may simply be run again."""
    return isinstance(exc, pg_errors.SerializationFailure | pg_errors.DeadlockDetected)


# Class 08 (connection exception) and the server going down under us.
_CONNECTION_SQLSTATES = ("08", "57P01", "57P02", "57P03")


def is_connection_error(exc: BaseException) -> bool:
    """The connection itself failed: the pool should be checked and the call may be retried."""
    if isinstance(exc, PoolTimeout) or not isinstance(exc, psycopg.OperationalError):
        return False
    return exc.sqlstate is None or exc.sqlstate.startswith(_CONNECTION_SQLSTATES)


def translate(exc: BaseException, display: str) -> BaseException:
    """Turn a driver error raised by an operation into a flowmill error, with one line."""
    if isinstance(exc, FlowmillError) or not isinstance(exc, psycopg.Error | PoolTimeout):
        return exc
    msg = one_line(str(exc))
    if isinstance(exc, PoolTimeout):
        return StoreUnavailable(f"no PostgreSQL connection to {display} became available: {msg}")
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return StoreError(f"permission denied on PostgreSQL at {display}: {msg}")
    if isinstance(exc, pg_errors.UndefinedTable | pg_errors.InvalidSchemaName):
        return SchemaError(
            f"the flowmill schema is missing at {display} ({msg}): run `flowmill migrate`"
        )
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return StoreUnavailable(f"PostgreSQL at {display} is unavailable: {msg}")
    return StoreError(f"PostgreSQL error at {display}: {msg}")
