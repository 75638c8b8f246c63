"""The worker's entry in the store's worker registry: a heartbeat at start, on a timer,
and a last one marking it stopped (`app.workers()`, `flowmill workers` read them)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence

from .._clock import Clock
from .._runtime import Runtime
from .._version import __version__
from ..errors import StoreError
from ..store.contract.admin import WorkerHeartbeat

log = logging.getLogger("flowmill.worker")


class Heartbeat:
    """Keeps one worker's registry row fresh: `beat()` once, `loop()` forever, `stopped()`."""

    def __init__(
        self,
        rt: Runtime,
        *,
        clock: Clock,
        worker_id: str,
        queues: Sequence[str],
        concurrency: int,
        interval_s: float,
        in_flight: Callable[[], int],
    ) -> None:
        self.rt = rt
        self.clock = clock
        self.worker_id = worker_id
        self.queues = tuple(queues)
        self.concurrency = concurrency
        self.interval_s = interval_s
        self.in_flight = in_flight
        self.host = socket.gethostname()
        self.pid = os.getpid()
        # from `_version`, not the package metadata: importing `importlib.metadata` would
        # cost each worker ~2 MB and tens of ms at start-up
        self.version = __version__
        self.started_at_ms = clock.wall_ms()

    async def beat(self, *, stopped: bool = False) -> bool:
        """Send one heartbeat; False (logged) when the store could not take it."""
        try:
            await self.rt.store.worker_heartbeat(
                WorkerHeartbeat(
                    worker_id=self.worker_id,
                    host=self.host,
                    pid=self.pid,
                    version=self.version,
                    queues=self.queues,
                    kinds=tuple(self.rt.task_names()),
                    concurrency=self.concurrency,
                    started_at_ms=self.started_at_ms,
                    heartbeat_ms=max(1, int(self.interval_s * 1000)),
                    in_flight=self.in_flight(),
                    stopped=stopped,
                    now_ms=self.clock.store_now(),
                )
            )
        except StoreError as exc:
            log.warning("worker %s: heartbeat failed: %s", self.worker_id, exc)
            return False
        return True

    async def loop(self) -> None:
        """A heartbeat now, then one every `interval_s`: beside the claims, never before
        them (a worker starts claiming at once)."""
        while True:
            await self.beat()
            await self.clock.sleep(self.interval_s)
