"""The attempt runner's verdict when a handler ends in the same loop turn as its stop."""

from __future__ import annotations

import asyncio

import flowmill as fm
from flowmill._stops import CancelToken
from flowmill.worker._runner import TIMEOUT_REASON, AttemptRunner, SyncPool


def _runner() -> AttemptRunner:
    return AttemptRunner(clock=fm.ManualClock(), grace_s=1.0, pool=SyncPool(1))


async def test_an_error_raised_as_the_stop_fires_is_that_stop() -> None:
    # The token fires and the handler raises at once, before the runner's wait resumes (a
    # sync handler seeing the token on a busy loop): a cooperative timeout, not an error.
    runner, token = _runner(), CancelToken()

    async def handler() -> None:
        token.fire(TIMEOUT_REASON)
        raise fm.Cancelled(TIMEOUT_REASON)

    ended = await runner.invoke(handler, (), is_async=True, timeout_ms=None, token=token)
    assert (ended.stop_reason, ended.classification) == (
        TIMEOUT_REASON,
        fm.TimeoutClass.COOPERATIVE,
    )
    assert isinstance(ended.error, fm.Cancelled)
    assert runner.stats.timeouts[fm.TimeoutClass.COOPERATIVE] == 1


async def test_a_value_returned_as_the_stop_fires_is_kept() -> None:
    runner, token = _runner(), CancelToken()

    async def handler() -> int:
        token.fire(TIMEOUT_REASON)
        return 7

    ended = await runner.invoke(handler, (), is_async=True, timeout_ms=None, token=token)
    assert (ended.value, ended.stop_reason, ended.error) == (7, None, None)


async def test_an_error_with_no_stop_is_the_handlers() -> None:
    runner, token = _runner(), CancelToken()

    async def handler() -> None:
        await asyncio.sleep(0)
        raise ValueError("bad")

    ended = await runner.invoke(handler, (), is_async=True, timeout_ms=None, token=token)
    assert isinstance(ended.error, ValueError) and ended.stop_reason is None
