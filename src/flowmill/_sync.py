"""The synchronous API: blocking calls that run the App's coroutines on the loop it lives on.

An App's store (a PostgreSQL pool, the result waiter, wake-ups) belongs to the event loop
it was opened on, its *home loop*. A blocking call made from any other thread sends its
coroutine there with `run_coroutine_threadsafe` and waits: a sync handler's thread hops to
the worker's loop, a WSGI worker thread to the loop of the app it shares with the others.
An App that no loop has opened gets one of its own: a daemon thread, started on the first
blocking call and stopped by `close()` / `close_sync()`. So every thread shares one store
connection (pool), and a thread that already runs a loop of its own (a Jupyter cell) can
call in too, since its loop is never blocked on itself.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._handle import TaskHandle
from ._states import State
from .errors import ConfigurationError
from .store.contract.tasks import InsertStatus

if TYPE_CHECKING:
    from ._inspect import TaskInfo

T = TypeVar("T")
R = TypeVar("R")

_THREAD_NAME = "flowmill-sync-loop"


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _call(make: Callable[[], Awaitable[T]]) -> T:
    # The coroutine is made on the target loop, so a call refused before it was sent
    # leaves no never-awaited coroutine behind.
    return await make()


class SyncBridge:
    """One App's way in for blocking calls: its home loop, or a loop thread of its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.home: asyncio.AbstractEventLoop | None = None  # where the store was opened
        self._loop: asyncio.AbstractEventLoop | None = None  # the own loop, once started
        self._thread: threading.Thread | None = None

    # -- the own loop ----------------------------------------------------------------

    def _own_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                started = threading.Event()
                thread = threading.Thread(
                    target=_serve, args=(loop, started), name=_THREAD_NAME, daemon=True
                )
                thread.start()
                started.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    @property
    def started(self) -> bool:
        """Whether the own loop thread runs."""
        return self._thread is not None

    def on_own_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def stop(self) -> None:
        """Stop the own loop thread (if started), after what it runs has ended."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        if threading.current_thread() is thread:
            raise ConfigurationError("close_sync() cannot be called from the app's own loop")
        loop.call_soon_threadsafe(loop.stop)
        thread.join()

    # -- calls -----------------------------------------------------------------------

    def target(self) -> asyncio.AbstractEventLoop:
        """The loop a blocking call runs on: the home loop, else the own one."""
        home = self.home
        return home if home is not None else self._own_loop()

    def call(self, make: Callable[[], Awaitable[T]], what: str) -> T:
        """Run `make()` on the app's loop and wait for it in this thread."""
        loop = self.target()
        _check_usable(loop, what)
        fut = asyncio.run_coroutine_threadsafe(_call(make), loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()  # an interrupted caller (KeyboardInterrupt) stops what it started
            raise

    def close_with(self, close: Callable[[], Awaitable[None]]) -> None:
        """Close the app from a thread without a usable loop, then stop the own loop."""
        home = self.home
        if home is not None:
            here = running_loop()
            if home.is_running() or home.is_closed() or here is not None:
                _check_usable(home, "close_sync()")
                asyncio.run_coroutine_threadsafe(_call(close), home).result()
            else:
                # Opened on a loop that is idle now (a test's loop between runs): run it once.
                home.run_until_complete(_call(close))
        self.stop()


def _check_usable(loop: asyncio.AbstractEventLoop, what: str) -> None:
    if loop is running_loop():
        raise ConfigurationError(
            f"{what} would block the event loop this app runs on; "
            "in async code await the async method instead (e.g. `await app.submit(...)`)"
        )
    if loop.is_closed():
        raise ConfigurationError(
            f"{what}: the app was opened on an event loop that has closed; "
            "close the app on the loop that opened it (`await app.close()`)"
        )
    if not loop.is_running():
        raise ConfigurationError(
            f"{what}: the app was opened on an event loop that is not running now; "
            "use the async API on that loop, or let the sync API open the app"
        )


def _serve(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(started.set)
    try:
        loop.run_forever()
    finally:
        try:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


@dataclass(frozen=True, slots=True)
class SyncTaskHandle(Generic[R]):
    """A submitted task for blocking code: `handle.result(timeout=...)` waits in this thread.

    `handle.aio` is the async `TaskHandle` of the same task (e.g. for `depends_on`)."""

    aio: TaskHandle[R]
    bridge: SyncBridge

    @property
    def id(self) -> str:
        return self.aio.id

    @property
    def kind(self) -> str:
        return self.aio.kind

    @property
    def status(self) -> InsertStatus:
        return self.aio.status

    @property
    def deduplicated(self) -> bool:
        """True when the submit matched an active task with the same key."""
        return self.aio.deduplicated

    def result(self, timeout: timedelta | None = None) -> R:
        """Block until the end: the typed result, `TaskFailed`, or `TaskTimeout` past `timeout`."""
        return self.bridge.call(lambda: self.aio.result(timeout), "result()")

    def cancel(self) -> State:
        """Cancel the task (see `App.cancel`); the state after."""
        return self.bridge.call(self.aio.cancel, "cancel()")

    def info(self) -> TaskInfo:
        """The task record now (`App.get`)."""
        app: Any = self.aio.app
        return self.bridge.call(lambda: app.get(self.aio.id), "info()")  # type: ignore[no-any-return]
