"""The Redis/Valkey store: one Functions library, one FCALL per transition, Streams for events."""

from ._store import LIBRARY_VERSION, RedisStore

__all__ = ["LIBRARY_VERSION", "RedisStore"]
