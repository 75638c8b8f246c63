"""Numbered migration files: how every backend finds, orders and checks its own.

A backend keeps its migrations as `migrations/NNNN_name.sql` in its package: frozen once
released (a test holds their checksums), numbered from 1 without gaps, and numbered alike
on every backend (migration 2 brings every backend to the same schema version 2). Each
file upgrades the schema by one version; `SCHEMA_VERSION` is the number of files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: `version` upgrades a schema at `version - 1` to `version`."""

    version: int
    name: str
    sql: str


def load(package: str) -> tuple[Migration, ...]:
    """The migrations of `package` (its `migrations` folder), in order; refuses a gap."""
    folder = files(package).joinpath("migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    numbers = [m.version for m in found]
    if numbers != list(range(1, len(found) + 1)):
        raise RuntimeError(f"the migrations of {package} are not numbered 1..n: {numbers}")
    return tuple(found)
