"""The `flowmill` command: run workers, submit and inspect tasks, migrate, and the demo.

A plain `flowmill worker MODULE:APP --option value ...` command line runs without typer,
rich or the other commands' modules (`_worker` parses it), which keeps a worker process's
memory and start-up time down (issue 17). Every other command line goes through the typer
app, `flowmill.cli.cli`, with all commands registered.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._common import to_json as to_json
    from ._root import cli as cli


def _register_all() -> Any:
    """Register every command on `cli` (importing a command module registers its commands,
    in the order `--help` lists them) and return it."""
    # isort: off
    from . import _run, _submit, _inspect, _admin, _workflows, _schedules, _ops  # noqa: F401
    from ._root import cli
    # isort: on

    return cli


def __getattr__(name: str) -> Any:
    # `cli` and `to_json` are imported on first use: `flowmill worker` needs neither.
    if name == "cli":
        return _register_all()
    if name == "to_json":
        from ._common import to_json

        return to_json
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `flowmill` console script and `python -m flowmill`."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["worker"]:
        from ._worker import main as worker_main

        code = worker_main(args[1:])
        if code is not None:
            sys.exit(code)
    _register_all()(args=args, prog_name="flowmill")


__all__ = ["cli", "main", "to_json"]
