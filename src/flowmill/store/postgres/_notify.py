"""Work wake-ups sent after a spawn's commit, outside the transaction that wrote the rows.

A NOTIFY inside a writing transaction takes PostgreSQL's notify lock at commit (one lock
for the whole server) and holds it through the commit's WAL flush: every transaction that
notifies then commits after the one before it, flush after flush. Spawns are the most
frequent writes of a fan-out (one per `spawn_sibling` call), so they notify on their own:
`pg_notify` in a read-only transaction, which holds that lock for no flush at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ...errors import StoreError

log = logging.getLogger("flowmill.store.postgres")


class AfterCommit:
    """Sends a wake-up after every commit that asks for one, merging the asks.

    `ask()` after a commit starts a send at once when none is in flight; asks that arrive
    while one is in flight are answered by one more send after it (it may have left before
    their commit), so every ask is followed by a wake-up sent after it. A wake-up is a hint:
    one lost to an error (or a crash right after the commit) delays the work until the
    waiters' next poll, as a notification sent while a listener reconnects does.
    """

    def __init__(self, send: Callable[[], Awaitable[object]]) -> None:
        self._send = send
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self.sent = 0  # wake-ups sent (for tests and benchmarks)

    def ask(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._again = False
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="flowmill-pg-wake-after-commit"
        )

    async def _run(self) -> None:
        while True:
            try:
                await self._send()
                self.sent += 1
            except StoreError as exc:
                log.debug("flowmill: a work wake-up was not sent: %s", exc)
            if not self._again:
                return
            self._again = False

    async def close(self) -> None:
        """Wait for the wake-up in flight (the store closes its pool after this)."""
        task, self._task = self._task, None
        if task is not None:
            await task
