"""Store backends, chosen by URL: `sqlite:///path`, `sqlite://:memory:`, `postgresql://...`."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import ConfigurationError
from .contract.tasks import Store

DEFAULT_URL = "sqlite:///flowmill.db"


def open_store(url: str, **options: Any) -> Store:
    """Build (but do not open) the store a URL names; options go to the backend."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"bad store URL {url!r}: use sqlite:///path/to/file.db, sqlite://:memory: "
            "or postgresql://user@host/db"
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        rest = url.split("://", 1)[1]
        path, _, query = rest.partition("?")
        if path in (":memory:", "", "/:memory:"):
            path = ":memory:"
        elif path.startswith("/"):
            path = path[1:]  # sqlite:///rel.db -> rel.db; sqlite:////abs.db -> /abs.db
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        if "synchronous" in params:
            options.setdefault("synchronous", params["synchronous"].upper())
        if not path:
            raise ConfigurationError(f"bad SQLite URL {url!r}: no file path")
        return SQLiteStore(path, **options)
    if scheme in ("postgresql", "postgres"):
        try:
            from .postgres import PostgresStore
        except ImportError as exc:  # psycopg is an optional extra
            raise ConfigurationError(
                f"the PostgreSQL backend needs psycopg: pip install 'flowmill[postgres]' ({exc})"
            ) from exc
        options.pop("synchronous", None)
        return PostgresStore(url, **options)
    if scheme in ("redis", "rediss", "valkey", "valkeys", "unix"):
        try:
            from .redis import RedisStore
        except ImportError as exc:  # redis-py is an optional extra
            raise ConfigurationError(
                f"the Redis/Valkey backend needs redis-py: pip install 'flowmill[redis]' ({exc})"
            ) from exc
        options.pop("synchronous", None)
        return RedisStore(url, **options)
    split = urlsplit(url)
    raise ConfigurationError(f"unknown store URL scheme {split.scheme!r} in {url!r}")


__all__ = ["DEFAULT_URL", "Store", "open_store"]
