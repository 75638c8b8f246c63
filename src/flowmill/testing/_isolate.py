"""Point a user's `App` at a store of its own for one test, and record what was submitted."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .._app import App
from .._clock import Clock
from .._handle import ResultWaiter
from .._sync import SyncBridge
from ..store import open_store
from ..store._front import StoreFront
from ..store.contract import Store
from ..store.contract.tasks import InsertOutcome, InsertStatus, TasksInsert


@dataclass(frozen=True, slots=True)
class Submitted:
    """One task a test's app stored: its kind, JSON payload, key and id."""

    id: str
    kind: str
    payload: bytes
    key: str | None
    parent_id: str | None


class RecordingStore:
    """A store that passes every call to its backend and keeps each task it inserted."""

    def __init__(self, backend: Store) -> None:
        self._backend = backend
        self.submitted: list[Submitted] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def __repr__(self) -> str:
        return f"RecordingStore({self._backend!r})"

    async def tasks_insert(self, p: TasksInsert) -> list[InsertOutcome]:
        outs = await self._backend.tasks_insert(p)
        for new, out in zip(p.tasks, outs, strict=True):
            if out.status is InsertStatus.INSERTED:
                key = new.dedup_key if new.dedup_key is not None else new.child_key
                self.submitted.append(Submitted(out.id, new.kind, new.payload, key, new.parent_id))
        return outs


def recorder_of(app: App) -> RecordingStore | None:
    """The recording store under `app`, when a test isolated it."""
    backend = app.store.backend
    return backend if isinstance(backend, RecordingStore) else None


_SWAPPED = ("url", "store", "clock", "results", "_opened", "_open_lock", "_sync")


@contextlib.contextmanager
def isolated(app: App, url: str, *, clock: Clock | None = None) -> Iterator[App]:
    """Re-point `app` (the user's own object, so code that imported it sees the change) to
    a new store at `url` that records submissions, and `clock`; restore it afterwards.

    Close the app before leaving (`await app.close()` or `app.close_sync()`); tasks the
    test registers on it are forgotten on the way out."""
    saved = {name: getattr(app, name) for name in _SWAPPED}
    registry = dict(app.registry)
    app.url = url
    app.store = StoreFront(RecordingStore(open_store(url)))
    if clock is not None:
        app.clock = clock
    app.results = ResultWaiter(app)
    app._opened = False
    app._open_lock = None
    app._sync = SyncBridge()
    try:
        yield app
    finally:
        for name, value in saved.items():
            setattr(app, name, value)
        app.registry.clear()
        app.registry.update(registry)
