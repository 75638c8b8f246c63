"""Threads that own one sqlite3 connection each; the writer group-commits its queue."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from ...errors import FlowmillError, StoreError, StoreUnavailable

T = TypeVar("T")

# A job runs on the connection's thread; it may return notifications to send after commit.
Job = Callable[[sqlite3.Connection, "Tx"], Any]
_Item = tuple[Job, "asyncio.Future[Any]"]

_MAX_GROUP = 256

# A submit on an idle loop commits before its coroutine yields (`_commit_now`), at most this
# many times in a row on one loop: then it yields once, so that timers and I/O are served
# between the commits of a coroutine that submits in a loop.
_MAX_NOW_STREAK = 8

# The writer's pauses while another process holds the write lock (see `_begin_immediate`):
# from 50 us doubling up to 1 ms for the first 50 ms, then up to 5 ms.
_FIRST_PAUSE_S = 0.00005
_SHORT_PAUSE_S = 0.001
_SHORT_PHASE_S = 0.05
_LONG_PAUSE_S = 0.005


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
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        # `_closed` and every put are under this lock, so nothing is queued after the drain.
        self._lock = threading.Lock()
        self._closed = False
        # Held by whichever thread uses the connection: its own thread, or an event loop
        # committing (writer) or reading (reader) its own small jobs inline while it is idle.
        self._conn_lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._busy_ms = 0  # the connection's busy_timeout (the writer's SQLite one is 0)
        # Small jobs of one loop gathered in one loop iteration, committed together by
        # `_flush` (group commit for concurrent submitters on one loop, no thread hop).
        self._batch: list[_Item] = []
        self._batch_loop: asyncio.AbstractEventLoop | None = None
        self._batch_idle_only = False  # a job in the batch runs inline only on an idle loop
        # Commits tried by `_commit_now` on each loop since it last ran a flush (this lock).
        self._now_streak: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int]
        self._now_streak = weakref.WeakKeyDictionary()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    async def run(self, job: Job) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            self._queue.put((job, fut))
        return await fut

    async def run_inline(self, job: Job, *, idle_loop: bool = False) -> Any:
        """`run` for a small write: committed on the calling loop's thread if the writer is idle.

        The jobs that this loop hands in during one iteration are gathered and run as one
        group at the end of it, under the connection's lock; if the writer thread holds the
        connection or has work queued, the group goes to its queue instead. A sequential
        submitter thus waits for its own commit without two thread hops, and concurrent
        submitters on one loop still share one commit.

        With `idle_loop`, the group commits inline only if the loop has nothing else ready
        to run when it is flushed: a worker's claim or finish, whose commit would otherwise
        stall handlers that could run meanwhile (the writer thread overlaps them).

        On the reader, a small read runs at once on the calling thread when the reader
        thread is idle (`_read_inline`), else on that thread.
        """
        if not self._writer:
            done, value = self._read_inline(job)
            return value if done else await self.run(job)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if not idle_loop and self._commit_now(loop, job, fut):
            return await fut  # done already: no yield
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            if self._batch_loop is not None and self._batch_loop.is_closed():
                # A loop closed before its flush ran: nobody waits for those jobs any more.
                self._batch, self._batch_loop = [], None
            if self._batch_loop is None:
                self._batch_loop = loop
                loop.call_soon(self._flush)
            if self._batch_loop is loop:
                self._batch.append((job, fut))
                self._batch_idle_only = self._batch_idle_only or idle_loop
            else:
                self._queue.put((job, fut))
        return await fut

    def _commit_now(
        self, loop: asyncio.AbstractEventLoop, job: Job, fut: asyncio.Future[Any]
    ) -> bool:
        """Commit `job` alone at once, before its caller yields, if nothing could join it.

        That is when no other callback of this loop is ready to run (one that might submit
        too: concurrent submitters are gathered by `_flush` instead, into one commit), no
        batch is gathering, and the writer thread is idle with nothing queued. A lone
        submitter then skips a loop iteration and a future's round trip. True when the job
        ran (`fut` holds its outcome); False: nothing ran, the caller takes the usual way.
        """
        if not _nothing_ready(loop):
            return False
        with self._lock:
            streak = self._now_streak.get(loop, 0)
            if self._closed or self._batch_loop is not None or streak >= _MAX_NOW_STREAK:
                return False
            self._now_streak[loop] = streak + 1
        if not self._queue.empty() or not self._conn_lock.acquire(blocking=False):
            return False
        try:
            conn = self._conn
            if conn is None or not self._queue.empty() or not _begin_at_once(conn):
                return False
            try:
                self._run_group(conn, [(job, fut)], begun=True)
            except BaseException as exc:
                _fail_all([(job, fut)], translate(exc))
                if not isinstance(exc, Exception):
                    raise
        finally:
            self._conn_lock.release()
        return True

    def _read_inline(self, job: Job) -> tuple[bool, Any]:
        """Run a small read on the calling thread if the reader is idle: (True, its value).

        (False, None) when the reader thread is busy or has reads queued, or when SQLite
        would make the read wait for a lock (an event loop must not sit in its busy
        handler): the caller then hands the read to the thread.
        """
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
        if not self._queue.empty() or not self._conn_lock.acquire(blocking=False):
            return False, None
        try:
            conn = self._conn
            if conn is None:
                return False, None
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                conn.execute("BEGIN")
                try:
                    return True, job(conn, Tx())
                finally:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
            except sqlite3.OperationalError as exc:
                if is_busy(exc):
                    return False, None
                raise translate(exc) from exc
            except sqlite3.Error as exc:
                raise translate(exc) from exc
            finally:
                conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        finally:
            self._conn_lock.release()

    def _flush(self) -> None:
        with self._lock:
            loop = self._batch_loop
            if loop is not None:
                self._now_streak.pop(loop, None)  # the loop turned: timers and I/O served
            group, self._batch, self._batch_loop = self._batch, [], None
            idle_only, self._batch_idle_only = self._batch_idle_only, False
        if not group:
            return
        if (not idle_only or _nothing_ready(loop)) and self._conn_lock.acquire(blocking=False):
            try:
                conn = self._conn
                if conn is not None and self._queue.empty() and _begin_at_once(conn):
                    try:
                        self._run_group(conn, group, begun=True)
                    except BaseException as exc:
                        _fail_all(group, translate(exc))
                        if not isinstance(exc, Exception):
                            raise
                    return
            finally:
                self._conn_lock.release()
        with self._lock:
            if self._closed:
                _fail_all(group, StoreError("the store is closed"))
                return
            for item in group:
                self._queue.put(item)

    def stop(self) -> None:
        with self._lock:
            if not self._closed:
                self._queue.put(None)
        self._thread.join()

    def _refuse(self, exc: BaseException, conn: sqlite3.Connection | None = None) -> None:
        """The thread could not start: close what it opened, keep the error for callers."""
        if conn is not None:
            conn.close()
        self._error = translate(exc)
        self._closed = True
        self._ready.set()

    def _main(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._refuse(exc)
            return
        try:
            if self._init is not None:
                # Runs before any job, outside the group transaction (migrations need
                # their own).
                self._init(conn)
            self._busy_ms = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
            if self._writer:
                # The writer waits for other processes' write locks itself (see
                # `_begin_immediate`); nothing else it runs waits for a lock.
                conn.execute("PRAGMA busy_timeout = 0")
        except BaseException as exc:
            self._refuse(exc, conn)
            return
        self._conn = conn
        self._ready.set()
        try:
            self._serve(conn)
        finally:
            with self._lock:
                self._closed = True
                batch, self._batch = self._batch, []
            _fail_all(self._drain() + batch, StoreError("the store is closed"))
            with self._conn_lock:
                self._conn = None
                conn.close()

    def _serve(self, conn: sqlite3.Connection) -> None:
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
            try:
                if self._writer:
                    with self._conn_lock:
                        self._run_group(conn, group)
                else:
                    with self._conn_lock:  # an idle reader's small reads run inline
                        self._run_single(conn, first)
            except BaseException as exc:  # a bug here must not leave callers waiting forever
                _fail_all(group, translate(exc))
                if not isinstance(exc, Exception):
                    raise
            if stop:
                return

    def _drain(self) -> list[_Item]:
        items: list[_Item] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return items
            if item is not None:
                items.append(item)

    def _run_single(self, conn: sqlite3.Connection, item: _Item) -> None:
        """A read: one deferred transaction, so that all its statements see one snapshot."""
        job, fut = item
        try:
            conn.execute("BEGIN")
            try:
                outcome: tuple[bool, Any] = (True, job(conn, Tx()))
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        except BaseException as exc:
            outcome = (False, translate(exc))
        _settle_all([(fut, outcome)])

    def _run_group(
        self, conn: sqlite3.Connection, group: list[_Item], *, begun: bool = False
    ) -> None:
        """Run jobs in one transaction, each in a savepoint; commit once; then answer all.

        A job that fails is rolled back to its savepoint and answered with its error. If the
        whole transaction is gone (the job ended it, or SQLite rolled it back on an I/O or
        disk-full error), the jobs before it were undone too: they run again in a new group.
        """
        try:
            if not begun:
                _begin_immediate(conn, self._busy_ms)
        except BaseException as exc:
            _fail_all(group, translate(exc))
            return
        tx = Tx()
        outcomes: list[tuple[asyncio.Future[Any], tuple[bool, Any]]] = []
        # A job alone in its group needs no savepoint: its failure rolls back the transaction.
        alone = len(group) == 1
        for index, (job, fut) in enumerate(group):
            job_tx = Tx()
            try:
                if not alone:
                    conn.execute("SAVEPOINT job")
                value = job(conn, job_tx)
                if not alone:
                    conn.execute("RELEASE job")
            except BaseException as exc:
                if alone:
                    if conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    _settle_all([(fut, (False, translate(exc)))])
                    return
                if not _rollback_to_savepoint(conn):
                    _settle_all([(fut, (False, translate(exc)))])
                    rest = group[:index] + group[index + 1 :]
                    if rest:
                        self._run_group(conn, rest)
                    return
                outcomes.append((fut, (False, translate(exc))))
                continue
            outcomes.append((fut, (True, value)))
            for ch in job_tx.notify:
                tx.wake(bytes([ch]))
        try:
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            _fail_all(group, translate(exc))
            return
        if tx.notify:
            with contextlib.suppress(Exception):  # a wake-up is a hint; the commit stands
                self._after_commit(tx.notify)
        _settle_all(outcomes)


def _nothing_ready(loop: asyncio.AbstractEventLoop | None) -> bool:
    """Whether `loop` (running this callback) has no other callback ready to run.

    Read from asyncio's own loop; any other loop (uvloop) counts as busy."""
    ready = getattr(loop, "_ready", None)
    return ready is not None and not ready


