"""The store's clock: wall-clock milliseconds, unless the caller passed its own `now_ms`."""

from __future__ import annotations

import time


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def now_or_wall(now_ms: int | None) -> int:
    return now_ms if now_ms is not None else wall_ms()
