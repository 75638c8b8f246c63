"""What the `flowmill` commands share that needs neither typer nor rich at import: the
worker command (`_worker`) runs on these alone, so a worker process loads neither."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .._app import App
from ..errors import StoreError

T = TypeVar("T")


def print_error(message: str) -> None:
    """`error: message` on stderr, on one line (rich is imported only now: an error is rare)."""
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, highlight=False, soft_wrap=True).print(
        Text.assemble(("error:", "bold red"), " ", message)
    )


def store_file(app: App) -> str | None:
    """The absolute path of the app's SQLite file (None for another store)."""
    if not app.store.capabilities.local_file or not app.url.startswith("sqlite:///"):
        return None
    return os.path.abspath(app.url.removeprefix("sqlite:///").split("?", 1)[0])


def explain_store_error(app: App, exc: StoreError) -> StoreError:
    """A SQLite file the user cannot open or write: name it and say what to do."""
    path = store_file(app)
    text = str(exc)
    if path is not None and "unable to open database file" in text:
        return StoreError(
            f"cannot open {path}: check that it and its directory exist and that this user "
            "may read and write both"
        )
    if path is None or "readonly database" not in text:
        return exc
    name = os.path.basename(path)
    return StoreError(
        f"{path} is read-only for this user: flowmill writes to its database, and to "
        f"{name}-wal and {name}-shm beside it, even to read it; make the file and its "
        f"directory writable (e.g. chmod u+w {path}), or point --url at a writable copy"
    )


def run_on(app: App, work: Callable[[App], Awaitable[T]]) -> T:
    """Run `work(app)` on a fresh event loop, then close the app."""

    async def main() -> T:
        try:
            return await work(app)
        except StoreError as exc:
            better = explain_store_error(app, exc)
            if better is exc:
                raise
            raise better from exc
        finally:
            await app.close()

    return asyncio.run(main())