def _begin_at_once(conn: sqlite3.Connection) -> bool:
    """BEGIN IMMEDIATE without waiting: False if another process holds the write lock.

    An inline group runs on an event loop's thread, which must not wait while another
    process writes: it goes to the writer thread, which may wait (`_begin_immediate`).
    The writer's connection has SQLite's busy timeout at 0, so this never waits.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if is_busy(exc):
            return False
        raise
    return True


def _begin_immediate(conn: sqlite3.Connection, timeout_ms: int) -> None:
    """BEGIN IMMEDIATE, waiting up to `timeout_ms` for another process's write lock.

    SQLite's own busy handler sleeps 1, 2, 5, 10, ... ms between tries, so a lock held for
    a tenth of a millisecond more (another process's commit, or an empty claim) costs at
    least a whole millisecond. The writer thread tries again after much shorter pauses.
    """
    start = time.monotonic()
    pause = _FIRST_PAUSE_S
    while not _begin_at_once(conn):
        waited = time.monotonic() - start
        if waited >= timeout_ms / 1000:
            raise sqlite3.OperationalError("database is locked")
        time.sleep(pause)
        pause = min(pause * 2, _LONG_PAUSE_S if waited > _SHORT_PHASE_S else _SHORT_PAUSE_S)


def is_busy(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused because another connection holds a lock (a try may succeed)."""
    return "locked" in str(exc) or "busy" in str(exc)


def _rollback_to_savepoint(conn: sqlite3.Connection) -> bool:
    """Undo the failed job; False when the group's transaction is gone as a whole."""
    if not conn.in_transaction:
        return False
    try:
        conn.execute("ROLLBACK TO job")
        conn.execute("RELEASE job")
    except sqlite3.Error:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        return False
    return True


def _fail_all(items: list[_Item], error: BaseException) -> None:
    _settle_all([(fut, (False, error)) for _, fut in items])


def _settle_all(outcomes: list[tuple[asyncio.Future[Any], tuple[bool, Any]]]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], tuple[bool, Any]]]]
    by_loop = {}
    for fut, outcome in outcomes:
        by_loop.setdefault(fut.get_loop(), []).append((fut, outcome))
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:  # the writer thread
        running = None
    for loop, items in by_loop.items():
        if loop is running:  # a group run inline on its own loop's thread
            _settle(items)
            continue
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
