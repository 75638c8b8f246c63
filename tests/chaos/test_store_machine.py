"""A hypothesis state machine over the store contract, on every backend.

Workers claim, renew, finish (right and with stale leases), the reaper reclaims, an
operator cancels and retries, and time jumps around a lease's TTL. After every step: at
most one live lease per task, lease epochs only grow, terminal states absorb.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

import flowmill as fm
from flowmill.store import open_store
from flowmill.store.contract import Store
from flowmill.store.contract.tasks import (
    ErrorInfo,
    Finish,
    FinishStatus,
    LeaseRef,
    LeasesExpired,
    LeasesRenew,
    NewTask,
    TaskCancel,
    TaskRetry,
    TasksClaim,
    TasksFinish,
    TasksInsert,
)

from . import _ledger
from ._loop import LoopThread

pytestmark = pytest.mark.chaos

TTL_MS = 10_000
KIND = "k"


class StoreMachine(RuleBasedStateMachine):
    """One instance per example; each example works in a queue of its own."""

    store: Store
    loop: LoopThread
    book: _ledger.Ledger

    def __init__(self) -> None:
        super().__init__()
        self.queue = f"q{os.urandom(6).hex()}"
        self.now = 1_900_000_000_000
        self.held: list[LeaseRef] = []  # every lease ever handed out, stale ones included
        self.seen: dict[str, tuple[fm.State, int]] = {}  # task -> (state, epoch) last seen

    tasks = Bundle("tasks")

    def _call(self, job: Any) -> Any:
        return self.loop.call(job)

    @rule(target=tasks, max_attempts=st.integers(1, 3))
    def insert(self, max_attempts: int) -> str:
        task_id = f"t{os.urandom(8).hex()}"
        new = NewTask(task_id, KIND, b"null", queue=self.queue, max_attempts=max_attempts)
        self._call(self.store.tasks_insert(TasksInsert([new], now_ms=self.now)))
        self.book.tasks += 1
        return task_id

    @rule(limit=st.integers(1, 3), worker=st.sampled_from(["w1", "w2"]))
    def claim(self, limit: int, worker: str) -> None:
        rows = self._call(
            self.store.tasks_claim(
                TasksClaim(worker, [self.queue], [KIND], limit, TTL_MS, now_ms=self.now)
            )
        )
        self.held += [LeaseRef(r.id, r.lease_epoch) for r in rows]
        self.book.extra["claims"] = self.book.extra.get("claims", 0) + len(rows)

    @rule(ms=st.sampled_from([1, 1_000, TTL_MS - 1, TTL_MS, TTL_MS + 1, 3 * TTL_MS]))
    def advance(self, ms: int) -> None:
        self.now += ms

    @rule()
    def renew_all(self) -> None:
        """Renew every lease ever handed out: the store honours at most one per task."""
        if not self.held:
            return
        out = self._call(
            self.store.leases_renew(LeasesRenew(list(self.held), TTL_MS, now_ms=self.now))
        )
        live: dict[str, int] = {}
        for o in out:
            live[o.task_id] = live.get(o.task_id, 0) + int(o.held)
        assert max(live.values(), default=0) <= 1, live
        self.book.extra["renewed"] = self.book.extra.get("renewed", 0) + sum(live.values())

    @rule(
        data=st.data(),
        target_state=st.sampled_from(
            [fm.State.COMPLETED, fm.State.FAILED, fm.State.READY, fm.State.SCHEDULED]
        ),
        release=st.booleans(),
    )
    def finish(self, data: st.DataObject, target_state: fm.State, release: bool) -> None:
        if not self.held:
            return
        lease = data.draw(st.sampled_from(self.held))
        before = self._call(self.store.task_get(lease.task_id))
        item = Finish(
            lease.task_id,
            lease.epoch,
            target_state,
            result=b"1" if target_state is fm.State.COMPLETED else None,
            error=ErrorInfo("E", "boom", "error") if target_state is fm.State.FAILED else None,
            delay_ms=1_000 if target_state is fm.State.SCHEDULED else None,
            release=release and target_state is fm.State.READY,
        )
        [out] = self._call(self.store.tasks_finish(TasksFinish([item], now_ms=self.now)))
        fenced = before.state is not fm.State.RUNNING or before.lease_epoch != lease.epoch
        if fenced:  # a stale lease (a zombie's) changes nothing
            assert out.status in (FinishStatus.LEASE_LOST, FinishStatus.ALREADY), out
            after = self._call(self.store.task_get(lease.task_id))
            assert (after.state, after.lease_epoch) == (before.state, before.lease_epoch)
            self.book.extra["zombie_writes"] = self.book.extra.get("zombie_writes", 0) + 1
        else:
            assert out.status is FinishStatus.APPLIED, out

    @rule()
    def reap(self) -> None:
        expired = self._call(self.store.leases_expired(LeasesExpired(now_ms=self.now)))
        mine = [e for e in expired if e.kind == KIND and e.task_id in self.seen]
        items = [
            Finish(
                e.task_id,
                e.epoch,
                fm.State.READY if e.attempt < e.max_attempts else fm.State.FAILED,
                error=ErrorInfo("LeaseExpired", "lease expired", "lease"),
                expired_lease=True,
            )
            for e in mine
        ]
        if items:
            self._call(self.store.tasks_finish(TasksFinish(items, now_ms=self.now)))
            self.book.kills += len(items)

    @rule(task_id=tasks)
    def cancel(self, task_id: str) -> None:
        self._call(self.store.task_cancel(TaskCancel(task_id, now_ms=self.now)))

    @rule(task_id=tasks)
    def operator_retry(self, task_id: str) -> None:
        record = self._call(self.store.task_get(task_id))
        if record.state in (fm.State.FAILED, fm.State.DEAD_LETTERED):
            self._call(self.store.task_retry(TaskRetry(task_id, now_ms=self.now)))
            self.seen.pop(task_id, None)  # a replay is the operator's deliberate exception

    @invariant()
    def epochs_grow_and_terminals_absorb(self) -> None:
        page = self._call(self.store.tasks_list(_list_queue(self.queue)))
        for record in page:
            state, epoch = record.state, record.lease_epoch
            if record.id in self.seen:
                was_state, was_epoch = self.seen[record.id]
                assert epoch >= was_epoch, (record.id, was_epoch, epoch)
                if was_state.terminal:
                    assert state is was_state, (record.id, was_state, state)
            if state is fm.State.RUNNING:
                assert record.lease_owner is not None
            self.seen[record.id] = (state, epoch)


def _list_queue(queue: str) -> Any:
    from flowmill.store.contract.tasks import TasksList

    return TasksList(queue=queue, limit=1000)


@pytest.mark.parametrize("examples", [60, pytest.param(300, marks=pytest.mark.long)])
def test_store_state_machine(db_url: str, seed: int, examples: int) -> None:
    loop = LoopThread()
    store = open_store(db_url)
    loop.call(store.open())
    book = _ledger.start("store_state_machine", db_url, seed)
    try:

        class Machine(StoreMachine):
            pass

        Machine.store, Machine.loop, Machine.book = store, loop, book
        run_state_machine_as_test(
            hypothesis_seed(seed)(Machine),  # a class takes the seed as a test does
            settings=settings(
                max_examples=examples,
                stateful_step_count=30,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        loop.call(store.close())
        loop.close()
