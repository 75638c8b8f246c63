"""The engine below `App` runs on any `Runtime`: here a fake, with a store of two methods."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import flowmill as fm
from flowmill._limits import ClaimLimits
from flowmill._rows import Opts
from flowmill._submit import insert_tasks
from flowmill._task import TaskOptions, make_task_def
from flowmill.store.contract.dag import UpstreamRow
from flowmill.store.contract.tasks import (
    ClaimedRow,
    InsertOutcome,
    InsertStatus,
    ResultRow,
    TasksInsert,
)
from flowmill.workflows._when import Conditions, Upstream, check_condition


def double(n: int) -> int:
    return 2 * n


class FakeStore:
    def __init__(self) -> None:
        self.inserts: list[TasksInsert] = []
        self.upstreams: list[UpstreamRow] = []

    async def tasks_insert(self, p: TasksInsert) -> list[InsertOutcome]:
        self.inserts.append(p)
        return [InsertOutcome(t.id, InsertStatus.INSERTED) for t in p.tasks]

    async def upstream_get(self, task_id: str) -> list[UpstreamRow]:
        return self.upstreams


class FakeResults:
    async def wait(self, task_id: str, timeout_s: float | None) -> ResultRow:
        raise AssertionError("not awaited here")


class FakeRuntime:
    """Just what the engine reads: no App, no database."""

    def __init__(self) -> None:
        self.store: Any = FakeStore()
        self.clock = fm.ManualClock()
        self.tdef = make_task_def(double, TaskOptions(), 1 << 20)
        self.registry: Mapping[str, fm.TaskDef] = {self.tdef.name: self.tdef}
        self.max_payload_bytes = 1 << 20
        self.conditions = Conditions()
        self.results = FakeResults()
        self.opened = 0

    async def open(self) -> FakeRuntime:
        self.opened += 1
        return self

    def resolve_task(self, task: fm.TaskDef | str) -> fm.TaskDef:
        return self.registry[task.name if isinstance(task, fm.TaskDef) else task]

    def task_names(self) -> list[str]:
        return sorted(self.registry)

    def queues(self) -> set[str]:
        return {"default"}

    def claim_limits(self, queues: Iterable[str]) -> ClaimLimits:
        return ClaimLimits(self.registry, {}, queues)

    async def require_budget(self, budget_id: str) -> None:
        raise fm.UnknownBudget(budget_id)

    def decode_result(self, kind: str, data: bytes | None) -> Any:
        return None if data is None else json.loads(data)

    async def cancel(self, task_id: str, reason: str = "cancelled by operator") -> fm.State:
        return fm.State.CANCELLED


async def test_insert_tasks_builds_rows_and_handles_on_a_fake_runtime() -> None:
    rt = FakeRuntime()
    handles = await insert_tasks(rt, rt.tdef.name, [1, 2], opts=Opts(priority=5))
    [insert] = rt.store.inserts
    assert [t.payload for t in insert.tasks] == [b"1", b"2"]
    assert {t.priority for t in insert.tasks} == {5}
    assert [h.id for h in handles] == [t.id for t in insert.tasks]
    assert all(h.app is rt for h in handles)
    assert rt.opened == 1
    assert await handles[0].cancel() is fm.State.CANCELLED


async def test_a_when_condition_is_evaluated_through_the_runtime() -> None:
    rt = FakeRuntime()
    rt.store.upstreams = [UpstreamRow("t1", "k", "extract", fm.State.COMPLETED, b"3", None)]
    ref = rt.conditions.register("wf", "load", lambda up: up["extract"] > 5)
    row = ClaimedRow(
        "t2", "k", "default", 0, b"null", fm.Phase.EXECUTE, None, 1, 3, b"", None, 1, 0, None,
        condition=ref,
    )  # fmt: skip
    skipped = await check_condition(rt, row)
    assert skipped is not None and skipped.target is fm.State.SKIPPED
    up = Upstream(rt, rt.store.upstreams)
    assert up["extract"] == 3 and up.ok("extract")
