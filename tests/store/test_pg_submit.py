"""The PostgreSQL store's submit path: a single task goes in one statement with plain
values (`Queries.task_insert_one`), which stores what the array statement stores."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from flowmill._states import State
from flowmill.store.contract.tasks import EventsRead, NewTask, TaskRecord, TasksInsert
from flowmill.store.postgres import PostgresStore, _cursor

from ._pg_store_fixtures import pg_url, schema, store

__all__ = ["pg_url", "schema", "store"]  # fixtures, used by name

NOW = 1_700_000_000_000


def _statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts every store cursor executes from now on."""
    seen: list[str] = []
    plain = _cursor.StoreCursor.execute

    async def execute(self: Any, query: Any, params: Any = None, **kw: Any) -> Any:
        seen.append(query)
        return await plain(self, query, params, **kw)

    monkeypatch.setattr(_cursor.StoreCursor, "execute", execute)
    return seen


def _comparable(rec: TaskRecord | None) -> dict[str, Any]:
    assert rec is not None
    return {k: v for k, v in dataclasses.asdict(rec).items() if k != "id"}


# Every column a plain insert writes, set away from its default; names with NUL and the
# escape mark, which the store writes in its escaped form.
_FULL = {
    "kind": "k\x00ind",
    "payload": b'{"x": 1}',
    "queue": "\x01q",
    "priority": 7,
    "ttl_ms": 60_000,
    "max_attempts": 9,
    "retry_policy": b'{"base": 2}',
    "timeout_ms": 1234,
    "tags": {"tenant": "acme", "z": ""},
    "fail_fast": False,
    "has_on_cancel": True,
    "budget_id": "b\x00udget",
}


@pytest.mark.parametrize(
    "when",
    [{}, {"delay_ms": 5000}, {"run_at_ms": NOW + 10}, {"run_at_ms": NOW - 10}],
    ids=["now", "delay", "run_at_later", "run_at_past"],
)
async def test_one_task_is_stored_as_a_batch_stores_it(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch, when: dict[str, int]
) -> None:
    seen = _statements(monkeypatch)
    one = NewTask(id="one", **_FULL, **when)  # type: ignore[arg-type]
    await store.tasks_insert(TasksInsert([one], now_ms=NOW))
    assert seen == [store._q.task_insert_one]
    seen.clear()
    batch = [dataclasses.replace(one, id="b1"), dataclasses.replace(one, id="b2")]
    await store.tasks_insert(TasksInsert(batch, now_ms=NOW))
    assert seen == [store._q.tasks_insert_unkeyed]
    got = await store.task_get("one")
    assert _comparable(got) == _comparable(await store.task_get("b1"))
    assert got is not None and got.kind == "k\x00ind" and got.queue == "\x01q"
    later = when.get("delay_ms", 0) > 0 or when.get("run_at_ms", NOW) > NOW
    assert got.state is (State.SCHEDULED if later else State.READY)
    events = await store.events_read(EventsRead(0, 100))
    assert [(e.task_id, e.state) for e in events if e.task_id == "one"] == [("one", got.state)]


async def test_one_task_with_defaults_is_claimable_and_wakes_a_waiter(
    store: PostgresStore,
) -> None:
    await store.wait_for_work(0)  # listening from here on
    [out] = await store.tasks_insert(TasksInsert([NewTask("t", "job", b"{}")]))
    assert out.id == "t"
    async with asyncio.timeout(4):  # woken by the insert's notification, not its timeout
        await store.wait_for_work(30.0)
    got = await store.task_get("t")
    assert got is not None and got.state is State.READY and got.tags == {}
    assert got.expires_at_ms is None and got.run_at_ms is None
