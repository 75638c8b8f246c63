"""One-shot waitpoints: which waitpoints a suspension owns (and closes when it resolves)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RESUMED = "resumed"
TIMED_OUT = "timed out"


def owned_waitpoints(condition: Mapping[str, Any]) -> frozenset[str] | None:
    """The waitpoint ids a condition names; None when a `Signal` in it matches any waitpoint
    (the suspension then owns every open waitpoint of its task)."""
    found: set[str] = set()

    def walk(c: Mapping[str, Any]) -> bool:
        if "signal" in c:
            wp = c.get("waitpoint")
            if wp is None:
                return False
            found.add(str(wp))
            return True
        if "count" in c:
            return walk(c["of"])
        parts = c.get("any", c.get("all", ()))
        return all(walk(p) for p in parts)

    return frozenset(found) if walk(condition) else None


def closed_reason(reason: str | None) -> str:
    """The `reason` of a CLOSED delivery outcome."""
    return f"waitpoint closed: its suspension {reason or RESUMED}"
