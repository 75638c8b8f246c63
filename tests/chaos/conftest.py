"""The chaos tier: fault scenarios, seeded and replayable.

`FLOWMILL_CHAOS_SEED=N` replays a run; without it each run draws a seed and prints it (in
the summary, and next to any failure). Tests marked `long` are the `make chaos` sizes; CI
runs `-m "chaos and not long"`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from . import _ledger

SEED_ENV = "FLOWMILL_CHAOS_SEED"
SEED = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(1, 2**31))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Scenarios start processes and servers: more time than the suite's 120 s default
    (a busy CI machine), the long sizes most of all."""
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(900 if item.get_closest_marker("long") else 300))


@pytest.fixture
def seed() -> int:
    return SEED


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """One random stream per test, from the run's seed and the test's id (replayable)."""
    return random.Random(f"{SEED}:{request.node.nodeid}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.failed and str(item.path).startswith(os.path.dirname(__file__)):
        report.sections.append(("chaos seed", f"replay with {SEED_ENV}={SEED}"))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _ledger.LEDGERS:
        return
    terminalreporter.section(f"chaos ledgers ({SEED_ENV}={SEED})")
    for ledger in _ledger.LEDGERS:
        terminalreporter.write_line(ledger.line())
