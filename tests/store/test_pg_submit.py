"""The PostgreSQL store's submit path: a single task goes in one statement with plain
values (`Queries.task_insert_one`), which stores what the array statement stores."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from flowmill._states import State
from flowmill.errors import DuplicateTask
from flowmill.store.contract.tasks import (
    EventsRead,
    Finish,
    InsertStatus,
    NewTask,
    TaskRecord,
    TasksClaim,
    TasksFinish,
    TasksInsert,
)
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


def _transactions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the explicit transactions (BEGIN ... COMMIT) the store opens from now on."""
    import psycopg

    opened = [0]
    plain = psycopg.AsyncConnection.transaction

    def transaction(self: Any, *args: Any, **kw: Any) -> Any:
        opened[0] += 1
        return plain(self, *args, **kw)

    monkeypatch.setattr(psycopg.AsyncConnection, "transaction", transaction)
    return opened


async def test_one_keyed_task_is_one_statement_while_its_key_is_free(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen, opened = _statements(monkeypatch), _transactions(monkeypatch)
    [out] = await store.tasks_insert(TasksInsert([NewTask("a", "job", b"1", dedup_key="k")]))
    assert (out.id, out.status) == ("a", InsertStatus.INSERTED)
    assert seen == [store._q.tasks_insert] and opened == [0]


@pytest.mark.parametrize("on_duplicate", ["skip", "replace", "reject"])
async def test_one_keyed_task_whose_key_is_held_is_decided_from_the_holder(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch, on_duplicate: str
) -> None:
    await store.tasks_insert(TasksInsert([NewTask("a", "job", b"1", dedup_key="k")]))
    seen = _statements(monkeypatch)
    dup = TasksInsert([NewTask("b", "job", b"2", dedup_key="k")], on_duplicate)
    if on_duplicate == "reject":
        with pytest.raises(DuplicateTask) as err:
            await store.tasks_insert(dup)
        assert err.value.existing_id == "a"
    else:
        [out] = await store.tasks_insert(dup)
        want = InsertStatus.REPLACED if on_duplicate == "replace" else InsertStatus.SKIPPED
        assert (out.id, out.status) == ("a", want)
    # The insert that found the key held is not run again before the lookup.
    assert seen[:2] == [store._q.tasks_insert, store._q.dedup_lookup]
    assert await store.task_get("b") is None
    held = await store.task_get("a")
    assert held is not None and held.payload == (b"2" if on_duplicate == "replace" else b"1")


async def test_one_keyed_task_takes_a_key_its_holder_freed(store: PostgresStore) -> None:
    await store.tasks_insert(TasksInsert([NewTask("a", "job", b"1", dedup_key="k")]))
    [row] = await store.tasks_claim(TasksClaim("w", ["default"], ["job"], 1, 30_000))
    await store.tasks_finish(TasksFinish([Finish(row.id, row.lease_epoch, State.COMPLETED)]))
    [out] = await store.tasks_insert(TasksInsert([NewTask("b", "job", b"2", dedup_key="k")]))
    assert (out.id, out.status) == ("b", InsertStatus.INSERTED)


async def test_one_result_is_read_by_its_key_not_an_array(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.tasks_insert(TasksInsert([NewTask("a", "job", b"1"), NewTask("b", "job", b"2")]))
    for _ in range(2):
        [row] = await store.tasks_claim(TasksClaim("w", ["default"], ["job"], 1, 30_000))
        await store.tasks_finish(
            TasksFinish([Finish(row.id, row.lease_epoch, State.COMPLETED, result=b'"r"')])
        )
    seen = _statements(monkeypatch)
    [one] = await store.results_get(["a"])
    assert seen == [store._q.result_get]
    both = await store.results_get(["a", "b", "missing"])
    assert seen[1:] == [store._q.results_get]
    assert one in both and len(both) == 2
    assert (one.task_id, one.state, one.result) == ("a", State.COMPLETED, b'"r"')
    assert await store.results_get(["missing"]) == []
