"""The `flowmill` command: run workers, submit and inspect tasks, migrate, and the demo.

`flowmill worker` registers its own command only: a worker process then carries none of
the other commands' modules (rich, the web dashboard...), which saves it memory and
start-up time (issue 17). Every other command line, and `flowmill.cli.cli`, registers
them all.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from . import _root
from ._common import to_json

if TYPE_CHECKING:
    from ._root import cli as cli


def _register_all() -> Any:
    """Register every command on `cli` (importing a command module registers its commands,
    in the order `--help` lists them) and return it."""
    # isort: off
    from . import _run, _submit, _inspect, _admin, _workflows, _schedules, _ops  # noqa: F401
    # isort: on

    return _root.cli


def __getattr__(name: str) -> Any:
    if name == "cli":
        return _register_all()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `flowmill` console script and `python -m flowmill`."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["worker"]:
        from . import _run  # noqa: F401  (registers `worker` alone)
    else:
        _register_all()
    _root.cli(args=args, prog_name="flowmill")


__all__ = ["cli", "main", "to_json"]
