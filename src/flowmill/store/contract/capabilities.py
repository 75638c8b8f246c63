"""What a backend is and can do, and what a migration did: records the engine and CLI read
instead of asking which class a store is."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Capabilities:
    """The facts about a backend that callers branch on. Every backend sets `capabilities`.

    A flag is a fact the engine or the CLI acts on, never a class name: a caller writes
    `store.capabilities.local_file`, not `isinstance(store, SQLiteStore)`.
    """

    durable: bool
    """Tasks outlive the process that opened the store (False for an in-memory store)."""

    local_file: bool
    """The store is one file on this machine, named by its URL, which `open()` creates when
    it is missing. A command that only reads checks `schema_version()` first, so that a
    mistyped path is refused instead of becoming a new empty database."""


@dataclass(frozen=True, slots=True)
class MigrateResult:
    """What `Store.migrate()` did: the schema version before (None: there was no schema)
    and after (the version this flowmill writes)."""

    before: int | None
    after: int

    @property
    def created(self) -> bool:
        """The schema did not exist and now does."""
        return self.before is None

    @property
    def upgraded(self) -> bool:
        """An older schema was brought up to date."""
        return self.before is not None and self.before != self.after
