"""The embedded SQLite store: WAL, one group-committing writer thread, one reader thread."""

from ._store import SQLiteStore, Synchronous

__all__ = ["SQLiteStore", "Synchronous"]
