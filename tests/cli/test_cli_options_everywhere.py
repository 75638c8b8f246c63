"""Every command that talks to a store takes both `--url` and `--app`.

The help of `--url` says "Default: the --app's URL"; a command without `--app` made that
a promise it could not keep (and `--app` gives a command the app's task types).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import typer.main

from flowmill.cli import cli


def _commands(group: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    for name, cmd in sorted(group.commands.items()):
        full = f"{path} {name}".strip()
        if hasattr(cmd, "commands"):  # a group
            yield from _commands(cmd, full)
        else:
            yield full, cmd


def test_every_command_with_url_also_takes_app() -> None:
    root = typer.main.get_command(cli)
    missing = []
    checked = 0
    for name, cmd in _commands(root):
        opts = {o for p in cmd.params for o in getattr(p, "opts", ())}
        # serve takes its app as an argument; demo builds its own
        if "--url" in opts and name not in ("demo", "serve"):
            checked += 1
            if "--app" not in opts:
                missing.append(name)
    assert checked >= 20
    assert missing == []
