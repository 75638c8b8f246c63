"""Store backends, chosen by URL: `sqlite:///path`, `postgresql://...`, `redis://...`.

`open_store` looks the URL's scheme up in `BACKENDS`, a table of scheme -> factory. A
backend joins with one entry per scheme: a factory that takes the URL and the options
and builds (but does not open) its store, importing the backend only when called, so an
optional driver is needed only by those who use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import ConfigurationError
from .contract import Store

DEFAULT_URL = "sqlite:///flowmill.db"

StoreFactory = Callable[..., Store]
"""Builds a store from its URL and keyword options: `factory(url, **options)`."""


_SQLITE_PARAMS = frozenset({"synchronous"})


def _sqlite(url: str, **options: Any) -> Store:
    from .sqlite import SQLiteStore

    rest = url.split("://", 1)[1]
    path, _, query = rest.partition("?")
    if path in (":memory:", "", "/:memory:"):
        path = ":memory:"
    elif path.startswith("/"):
        path = path[1:]  # sqlite:///rel.db -> rel.db; sqlite:////abs.db -> /abs.db
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = sorted(set(params) - _SQLITE_PARAMS)
    if unknown:
        raise ConfigurationError(
            f"bad SQLite URL {url!r}: unknown option {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(_SQLITE_PARAMS))})"
        )
    if "synchronous" in params:
        mode = params["synchronous"].upper()
        if mode not in ("FULL", "NORMAL"):
            raise ConfigurationError(
                f"bad SQLite URL {url!r}: synchronous must be FULL or NORMAL, "
                f"got {params['synchronous']!r}"
            )
        options.setdefault("synchronous", mode)
    if not path:
        raise ConfigurationError(f"bad SQLite URL {url!r}: no file path")
    return SQLiteStore(path, **options)


def _postgres(url: str, **options: Any) -> Store:
    try:
        from .postgres import PostgresStore
    except ImportError as exc:  # psycopg is an optional extra
        raise ConfigurationError(
            f"the PostgreSQL backend needs psycopg: pip install 'flowmill[postgres]' ({exc})"
        ) from exc
    options.pop("synchronous", None)
    return PostgresStore(url, **options)


def _redis(url: str, **options: Any) -> Store:
    try:
        from .redis import RedisStore
    except ImportError as exc:  # redis-py is an optional extra
        raise ConfigurationError(
            f"the Redis/Valkey backend needs redis-py: pip install 'flowmill[redis]' ({exc})"
        ) from exc
    options.pop("synchronous", None)
    return RedisStore(url, **options)


BACKENDS: dict[str, StoreFactory] = {
    "sqlite": _sqlite,
    "postgresql": _postgres,
    "postgres": _postgres,
    "redis": _redis,
    "rediss": _redis,
    "valkey": _redis,
    "valkeys": _redis,
    "unix": _redis,
    "redis+cluster": _redis,
    "rediss+cluster": _redis,
    "valkey+cluster": _redis,
    "valkeys+cluster": _redis,
}
"""URL scheme (lower case) -> the factory of its backend's store."""


def open_store(url: str, **options: Any) -> Store:
    """Build (but do not open) the store a URL names; options go to the backend."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"bad store URL {url!r}: use sqlite:///path/to/file.db, sqlite://:memory:, "
            "postgresql://user@host/db or redis://host:6379/0"
        )
    scheme = url.split("://", 1)[0].lower()
    factory = BACKENDS.get(scheme)
    if factory is None:
        split = urlsplit(url)
        raise ConfigurationError(f"unknown store URL scheme {split.scheme!r} in {url!r}")
    return factory(url, **options)


__all__ = ["BACKENDS", "DEFAULT_URL", "Store", "StoreFactory", "open_store"]
