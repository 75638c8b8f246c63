"""One LISTEN connection per store that turns NOTIFY messages into wake-up pulses."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Mapping

import psycopg
from psycopg import sql

from .._common.wake import Pulse
from ._errors import one_line

log = logging.getLogger("flowmill.store.postgres")

_MAX_CHANNEL = 63  # NAMEDATALEN - 1: longer channel names are refused by pg_notify
_HEALTH_EVERY_S = 30.0
_BACKOFF_FIRST_S = 0.1
_BACKOFF_MAX_S = 5.0


def channel_names(schema: str) -> tuple[str, str]:
    """(work channel, finish channel), namespaced by schema so that schemas never cross."""
    base = schema
    if len(f"flowmill:{base}:finish".encode()) > _MAX_CHANNEL:
        base = hashlib.sha256(schema.encode()).hexdigest()[:32]
    return f"flowmill:{base}:work", f"flowmill:{base}:finish"


def frames_channel_name(schema: str) -> str:
    """The channel output-frame appends notify, namespaced like the other two."""
    work, _ = channel_names(schema)
    return work.removesuffix(":work") + ":frames"


class Listener:
    """Keeps a LISTEN connection open (reconnecting with backoff) and fires pulses.

    Started lazily by the first wait. Each reconnection fires every pulse once, since a
    notification sent while we were not listening is lost: waiters then poll the store.
    """

    def __init__(self, conninfo: str, display: str, pulses: Mapping[str, Pulse]) -> None:
        self._conninfo = conninfo
        self._display = display
        self._pulses = dict(pulses)
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.was_connected = False

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="flowmill-pg-listen"
            )

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _fire_all(self) -> None:
        for pulse in self._pulses.values():
            pulse.fire()

    async def _run(self) -> None:
        delay = _BACKOFF_FIRST_S
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.connected.is_set():
                    delay = _BACKOFF_FIRST_S  # it worked for a while: start over
                log.warning(
                    "flowmill: LISTEN connection to PostgreSQL at %s failed (%s); "
                    "retrying in %.1fs",
                    self._display,
                    one_line(str(exc)),
                    delay,
                )
            self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX_S)

    async def _listen_once(self) -> None:
        conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        async with conn:
            for channel in self._pulses:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            self.connected.set()
            if self.was_connected:
                self._fire_all()
            self.was_connected = True
            while True:
                async for note in conn.notifies(timeout=_HEALTH_EVERY_S):
                    pulse = self._pulses.get(note.channel)
                    if pulse is not None:
                        pulse.fire()
                # Quiet for a while: make sure the connection is still alive.
                await conn.execute("SELECT 1")
