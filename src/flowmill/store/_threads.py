"""Threads that own one sqlite3 connection each; the writer group-commits its queue."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .._errors import FlowmillError, StoreError, StoreUnavailable

T = TypeVar("T")

# A job runs on the connection's thread; it may return notifications to send after commit.
Job = Callable[[sqlite3.Connection, "Tx"], Any]

_MAX_GROUP = 256


class Tx:
    """What one job inside a group commit may ask for once the group has committed."""

    __slots__ = ("notify",)

    def __init__(self) -> None:
        self.notify = b""

    def wake(self, channel: bytes) -> None:
        if channel not in self.notify:
            self.notify += channel


def translate(exc: BaseException) -> BaseException:
    """Turn a driver error into a flowmill error; flowmill errors pass through unchanged."""
    if isinstance(exc, FlowmillError):
        return exc
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return StoreUnavailable(f"the database is locked by another process: {exc}")
    if isinstance(exc, sqlite3.Error):
        return StoreError(f"sqlite error: {exc}")
    return exc


class ConnectionThread:
    """Runs jobs on one connection in one thread. The writer wraps a group in a transaction."""

    def __init__(
        self,
        name: str,
        connect: Callable[[], sqlite3.Connection],
        *,
        writer: bool,
        after_commit: Callable[[bytes], None],
        init: Callable[[sqlite3.Connection], object] | None = None,
    ) -> None:
        self._connect = connect
        self._init = init
        self._writer = writer
        self._after_commit = after_commit
        self._queue: queue.SimpleQueue[tuple[Job, asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    async def run(self, job: Job) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put((job, fut))
        return await fut

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _main(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._error = translate(exc)
            self._ready.set()
            return
        if self._init is not None:
            # Runs before any job, outside the group transaction (migrations need their own).
            try:
                self._init(conn)
            except BaseException as exc:
                conn.close()
                self._error = translate(exc)
                self._ready.set()
                return
        self._ready.set()
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                group = [first]
                stop = False
                if self._writer:
                    while len(group) < _MAX_GROUP:
                        try:
                            item = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        if item is None:
                            stop = True
                            break
                        group.append(item)
                    self._run_group(conn, group)
                else:
                    self._run_single(conn, first)
                if stop:
                    return
        finally:
            conn.close()

    def _run_single(self, conn: sqlite3.Connection, item: tuple[Job, asyncio.Future[Any]]) -> None:
        job, fut = item
        try:
            outcome: tuple[bool, Any] = (True, job(conn, Tx()))
        except BaseException as exc:
            outcome = (False, translate(exc))
        _settle_all([(fut, outcome)])

    def _run_group(
        self, conn: sqlite3.Connection, group: list[tuple[Job, asyncio.Future[Any]]]
    ) -> None:
        outcomes: list[tuple[asyncio.Future[Any], tuple[bool, Any]]] = []
        tx = Tx()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            err = translate(exc)
            _settle_all([(fut, (False, err)) for _, fut in group])
            return
        single = len(group) == 1
        for job, fut in group:
            job_tx = Tx()
            try:
                if not single:
                    conn.execute("SAVEPOINT job")
                value = job(conn, job_tx)
                if not single:
                    conn.execute("RELEASE job")
                outcomes.append((fut, (True, value)))
                for ch in job_tx.notify:
                    tx.wake(bytes([ch]))
            except BaseException as exc:
                if not single:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                else:
                    conn.execute("ROLLBACK")
                    _settle_all([(fut, (False, translate(exc)))])
                    return
                outcomes.append((fut, (False, translate(exc))))
        try:
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            err = translate(exc)
            _settle_all([(fut, (False, err)) for _, fut in group])
            return
        if tx.notify:
            self._after_commit(tx.notify)
        _settle_all(outcomes)


def _settle_all(outcomes: list[tuple[asyncio.Future[Any], tuple[bool, Any]]]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], tuple[bool, Any]]]]
    by_loop = {}
    for fut, outcome in outcomes:
        by_loop.setdefault(fut.get_loop(), []).append((fut, outcome))
    for loop, items in by_loop.items():
        if loop.is_closed():
            continue
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(_settle, items)


def _settle(items: list[tuple[asyncio.Future[Any], tuple[bool, Any]]]) -> None:
    for fut, (ok, value) in items:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
