"""Small SQL helpers every module of the SQLite store shares."""

from __future__ import annotations

# Ids per `IN (...)` list: well under SQLite's bound-parameter limit.
IN_CHUNK = 500


def marks(n: int) -> str:
    """`?, ?, ...`: the placeholders of an `IN` list of `n` values."""
    return ", ".join("?" * n)
