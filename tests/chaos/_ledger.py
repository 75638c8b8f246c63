"""The effects ledger of a chaos scenario: what ran, what completed, what went wrong.

Every scenario fills one `Ledger` and checks it; the chaos conftest prints them all at the
end of the run (with the seed), so a run's counts can be quoted and a failure replayed.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path

LEDGERS: list[Ledger] = []  # filled during a run; printed by the conftest's summary


@dataclass
class Ledger:
    scenario: str
    backend: str
    seed: int
    tasks: int = 0  # tasks submitted (acknowledged by the store)
    kills: int = 0  # faults injected: SIGKILLs, restarts, dropped connections, stops
    executions: int = 0  # handler runs, from the effects database
    completed: int = 0
    lost: int = 0  # acknowledged tasks that never completed
    duplicate_runs: int = 0  # handler runs beyond the first of a task
    premature_reclaims: int = 0  # re-runs of a task whose first run was healthy
    extra: dict[str, int] = field(default_factory=dict)

    def read_effects(self, ledger: Path) -> None:
        """Executions and duplicates from a `_crash_app` ledger database."""
        with sqlite3.connect(ledger, timeout=30) as conn:
            self.executions = int(conn.execute("SELECT count(*) FROM executions").fetchone()[0])
            distinct = int(
                conn.execute("SELECT count(DISTINCT task_id) FROM executions").fetchone()[0]
            )
        self.duplicate_runs = self.executions - distinct

    def line(self) -> str:
        counts = {
            k: v for k, v in asdict(self).items() if k not in ("scenario", "backend", "extra")
        }
        counts.update(self.extra)
        return f"{self.scenario}[{self.backend}] " + " ".join(f"{k}={v}" for k, v in counts.items())


def start(scenario: str, url: str, seed: int) -> Ledger:
    ledger = Ledger(scenario, url.split(":", 1)[0], seed)
    LEDGERS.append(ledger)
    return ledger
