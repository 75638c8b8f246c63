"""What a worker has done since it started (its maintenance adds to the same record)."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field


@dataclass(slots=True)
class WorkerStats:
    """What this worker has done since it started."""

    claimed: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    lease_lost: int = 0
    unhealthy: int = 0
    reaped: int = 0
    promoted: int = 0
    expired: int = 0
    hooks: int = 0
