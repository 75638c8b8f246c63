"""Conformance: output frames (`frames_append`, `frames_read`, `wait_for_frames`)."""

from __future__ import annotations

import asyncio

import pytest

from ..._conditions import Signal
from ..._states import State
from ...errors import FrameTooLarge, LeaseLost, PayloadError, TaskNotFound
from ...store.contract import Store
from ...store.contract.signals import (
    MAX_FRAME_BYTES,
    FrameAppend,
    FrameRef,
    FramesRead,
)
from ._util import (
    ERR,
    T0,
    add,
    claim_one,
    finish,
)
from ._waiting import (
    append,
    deliver,
    running,
    suspend,
    waitpoint,
)
from .wake import wait_until_woken


class FramesAppendConformance:
    """`frames_append` (read back with `frames_read`)."""

    async def test_append_and_read(self, store: Store) -> None:
        row = await running(store)
        refs = [
            await store.frames_append(
                FrameAppend(row.id, row.lease_epoch, "token", f"f{i}".encode(), None, T0 + i)
            )
            for i in range(5)
        ]
        assert refs == [FrameRef(1, i) for i in range(1, 6)]
        meta = await append(store, row, b"\x00\xff", frame_type="bin", metadata=b'{"a": 1}')
        assert meta == FrameRef(1, 6)
        page = await store.frames_read(FramesRead(row.id))
        assert (page.attempt, page.live) == (1, True)
        assert [(f.seq, f.frame_type, f.payload, f.at_ms) for f in page.frames[:5]] == [
            (i + 1, "token", f"f{i}".encode(), T0 + i) for i in range(5)
        ]
        last = page.frames[5]
        assert (last.frame_type, last.payload, last.metadata) == ("bin", b"\x00\xff", b'{"a": 1}')
        assert page.frames[0].metadata is None
        # Paging: after a seq, up to a limit.
        part = await store.frames_read(FramesRead(row.id, 1, after=2, limit=2))
        assert [f.seq for f in part.frames] == [3, 4]
        rest = await store.frames_read(FramesRead(row.id, None, after=4, limit=100))
        assert [f.seq for f in rest.frames] == [5, 6]
        assert (await store.frames_read(FramesRead(row.id, after=6))).frames == []
        await finish(store, row.id, row.lease_epoch, State.COMPLETED, result=b"1")
        done = await store.frames_read(FramesRead(row.id))
        assert (done.attempt, done.live, len(done.frames)) == (1, False, 6)

    async def test_concurrent_appends_get_gapless_sequence_numbers(self, store: Store) -> None:
        row = await running(store)
        refs = await asyncio.gather(*(append(store, row, str(i).encode()) for i in range(200)))
        assert sorted(r.seq for r in refs) == list(range(1, 201))
        assert {r.attempt for r in refs} == {1}
        by_seq = {r.seq: str(i).encode() for i, r in enumerate(refs)}
        frames = []
        after = 0
        while page := (await store.frames_read(FramesRead(row.id, after=after, limit=64))).frames:
            frames.extend(page)
            after = page[-1].seq
        assert [f.seq for f in frames] == list(range(1, 201))
        assert [f.payload for f in frames] == [by_seq[s] for s in range(1, 201)]

    async def test_append_is_fenced(self, store: Store) -> None:
        task_id = await add(store)
        first = await claim_one(store)
        await finish(store, task_id, first.lease_epoch, State.READY, error=ERR)
        second = await claim_one(store)
        with pytest.raises(LeaseLost):
            await append(store, first)
        assert (await store.frames_read(FramesRead(task_id))).frames == []
        await finish(store, task_id, second.lease_epoch, State.COMPLETED, result=b"1")
        with pytest.raises(LeaseLost):
            await append(store, second)
        with pytest.raises(LeaseLost):
            await store.frames_append(FrameAppend("no-such-task", 1, "log", b"x"))
        page = await store.frames_read(FramesRead(task_id))
        assert (page.attempt, page.frames, page.live) == (2, [], False)

    async def test_frame_too_large(self, store: Store) -> None:
        row = await running(store)
        with pytest.raises(FrameTooLarge) as info:
            await append(store, row, b"x" * (MAX_FRAME_BYTES + 1))
        assert isinstance(info.value, PayloadError)
        assert (info.value.size, info.value.limit) == (MAX_FRAME_BYTES + 1, MAX_FRAME_BYTES)
        assert (await store.frames_read(FramesRead(row.id))).frames == []
        assert await append(store, row, b"x" * MAX_FRAME_BYTES) == FrameRef(1, 1)

    async def test_a_suspended_attempt_goes_on_after_the_resume(self, store: Store) -> None:
        row = await running(store)
        wp = await waitpoint(store, row)
        await append(store, row, b"before")
        await suspend(store, row, Signal("go", wp))
        page = await store.frames_read(FramesRead(row.id))
        assert (page.attempt, page.live) == (1, False)
        await deliver(store, wp, "go")
        again = await claim_one(store)
        assert await append(store, again, b"after") == FrameRef(1, 2)
        page = await store.frames_read(FramesRead(row.id))
        assert (page.attempt, [f.payload for f in page.frames], page.live) == (
            1,
            [b"before", b"after"],
            True,
        )


class FramesReadConformance:
    """`frames_read`: attempts and the latest one."""

    async def test_attempts_and_the_latest_one(self, store: Store) -> None:
        task_id = await add(store)
        empty = await store.frames_read(FramesRead(task_id))
        assert (empty.attempt, empty.frames, empty.live) == (None, [], False)
        first = await claim_one(store)
        assert (await store.frames_read(FramesRead(task_id))).attempt == 1
        await append(store, first, b"a1")
        await append(store, first, b"a2")
        await finish(store, task_id, first.lease_epoch, State.READY, error=ERR)
        second = await claim_one(store)
        # The new attempt has no frames yet: the latest attempt with frames is read.
        page = await store.frames_read(FramesRead(task_id))
        assert (page.attempt, [f.payload for f in page.frames], page.live) == (
            1,
            [b"a1", b"a2"],
            False,
        )
        assert await append(store, second, b"b1") == FrameRef(2, 1)
        page = await store.frames_read(FramesRead(task_id))
        assert (page.attempt, [f.payload for f in page.frames], page.live) == (2, [b"b1"], True)
        old = await store.frames_read(FramesRead(task_id, attempt=1))
        assert (old.attempt, len(old.frames), old.live) == (1, 2, False)
        none = await store.frames_read(FramesRead(task_id, attempt=7))
        assert (none.attempt, none.frames, none.live) == (7, [], False)
        with pytest.raises(TaskNotFound):
            await store.frames_read(FramesRead("no-such-task"))


class WaitForFramesConformance:
    """`wait_for_frames`."""

    async def test_wait_for_frames(self, store: Store) -> None:
        now = await store.now_ms()
        row = await running(store, now)
        await wait_until_woken(store.wait_for_frames, lambda: append(store, row))
        for _ in range(2):
            await asyncio.wait_for(store.wait_for_frames(0.01), 5.0)
