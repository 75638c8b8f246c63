"""Redis/Valkey URLs, the durability checks at start, and driver-error translation."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis import exceptions as rx
from redis.asyncio import Redis

from ...errors import (
    ConfigurationError,
    DuplicateTask,
    IllegalTransition,
    InvalidParent,
    LeaseLost,
    StoreError,
    StoreUnavailable,
    TaskNotFound,
    UnknownBudget,
)
from ._partitions import parse_count

log = logging.getLogger("flowmill.store.redis")

SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "valkey",
    "valkeys",
    "redis+cluster",
    "rediss+cluster",
    "valkey+cluster",
    "valkeys+cluster",
)
# the driver's (redis-py's) connection options a URL may carry; anything else is refused,
# so that a misspelt option is an error, not a silent default (and `decode_responses`,
# which would break every reply flowmill reads, cannot be switched on)
DRIVER_OPTIONS = frozenset(
    {
        "db",
        "client_name",
        "health_check_interval",
        "max_connections",
        "protocol",
        "retry_on_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "socket_timeout",
        "timeout",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_cert_reqs",
        "ssl_certfile",
        "ssl_check_hostname",
        "ssl_ciphers",
        "ssl_keyfile",
        "ssl_min_version",
        "ssl_password",
    }
)
Durability = Literal["default", "aof", "fsync"]
_DURABILITY = ("default", "aof", "fsync")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Settings:
    """What a flowmill Redis URL says: the driver's URL, and flowmill's own parameters."""

    driver_url: str
    cluster: bool
    prefix: str
    durability: Durability
    partitions: int | None = None  # `partitions=`; None: the stamped count, or the default


def parse_url(url: str, prefix: str | None = None, durability: str | None = None) -> Settings:
    """Split flowmill's query parameters (`prefix=`, `durability=`, `partitions=`) off a
    Redis URL.

    `valkey://` and `valkeys://` are spelled `redis://` / `rediss://` for the driver.
    """
    split = urlsplit(url)
    scheme = split.scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigurationError(f"bad Redis URL {url!r}: use redis://host:6379/0")
    kept: list[tuple[str, str]] = []
    partitions: int | None = None
    for name, value in parse_qsl(split.query, keep_blank_values=True):
        if name == "prefix":
            prefix = prefix if prefix is not None else value
        elif name == "durability":
            durability = durability if durability is not None else value
        elif name == "partitions":
            partitions = parse_count(value)
        elif name in DRIVER_OPTIONS:
            kept.append((name, value))
        else:
            raise ConfigurationError(
                f"bad Redis URL {redact(url)}: unknown option {name!r} (flowmill's: prefix, "
                f"durability, partitions; the driver's: {', '.join(sorted(DRIVER_OPTIONS))})"
            )
    cluster = scheme.endswith("+cluster")
    base = scheme.removesuffix("+cluster")
    driver_scheme = {"valkey": "redis", "valkeys": "rediss"}.get(base, base)
    driver = urlunsplit((driver_scheme, split.netloc, split.path, urlencode(kept), split.fragment))
    if driver_scheme == "unix" and not driver.startswith("unix://"):
        driver = "unix://" + driver.removeprefix("unix:")  # the driver wants the slashes
    mode = durability or "default"
    if mode not in _DURABILITY:
        raise ConfigurationError(
            f"durability must be one of {', '.join(_DURABILITY)}, got {durability!r}"
        )
    if prefix is not None and ("{" in prefix or "}" in prefix):
        raise ConfigurationError(f"a key prefix cannot hold braces: {prefix!r}")
    if cluster and mode == "fsync":
        raise ConfigurationError(
            "durability=fsync is not available with a cluster URL yet: use durability=aof "
            "with appendfsync always on every node"
        )
    prefix = "fm:" if prefix is None else prefix
    return Settings(driver, cluster, prefix, mode, partitions)  # type: ignore[arg-type]


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    split = urlsplit(url)
    if split.password is None:
        return url
    host = split.hostname or ""
    if split.port is not None:
        host = f"{host}:{split.port}"
    user = split.username or ""
    return urlunsplit((split.scheme, f"{user}:***@{host}", split.path, split.query, ""))


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def translate(exc: BaseException, where: str) -> StoreError:
    """A driver error as the typed store error a caller can act on (one line)."""
    msg = one_line(str(exc))
    if isinstance(exc, rx.AuthenticationError | rx.AuthorizationError):
        return StoreError(f"{where}: Redis refused the credentials ({msg})")
    if isinstance(exc, rx.ConnectionError | rx.TimeoutError | OSError):
        return StoreUnavailable(f"{where}: cannot reach Redis ({msg})")
    if isinstance(exc, rx.ResponseError):
        if "WRONGTYPE" in msg:
            return StoreError(
                f"{where}: a key in flowmill's namespace holds the wrong type of value "
                f"({msg}); use another key prefix or clear those keys"
            )
        if msg.startswith("NOAUTH") or "WRONGPASS" in msg:
            return StoreError(f"{where}: Redis refused the credentials ({msg})")
        if "OOM" in msg:
            return StoreUnavailable(f"{where}: Redis is out of memory ({msg})")
    return StoreError(f"{where}: {msg}")


async def guarded(where: str, call: Callable[[], Awaitable[T]]) -> T:
    """Run one driver call, turning driver errors into typed store errors."""
    try:
        return await call()
    except rx.RedisError as exc:
        raise translate(exc, where) from exc
    except OSError as exc:
        raise translate(exc, where) from exc


async def check_durability(client: Redis, mode: Durability, url: str) -> bool:
    """Refuse a server that may evict keys; warn (once) when acknowledged work is not on disk.

    Returns whether the server supports WAITAOF (needed by `durability=fsync`).
    """
    policy = await _config(client, "maxmemory-policy")
    if policy is not None and policy != "noeviction":
        raise StoreError(
            f"Redis at {redact(url)} has maxmemory-policy {policy}: it may evict tasks. "
            "Set it in redis.conf: `maxmemory-policy noeviction` "
            "(or run: CONFIG SET maxmemory-policy noeviction)"
        )
    aof = await _config(client, "appendonly")
    if mode in ("aof", "fsync") and aof is not None and aof != "yes":
        raise StoreError(
            f"durability={mode} needs AOF, and Redis at {redact(url)} has it off. "
            "Set it in redis.conf: `appendonly yes` (or run: CONFIG SET appendonly yes)"
        )
    if mode == "default" and aof == "no" and url not in _WARNED:
        _WARNED.add(url)
        log.warning(
            "Redis at %s has AOF off: acknowledged tasks are lost if it restarts "
            "(set `appendonly yes`, and add ?durability=aof to the URL to require it)",
            redact(url),
        )
    if mode != "fsync":
        return False
    info: dict[str, Any] = await client.info("server")
    version = tuple(int(x) for x in str(info.get("redis_version", "0")).split(".")[:2])
    if version < (7, 2):
        raise StoreError(
            f"durability=fsync needs WAITAOF (Redis 7.2 or Valkey 8); "
            f"{redact(url)} runs {info.get('redis_version')}"
        )
    return True


_WARNED: set[str] = set()


async def _config(client: Redis, name: str) -> str | None:
    """A config value, or None where CONFIG is not allowed (managed services rename it)."""
    try:
        got: dict[Any, Any] = await client.config_get(name)
    except rx.ResponseError:
        return None
    for key, value in got.items():
        if key in (name, name.encode()):
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def raise_reply(out: dict[str, Any]) -> NoReturn:
    """Raise the typed error of a function's error map (`{"err": kind, ...}`)."""
    kind = out["err"]
    if kind == "dup":
        raise DuplicateTask(out["key"], out["id"])
    if kind == "lease":
        raise LeaseLost(out["id"], out["epoch"])
    if kind == "parent":
        raise InvalidParent(out["id"], out.get("state"))
    if kind == "budget":
        raise UnknownBudget(out["id"])
    if kind == "notfound":
        raise TaskNotFound(out["id"])
    if kind == "illegal":
        raise IllegalTransition(out["from"], out["to"])
    if kind == "exists":
        raise StoreError(f"a task with id {out['id']!r} already exists")
    if kind == "target":
        raise StoreError(f"a running task cannot be finished as {out['target']}")
    if kind == "when":
        raise StoreError("a finish to scheduled needs delay_ms or run_at_ms")
    raise StoreError(f"the Redis store refused the call: {out}")
