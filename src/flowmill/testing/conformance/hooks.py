"""Conformance: on_cancel hooks (`hooks_claim`, `hook_done`)."""

from __future__ import annotations

import pytest

from ..._states import State
from ...errors import LeaseLost
from ...store.contract import Store
from ...store.contract.tasks import (
    HookDone,
    HookRow,
    TaskCancel,
)
from ._parents import (
    MEMO,
    ORCH,
    ORCH2,
    hooks,
    kids,
    start,
    wait,
)
from ._util import (
    ERR,
    T0,
    TTL,
    finish,
    state_of,
)


class HooksClaimConformance:
    """`hooks_claim`: pending on_cancel hooks, leased, retried and fenced."""

    async def test_hooks_are_leased_retried_and_fenced(self, store: Store) -> None:
        parent = await start(store, has_on_cancel=True, payload=b'{"p": 1}')
        await kids(store, parent, 1)
        assert await wait(store, parent) is State.WAITING_CHILDREN
        await store.task_cancel(TaskCancel(parent.id, now_ms=T0))
        assert await hooks(store, kinds=(ORCH2,)) == []  # only the kinds asked for
        (h1,) = await hooks(store)
        assert h1 == HookRow(
            parent.id, ORCH, "on_cancel", b'{"p": 1}', MEMO, State.CANCELLED, h1.epoch, 1
        )
        assert h1.epoch > parent.lease_epoch
        assert await hooks(store, now=T0 + TTL - 1) == []  # leased
        await store.hook_done(HookDone(parent.id, h1.epoch, ok=False, max_attempts=3))
        (h2,) = await hooks(store)
        assert (h2.attempt, h2.epoch > h1.epoch) == (2, True)
        with pytest.raises(LeaseLost):
            await store.hook_done(HookDone(parent.id, h1.epoch, ok=True))
        # A hook whose lease expires (its worker died) is claimed again.
        (h3,) = await hooks(store, now=T0 + TTL + 1)
        assert h3.attempt == 3
        with pytest.raises(LeaseLost):
            await store.hook_done(HookDone(parent.id, h2.epoch, ok=True))
        await store.hook_done(HookDone(parent.id, h3.epoch, ok=False, max_attempts=3))
        assert await hooks(store, now=T0 + 3 * TTL) == []  # given up after 3 attempts
        with pytest.raises(LeaseLost):
            await store.hook_done(HookDone(parent.id, h3.epoch, ok=True))
        assert await state_of(store, parent.id) is State.CANCELLED


class HookDoneConformance:
    """`hook_done`: a hook that ran is done."""

    async def test_a_hook_that_ran_is_done(self, store: Store) -> None:
        parent = await start(store, has_on_cancel=True)
        await finish(store, parent.id, parent.lease_epoch, State.CANCELLED, error=ERR)
        (h,) = await hooks(store)
        assert (h.memo, h.state) == (None, State.CANCELLED)
        await store.hook_done(HookDone(parent.id, h.epoch, ok=True, now_ms=T0))
        assert await hooks(store, now=T0 + 10 * TTL) == []
