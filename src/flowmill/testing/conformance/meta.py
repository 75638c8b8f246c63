"""Conformance: progress events (`task_progress`) and meta values (`meta_get_or_set`)."""

from __future__ import annotations

import asyncio

import pytest

from ..._states import State
from ...errors import LeaseLost
from ...store.contract import Store
from ...store.contract.tasks import (
    TaskProgress,
)
from ._util import (
    T0,
    all_events,
)
from ._waiting import (
    running,
)


class TaskProgressEventConformance:
    """`task_progress` writes an event."""

    async def test_progress_writes_an_event(self, store: Store) -> None:
        row = await running(store)
        await store.task_progress(TaskProgress(row.id, row.lease_epoch, 40.0, "loading", T0 + 1))
        await store.task_progress(TaskProgress(row.id, row.lease_epoch, 62.5, None, T0 + 2))
        events = [e for e in await all_events(store) if e.task_id == row.id]
        assert [(e.state, e.detail, e.at_ms) for e in events[2:]] == [
            (State.RUNNING, "progress 40%: loading", T0 + 1),
            (State.RUNNING, "progress 62.5%", T0 + 2),
        ]
        with pytest.raises(LeaseLost):
            await store.task_progress(TaskProgress(row.id, row.lease_epoch + 1, 50.0))
        assert len([e for e in await all_events(store) if e.task_id == row.id]) == 4


class MetaGetOrSetConformance:
    """`meta_get_or_set`."""

    async def test_get_or_set(self, store: Store) -> None:
        assert await store.meta_get_or_set("conformance-a", "one") == "one"
        assert await store.meta_get_or_set("conformance-a", "two") == "one"
        assert await store.meta_get_or_set("conformance-b", "ключ 🚀") == "ключ 🚀"

    async def test_race(self, store: Store) -> None:
        got = await asyncio.gather(
            *(store.meta_get_or_set("conformance-race", f"v{i}") for i in range(20))
        )
        assert len(set(got)) == 1 and got[0] in {f"v{i}" for i in range(20)}
        assert await store.meta_get_or_set("conformance-race", "late") == got[0]
