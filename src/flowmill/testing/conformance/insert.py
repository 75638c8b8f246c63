"""Conformance: `tasks_insert` — ready vs scheduled, ttl, round-trips, batches, dedup."""

from __future__ import annotations

import asyncio

import pytest

from ..._states import Phase, State
from ...errors import DuplicateTask, FlowmillError
from ...store.contract import Store
from ...store.contract.tasks import (
    InsertOutcome,
    InsertStatus,
    TasksExpire,
    TasksInsert,
)
from ._util import (
    ERR,
    KIND,
    T0,
    add,
    all_events,
    claim,
    claim_one,
    finish,
    get,
    insert,
    make_state,
    state_of,
    task,
)

AWKWARD = [
    "plain",
    'it\'s "quoted"',
    "semi;colon",
    "'; DROP TABLE x; --",
    '"); DELETE FROM fm_tasks; --',
    "emoji 🚀🔥 and ünïcödé 中文 עברית",
    "back\\slash % _ * ? [a-z]",
    "tab\tnew\nline\r\n",
    " leading and trailing ",
    "null\x00byte",
    "x" * 2000,
]


class TasksInsertConformance:
    """`tasks_insert`: the state a task starts in and everything it carries."""

    async def test_insert_is_ready_without_delay(self, store: Store) -> None:
        t = task(priority=3, max_attempts=7, timeout_ms=1234, retry_policy=b'{"k": 1}')
        assert await insert(store, t) == [InsertOutcome(t.id, InsertStatus.INSERTED)]
        rec = await get(store, t.id)
        assert rec.state is State.READY
        assert rec.phase is Phase.EXECUTE
        assert (rec.kind, rec.queue, rec.priority, rec.payload) == (KIND, "default", 3, t.payload)
        assert (rec.attempts, rec.max_attempts, rec.timeout_ms) == (0, 7, 1234)
        assert (rec.lease_epoch, rec.lease_owner, rec.lease_expires_at_ms) == (0, None, None)
        assert rec.result is None and rec.error is None and not rec.cancel_requested
        assert rec.progress_pct is None and rec.progress_message is None
        assert rec.created_at_ms == T0 and rec.updated_at_ms == T0
        assert rec.expires_at_ms is None and rec.started_at_ms is None
        assert rec.finished_at_ms is None
        assert rec.run_at_ms is None or rec.run_at_ms <= T0
        row = await claim_one(store)
        assert row.retry_policy == b'{"k": 1}'

    async def test_insert_with_delay_is_scheduled(self, store: Store) -> None:
        task_id = await add(store, delay_ms=5_000)
        rec = await get(store, task_id)
        assert rec.state is State.SCHEDULED
        assert rec.run_at_ms == T0 + 5_000
        assert await claim(store, now=T0 + 4_999) == []

    async def test_insert_with_zero_delay_is_ready(self, store: Store) -> None:
        assert await state_of(store, await add(store, delay_ms=0)) is State.READY

    @pytest.mark.parametrize(
        ("offset", "expected"),
        [
            (-60_000, State.READY),
            (0, State.READY),
            (1, State.SCHEDULED),
            (3_600_000, State.SCHEDULED),
        ],
    )
    async def test_insert_with_run_at(self, store: Store, offset: int, expected: State) -> None:
        task_id = await add(store, run_at_ms=T0 + offset)
        rec = await get(store, task_id)
        assert rec.state is expected
        if expected is State.SCHEDULED:
            assert rec.run_at_ms == T0 + offset

    async def test_ttl_sets_expires_at(self, store: Store) -> None:
        rec = await get(store, await add(store, ttl_ms=10_000))
        assert rec.expires_at_ms == T0 + 10_000
        assert rec.state is State.READY

    async def test_fields_round_trip(self, store: Store) -> None:
        parent = await add(store, kind="parent")
        payload = bytes(range(256)) * 4
        t = task(
            payload=payload,
            queue="emails",
            priority=-5,
            key="k-1",
            tags={"tenant": "acme", "empty": ""},
            parent_id=parent,
        )
        await insert(store, t)
        rec = await get(store, t.id)
        assert rec.payload == payload
        assert (rec.queue, rec.priority, rec.dedup_key, rec.parent_id) == (
            "emails",
            -5,
            "k-1",
            parent,
        )
        assert rec.tags == {"tenant": "acme", "empty": ""}
        assert (await get(store, parent)).tags == {}
        row = await claim_one(store, queues=("emails",))
        assert (row.payload, row.parent_id, row.priority) == (payload, parent, -5)

    @pytest.mark.parametrize("text", AWKWARD)
    async def test_awkward_strings_round_trip(self, store: Store, text: str) -> None:
        t = task(
            kind=f"kind {text}",
            queue=f"queue {text}",
            key=f"key {text}",
            tags={text: text, "k": text},
            payload=text.encode(),
        )
        assert (await insert(store, t))[0].status is InsertStatus.INSERTED
        rec = await get(store, t.id)
        assert rec.kind == f"kind {text}"
        assert rec.queue == f"queue {text}"
        assert rec.dedup_key == f"key {text}"
        assert rec.tags == {text: text, "k": text}
        assert rec.payload == text.encode()
        # the same key again is recognised, byte for byte
        again = task(kind=t.kind, queue=t.queue, key=t.dedup_key)
        assert await insert(store, again) == [InsertOutcome(t.id, InsertStatus.SKIPPED)]
        row = await claim_one(store, kinds=(t.kind,), queues=(t.queue,))
        assert row.id == t.id and row.kind == t.kind and row.queue == t.queue

    async def test_awkward_task_id_round_trips(self, store: Store) -> None:
        for text in AWKWARD[:6]:
            t = task(id=f"id {text}")
            await insert(store, t)
            assert (await get(store, t.id)).id == t.id

    async def test_outcomes_follow_input_order(self, store: Store) -> None:
        existing = await add(store, key="dup")
        tasks = [task(), task(key="dup"), task(delay_ms=10), task(key="other")]
        out = await insert(store, *tasks)
        assert [o.id for o in out] == [tasks[0].id, existing, tasks[2].id, tasks[3].id]
        assert [o.status for o in out] == [
            InsertStatus.INSERTED,
            InsertStatus.SKIPPED,
            InsertStatus.INSERTED,
            InsertStatus.INSERTED,
        ]

    async def test_empty_batch(self, store: Store) -> None:
        assert await insert(store) == []
        assert await store.tasks_count() == []

    async def test_ten_thousand_tasks_in_one_call(self, store: Store) -> None:
        tasks = [task(payload=b"%d" % i, key=f"k{i}" if i % 2 else None) for i in range(10_000)]
        out = await insert(store, *tasks)
        assert [o.id for o in out] == [t.id for t in tasks]
        assert {o.status for o in out} == {InsertStatus.INSERTED}
        counts = await store.tasks_count()
        assert [(c.queue, c.state, c.count) for c in counts] == [("default", State.READY, 10_000)]
        assert (await get(store, tasks[9_999].id)).payload == b"9999"
        first = await claim(store, limit=3)
        assert [r.id for r in first] == [t.id for t in tasks[:3]]

    async def test_duplicate_task_id_is_refused_and_batch_rolled_back(self, store: Store) -> None:
        first = await add(store)
        fresh = task()
        with pytest.raises(FlowmillError):
            await insert(store, fresh, task(id=first))
        assert await store.task_get(fresh.id) is None

    async def test_insert_records_an_event(self, store: Store) -> None:
        ready = await add(store)
        scheduled = await add(store, delay_ms=10)
        events = {e.task_id: e for e in await all_events(store)}
        assert events[ready].state is State.READY and events[ready].kind == KIND
        assert events[scheduled].state is State.SCHEDULED
        assert events[ready].at_ms == T0


