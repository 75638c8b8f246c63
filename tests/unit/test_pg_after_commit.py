"""The PostgreSQL store's spawn wake-up (`_notify.AfterCommit`): sent after the commit that
asked for it, asks merged while one is in flight, a failure only logged."""

from __future__ import annotations

import asyncio

from flowmill.errors import StoreUnavailable
from flowmill.store.postgres._notify import AfterCommit


class Sender:
    """Counts the sends; each waits until the test releases it."""

    def __init__(self) -> None:
        self.started = 0
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def __call__(self) -> None:
        self.started += 1
        await self.release.wait()
        if self.fail is not None:
            raise self.fail


async def _until(cond: object) -> None:
    while not cond():  # type: ignore[operator]
        await asyncio.sleep(0)


async def test_an_ask_sends_at_once_and_asks_during_a_send_are_one_more_send() -> None:
    sender = Sender()
    wake = AfterCommit(sender)
    wake.ask()
    await _until(lambda: sender.started == 1)
    # These commits happened after the send in flight left: one more send answers them all.
    for _ in range(5):
        wake.ask()
    sender.release.set()
    await wake.close()
    assert sender.started == 2
    assert wake.sent == 2


async def test_asks_after_a_send_ended_start_a_new_one() -> None:
    sender = Sender()
    sender.release.set()
    wake = AfterCommit(sender)
    wake.ask()
    await wake.close()
    wake.ask()
    await wake.close()
    assert (sender.started, wake.sent) == (2, 2)


async def test_a_failed_send_is_not_raised_and_the_next_ask_sends_again() -> None:
    sender = Sender()
    sender.fail = StoreUnavailable("down")
    sender.release.set()
    wake = AfterCommit(sender)
    wake.ask()
    await wake.close()  # no error: a wake-up is a hint, waiters poll
    assert (sender.started, wake.sent) == (1, 0)
    sender.fail = None
    wake.ask()
    await wake.close()
    assert (sender.started, wake.sent) == (2, 1)


async def test_close_waits_for_the_send_in_flight() -> None:
    sender = Sender()
    wake = AfterCommit(sender)
    wake.ask()
    await _until(lambda: sender.started == 1)
    closing = asyncio.ensure_future(wake.close())
    await asyncio.sleep(0)
    assert not closing.done()
    sender.release.set()
    await closing
    assert wake.sent == 1
