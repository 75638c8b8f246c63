"""The `flowmill` command: run workers, submit and inspect tasks, migrate, and the demo."""

from __future__ import annotations

from ._common import to_json
from ._root import cli, main

# Importing a command module registers its commands on `cli`, in the order `--help` lists.
# isort: off
from . import _run, _submit, _inspect, _admin, _workflows, _schedules, _ops  # noqa: F401
# isort: on

__all__ = ["cli", "main", "to_json"]