class TasksInsertDedupConformance:
    """`tasks_insert` with dedup keys: one active task per (kind, key), under every
    on_duplicate policy."""

    async def test_skip_returns_existing(self, store: Store) -> None:
        first = task(key="k", payload=b"1")
        await insert(store, first)
        second = task(key="k", payload=b"2")
        out = await insert(store, second, on_duplicate="skip")
        assert out == [InsertOutcome(first.id, InsertStatus.SKIPPED)]
        assert await store.task_get(second.id) is None
        assert (await get(store, first.id)).payload == b"1"

    async def test_skip_is_the_default(self, store: Store) -> None:
        first = await add(store, key="k")
        out = await store.tasks_insert(TasksInsert([task(key="k")], now_ms=T0))
        assert out == [InsertOutcome(first, InsertStatus.SKIPPED)]

    async def test_replace_updates_a_ready_task(self, store: Store) -> None:
        first = task(key="k", payload=b"1", tags={"a": "1"})
        await insert(store, first)
        second = task(key="k", payload=b"2", priority=9, tags={"b": "2"}, max_attempts=9)
        out = await insert(store, second, on_duplicate="replace", now=T0 + 5)
        assert out == [InsertOutcome(first.id, InsertStatus.REPLACED)]
        assert await store.task_get(second.id) is None
        rec = await get(store, first.id)
        assert (rec.state, rec.payload, rec.priority) == (State.READY, b"2", 9)
        assert (rec.tags, rec.max_attempts) == ({"b": "2"}, 9)
        row = await claim_one(store, now=T0 + 5)
        assert (row.id, row.payload) == (first.id, b"2")

    async def test_replace_updates_a_scheduled_task(self, store: Store) -> None:
        first = await add(store, key="k", delay_ms=60_000)
        out = await insert(
            store, task(key="k", delay_ms=1_000, payload=b"2"), on_duplicate="replace"
        )
        assert out == [InsertOutcome(first, InsertStatus.REPLACED)]
        rec = await get(store, first)
        assert (rec.state, rec.run_at_ms, rec.payload) == (State.SCHEDULED, T0 + 1_000, b"2")
        # replaced with no delay: ready at once
        out = await insert(store, task(key="k", payload=b"3"), on_duplicate="replace")
        assert out == [InsertOutcome(first, InsertStatus.REPLACED)]
        assert (await claim_one(store)).payload == b"3"

    async def test_replace_skips_a_running_task(self, store: Store) -> None:
        first = await add(store, key="k", payload=b"1")
        row = await claim_one(store)
        out = await insert(store, task(key="k", payload=b"2"), on_duplicate="replace")
        assert out == [InsertOutcome(first, InsertStatus.SKIPPED)]
        rec = await get(store, first)
        assert (rec.state, rec.payload, rec.lease_epoch) == (State.RUNNING, b"1", row.lease_epoch)

    async def test_reject_raises_and_stores_nothing_from_the_call(self, store: Store) -> None:
        existing = await add(store, key="k")
        other = await add(store, key="other", payload=b"old")
        before = await store.tasks_count()
        fresh1, dup, fresh2 = task(), task(key="k"), task(key="new")
        with pytest.raises(DuplicateTask) as info:
            await insert(store, fresh1, dup, fresh2, on_duplicate="reject")
        assert info.value.key == "k" and info.value.existing_id == existing
        for t in (fresh1, dup, fresh2):
            assert await store.task_get(t.id) is None
        assert await store.tasks_count() == before
        # the key of fresh2 was not taken by the rolled-back call
        assert (await insert(store, task(key="new")))[0].status is InsertStatus.INSERTED
        assert (await get(store, other)).payload == b"old"

    async def test_reject_with_no_duplicate_inserts(self, store: Store) -> None:
        out = await insert(store, task(key="a"), task(key="b"), on_duplicate="reject")
        assert [o.status for o in out] == [InsertStatus.INSERTED] * 2

    async def test_duplicates_inside_one_batch(self, store: Store) -> None:
        a, b, c = task(key="k", payload=b"1"), task(key="k", payload=b"2"), task(key="k")
        out = await insert(store, a, b, c)
        assert out == [
            InsertOutcome(a.id, InsertStatus.INSERTED),
            InsertOutcome(a.id, InsertStatus.SKIPPED),
            InsertOutcome(a.id, InsertStatus.SKIPPED),
        ]
        assert (await get(store, a.id)).payload == b"1"
        assert await store.task_get(b.id) is None

    async def test_duplicates_inside_one_batch_rejected(self, store: Store) -> None:
        a, b = task(key="k"), task(key="k")
        with pytest.raises(DuplicateTask):
            await insert(store, a, b, on_duplicate="reject")
        assert await store.task_get(a.id) is None
        assert await store.tasks_count() == []

    async def test_duplicates_inside_one_batch_replaced(self, store: Store) -> None:
        # A batch behaves like its tasks inserted one after another in one transaction.
        a, b = task(key="k", payload=b"1"), task(key="k", payload=b"2", priority=4)
        out = await insert(store, a, b, on_duplicate="replace")
        assert out == [
            InsertOutcome(a.id, InsertStatus.INSERTED),
            InsertOutcome(a.id, InsertStatus.REPLACED),
        ]
        rec = await get(store, a.id)
        assert (rec.payload, rec.priority) == (b"2", 4)
        assert await store.task_get(b.id) is None

    async def test_same_key_for_different_kinds_does_not_collide(self, store: Store) -> None:
        a, b = task(kind="a", key="k"), task(kind="b", key="k")
        out = await insert(store, a, b, on_duplicate="reject")
        assert [o.status for o in out] == [InsertStatus.INSERTED] * 2
        assert [o.id for o in out] == [a.id, b.id]

    @pytest.mark.parametrize(
        "end", [State.COMPLETED, State.FAILED, State.DEAD_LETTERED, State.CANCELLED]
    )
    async def test_key_is_free_once_task_is_terminal(self, store: Store, end: State) -> None:
        old = await make_state(store, end, key="k")
        out = await insert(store, task(key="k"), on_duplicate="reject")
        assert out[0].status is InsertStatus.INSERTED and out[0].id != old
        assert await state_of(store, old) is end

    async def test_key_is_free_once_task_expired(self, store: Store) -> None:
        old = await add(store, key="k", ttl_ms=10)
        assert await store.tasks_expire(TasksExpire(now_ms=T0 + 10)) == 1
        out = await insert(store, task(key="k"), on_duplicate="reject", now=T0 + 10)
        assert out[0].status is InsertStatus.INSERTED and out[0].id != old

    async def test_key_held_while_running_or_scheduled(self, store: Store) -> None:
        scheduled = await add(store, kind="s", key="k", delay_ms=1_000)
        running = await make_state(store, State.RUNNING, kind="r", key="k")
        with pytest.raises(DuplicateTask):
            await insert(store, task(kind="s", key="k"), on_duplicate="reject")
        with pytest.raises(DuplicateTask):
            await insert(store, task(kind="r", key="k"), on_duplicate="reject")
        assert await state_of(store, scheduled) is State.SCHEDULED
        assert await state_of(store, running) is State.RUNNING

    async def test_key_held_across_a_retry(self, store: Store) -> None:
        task_id = await add(store, key="k")
        row = await claim_one(store)
        await finish(store, task_id, row.lease_epoch, State.SCHEDULED, delay_ms=10, error=ERR)
        out = await insert(store, task(key="k"))
        assert out == [InsertOutcome(task_id, InsertStatus.SKIPPED)]

    async def test_concurrent_inserts_with_the_same_key(self, store: Store) -> None:
        tasks = [task(key="same", payload=b"%d" % i) for i in range(50)]
        results = await asyncio.gather(*(insert(store, t) for t in tasks))
        outcomes = [r[0] for r in results]
        inserted = [o for o in outcomes if o.status is InsertStatus.INSERTED]
        assert len(inserted) == 1
        winner = inserted[0].id
        assert all(o.id == winner for o in outcomes)
        assert sum(o.status is InsertStatus.SKIPPED for o in outcomes) == 49
        counts = await store.tasks_count()
        assert sum(c.count for c in counts) == 1

    async def test_concurrent_rejects_with_the_same_key(self, store: Store) -> None:
        tasks = [task(key="same") for _ in range(20)]
        results = await asyncio.gather(
            *(insert(store, t, on_duplicate="reject") for t in tasks), return_exceptions=True
        )
        ok = [r for r in results if isinstance(r, list)]
        refused = [r for r in results if isinstance(r, DuplicateTask)]
        assert len(ok) == 1 and len(refused) == 19
        assert all(r.existing_id == ok[0][0].id for r in refused)
