"""The store conformance suite: the tests every backend must pass to be done.

A backend's test module subclasses `StoreConformance` (as `TestMyStore`) and provides an
async fixture `store` that yields an open, empty store, isolated from every other test,
and closes it afterwards. Tests drive time through `now_ms=`; none sleeps for a timer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ...store.contract import Store
from ._util import assert_history_legal
from .budgets import BudgetConformance, LimitConformance
from .children import ChildrenConformance
from .claim import ClaimConformance, ProgressConformance, RenewConformance
from .dag import DagConformance
from .finish import FinishConformance, TerminalConformance
from .insert import DedupConformance, InsertConformance
from .ops import InspectConformance, MaintenanceConformance, OperatorConformance
from .schema import MigrateConformance, SchemaVersionConformance
from .signals import SignalsConformance
from .wake import ClockConformance, WakeConformance
from .walk import WalkConformance


class StoreConformance(
    InsertConformance,
    DedupConformance,
    ClaimConformance,
    RenewConformance,
    ProgressConformance,
    FinishConformance,
    TerminalConformance,
    MaintenanceConformance,
    OperatorConformance,
    InspectConformance,
    WakeConformance,
    ClockConformance,
    WalkConformance,
    ChildrenConformance,
    SignalsConformance,
    DagConformance,
    BudgetConformance,
    LimitConformance,
    SchemaVersionConformance,
    MigrateConformance,
):
    """Every behaviour of the `Store` contract. Subclass it as `Test...` with a `store` fixture."""

    @pytest.fixture(autouse=True)
    async def _history_is_legal(self, store: Store) -> AsyncIterator[None]:
        """After every test: each move the store recorded is in TRANSITIONS."""
        yield
        await assert_history_legal(store)
