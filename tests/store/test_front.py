"""StoreFront, the one door to a store: guards, telemetry events, error translation."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from flowmill._states import State
from flowmill.errors import (
    ConfigurationError,
    FrameTooLarge,
    InvalidUsage,
    LeaseLost,
    StoreError,
)
from flowmill.store import _front
from flowmill.store._front import OPERATIONS, StoreEvent, StoreFront
from flowmill.store.contract import Store
from flowmill.store.contract.budgets import BudgetDefine, BudgetUsage, ClaimLimit
from flowmill.store.contract.capabilities import Capabilities
from flowmill.store.contract.dag import DepsReconcile, WorkflowsList
from flowmill.store.contract.signals import FrameAppend, SuspensionsExpire
from flowmill.store.contract.tasks import (
    ChildrenPage,
    EventsRead,
    Finish,
    HooksClaim,
    LeaseRef,
    LeasesExpired,
    LeasesRenew,
    NewTask,
    TasksClaim,
    TasksExpire,
    TasksFinish,
    TasksInsert,
    TasksList,
    TasksPromote,
)
from flowmill.store.sqlite import SQLiteStore
from flowmill.testing import StoreConformance


class Backend:
    """A backend double: records each call that reaches it; `fail` makes the next raise."""

    url = "fake://"
    capabilities = Capabilities(durable=False, local_file=False)

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail: BaseException | None = None

    def _called(self, op: str) -> None:
        self.calls.append(op)
        if self.fail is not None:
            raise self.fail

    async def open(self) -> None:
        self._called("open")

    async def tasks_insert(self, p: TasksInsert) -> list[Any]:
        self._called("tasks_insert")
        return ["inserted"]

    async def tasks_claim(self, p: TasksClaim) -> list[Any]:
        self._called("tasks_claim")
        return ["claimed"]

    async def tasks_finish(self, p: TasksFinish) -> list[Any]:
        self._called("tasks_finish")
        return ["finished"]

    async def task_get(self, task_id: str) -> None:
        self._called("task_get")

    async def results_get(self, task_ids: Sequence[str]) -> list[Any]:
        self._called("results_get")
        return []

    async def frames_append(self, p: FrameAppend) -> object:
        self._called("frames_append")
        return "ref"

    async def budget_define(self, p: BudgetDefine) -> object:
        self._called("budget_define")
        return "row"

    async def budget_report_usage(self, p: BudgetUsage) -> object:
        self._called("budget_report_usage")
        return "report"


def _recorded(op: str) -> Any:
    async def call(self: Backend, *args: object) -> object:
        self._called(op)
        return None

    return call


for _op in OPERATIONS:  # every other operation: recorded, answering None
    if not hasattr(Backend, _op):
        setattr(Backend, _op, _recorded(_op))


class Partial(Backend):
    """A backend without one operation."""

    workflows_list = None


def front_of(backend: Backend) -> StoreFront:
    return StoreFront(cast(Store, backend))


def claim(**changes: Any) -> TasksClaim:
    args: dict[str, Any] = {
        "worker_id": "w", "queues": ["q"], "kinds": ["k"], "limit": 1, "lease_ttl_ms": 1000
    }  # fmt: skip
    args.update(changes)
    return TasksClaim(**args)


def test_operations_are_the_contracts() -> None:
    contract = {
        name
        for name, member in inspect.getmembers(Store)
        if not name.startswith("_") and inspect.iscoroutinefunction(member)
    }
    assert set(OPERATIONS) == contract
    assert len(OPERATIONS) == len(set(OPERATIONS))
    for op in OPERATIONS:  # one explicit method per operation
        assert inspect.iscoroutinefunction(getattr(StoreFront, op)), op


def test_a_front_is_a_store_and_never_wraps_a_front() -> None:
    backend = Backend()
    front = front_of(backend)
    assert isinstance(front, Store)
    assert front.url == "fake://"
    assert StoreFront(front).backend is backend


async def test_calls_that_ask_for_nothing_answer_without_the_backend() -> None:
    backend = Backend()
    front = front_of(backend)
    assert await front.tasks_insert(TasksInsert([])) == []
    for empty in (claim(limit=0), claim(limit=-1), claim(kinds=[]), claim(queues=[])):
        assert await front.tasks_claim(empty) == []
    assert await front.leases_renew(LeasesRenew([], 1000)) == []
    assert await front.tasks_finish(TasksFinish([])) == []
    assert await front.tasks_promote(TasksPromote(limit=0)) == 0
    assert await front.tasks_expire(TasksExpire(limit=0)) == 0
    assert await front.leases_expired(LeasesExpired(limit=0)) == []
    assert await front.tasks_list(TasksList(limit=0)) == []
    assert await front.results_get([]) == []
    assert await front.events_read(EventsRead(limit=0)) == []
    assert await front.children_page(ChildrenPage("p", limit=0)) == []
    assert await front.hooks_claim(HooksClaim("w", [], 5, 1000)) == []
    assert await front.hooks_claim(HooksClaim("w", ["k"], 0, 1000)) == []
    assert await front.suspensions_expire(SuspensionsExpire(limit=0)) == 0
    assert await front.workflows_list(WorkflowsList(limit=0)) == []
    assert await front.deps_reconcile(DepsReconcile(limit=0)) == 0
    assert backend.calls == []
    # An empty spawn still goes to the backend: its fence must be checked.
    assert await front.tasks_insert(TasksInsert([], fence=LeaseRef("t", 1))) == ["inserted"]
    assert await front.tasks_claim(claim()) == ["claimed"]
    assert backend.calls == ["tasks_insert", "tasks_claim"]


async def test_bad_arguments_fail_in_the_front_with_typed_errors() -> None:
    backend = Backend()
    front = front_of(backend)
    task = NewTask("t1", "k", b"{}")
    with pytest.raises(ConfigurationError, match="on_duplicate must be one of"):
        await front.tasks_insert(TasksInsert([task], on_duplicate="merge"))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="depends on itself"):
        await front.tasks_insert(TasksInsert([NewTask("t2", "k", b"{}", depends_on=["t2"])]))
    keyed = NewTask("t3", "k", b"{}", depends_on=["t1"], dedup_key="x")
    with pytest.raises(ConfigurationError, match="cannot replace a duplicate"):
        await front.tasks_insert(TasksInsert([keyed], on_duplicate="replace"))
    with pytest.raises(ConfigurationError, match="burst must be >= 1"):
        await front.tasks_claim(claim(limits=[ClaimLimit("kind", "k", per_second=1, burst=0)]))
    with pytest.raises(StoreError, match="cannot be finished as blocked"):
        await front.tasks_finish(TasksFinish([Finish("t1", 1, State.BLOCKED)]))
    with pytest.raises(StoreError, match="needs delay_ms or run_at_ms"):
        await front.tasks_finish(TasksFinish([Finish("t1", 1, State.SCHEDULED)]))
    with pytest.raises(FrameTooLarge):
        await front.frames_append(FrameAppend("t1", 1, "text", b"x" * (64 * 1024 + 1)))
    with pytest.raises(ConfigurationError, match="above its hard limit"):
        await front.budget_define(BudgetDefine("b", hard={"usd": 1}, soft={"usd": 2}))
    with pytest.raises(InvalidUsage, match="must be >= 0"):
        await front.budget_report_usage(BudgetUsage("t1", 1, "b", {"usd": -1}))
    with pytest.raises(ConfigurationError, match="tag_value needs tag_key"):
        await front.tasks_list(TasksList(tag_value="v"))
    assert backend.calls == []


async def test_one_event_per_operation_and_unsubscribe() -> None:
    backend = Backend()
    front = front_of(backend)
    events: list[StoreEvent] = []
    unsubscribe = front.subscribe(events.append)
    await front.tasks_claim(claim())
    await front.tasks_claim(claim(limit=0))  # answered by the front: still one event
    backend.fail = LeaseLost("t1", 3)
    with pytest.raises(LeaseLost):
        await front.tasks_finish(TasksFinish([Finish("t1", 3, State.COMPLETED)]))
    with pytest.raises(ConfigurationError):
        await front.tasks_insert(TasksInsert([], on_duplicate="nope"))  # type: ignore[arg-type]
    assert [(e.operation, e.outcome, e.error_type) for e in events] == [
        ("tasks_claim", "ok", None),
        ("tasks_claim", "ok", None),
        ("tasks_finish", "error", "LeaseLost"),
        ("tasks_insert", "error", "ConfigurationError"),
    ]
    assert all(e.duration_s >= 0 for e in events)
    unsubscribe()
    unsubscribe()  # twice is harmless
    backend.fail = None
    await front.tasks_claim(claim())
    assert len(events) == 4


async def test_unexpected_backend_errors_become_store_errors() -> None:
    backend = Backend()
    front = front_of(backend)
    events: list[StoreEvent] = []
    front.subscribe(events.append)
    boom = RuntimeError("disk on fire")
    backend.fail = boom
    with pytest.raises(StoreError, match="task_get failed: RuntimeError: disk on fire") as got:
        await front.task_get("t1")
    assert got.value.__cause__ is boom
    assert events[-1] == StoreEvent("task_get", events[-1].duration_s, "error", "StoreError")
    # Without subscribers too, and flowmill's own errors pass unchanged.
    front2 = front_of(backend)
    with pytest.raises(StoreError, match="task_get failed") as got:
        await front2.task_get("t1")
    assert got.value.__cause__ is boom
    lost = LeaseLost("t1", 1)
    backend.fail = lost
    with pytest.raises(LeaseLost) as lost_info:
        await front2.task_get("t1")
    assert lost_info.value is lost


async def test_without_subscribers_nothing_is_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_clock() -> float:
        raise AssertionError("timed while nobody subscribes")

    monkeypatch.setattr(_front, "perf_counter", no_clock)
    backend = Backend()
    front = front_of(backend)
    assert front._door("tasks_claim") is front._door("tasks_claim")  # shared, no allocation
    assert await front.tasks_claim(claim()) == ["claimed"]
    unsubscribe = front.subscribe(lambda e: None)
    with pytest.raises(AssertionError, match="timed while nobody"):
        await front.tasks_claim(claim())
    unsubscribe()
    assert await front.tasks_claim(claim()) == ["claimed"]


async def test_a_failing_subscriber_is_logged_and_the_call_stands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    front = front_of(Backend())
    seen: list[str] = []

    def broken(event: StoreEvent) -> None:
        raise ValueError("subscriber bug")

    front.subscribe(broken)
    front.subscribe(lambda e: seen.append(e.operation))
    with caplog.at_level(logging.ERROR, logger="flowmill.store"):
        assert await front.tasks_claim(claim()) == ["claimed"]
    assert seen == ["tasks_claim"]
    assert "subscriber failed" in caplog.text


async def test_an_operation_the_backend_lacks_fails_loudly() -> None:
    front = front_of(Partial())
    events: list[StoreEvent] = []
    front.subscribe(events.append)
    with pytest.raises(StoreError, match=r"\(Partial\) cannot do workflows_list"):
        await front.workflows_list(WorkflowsList())
    assert events == [StoreEvent("workflows_list", 0.0, "error", "StoreError")]


class TestTheFrontKeepsTheContract(StoreConformance):
    """The whole conformance suite through a StoreFront: the door changes no answer."""

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[StoreFront]:
        s = StoreFront(SQLiteStore(str(tmp_path / "flowmill.db")))
        await s.open()
        try:
            yield s
        finally:
            await s.close()
