"""The `flowmill` command's Typer apps, the options its commands share, and `main`."""

from __future__ import annotations

from typing import Annotated

import typer

from ..store import DEFAULT_URL

cli = typer.Typer(
    name="flowmill",
    help="flowmill: durable tasks for Python. Run workers, submit and inspect tasks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
tasks_cli = typer.Typer(help="List, show, cancel and retry tasks.", no_args_is_help=True)
cli.add_typer(tasks_cli, name="tasks")
workflows_cli = typer.Typer(help="List and show workflow runs.", no_args_is_help=True)
cli.add_typer(workflows_cli, name="workflows")
queues_cli = typer.Typer(help="List, pause and resume queues.", no_args_is_help=True)
cli.add_typer(queues_cli, name="queues")

AppArg = Annotated[
    str, typer.Argument(metavar="MODULE:APP", help="Where the App is, e.g. jobs:app")
]
UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        help=f"Store URL. Default: the --app's URL, else $FLOWMILL_URL, else {DEFAULT_URL}",
        show_default=False,
    ),
]
AppOpt = Annotated[
    str | None,
    typer.Option(
        "--app",
        metavar="MODULE:APP",
        help="Load this App to decode payloads and results by their task types",
    ),
]
IdArg = Annotated[str, typer.Argument(metavar="ID", help="The task id")]
LogLevelOpt = Annotated[
    str, typer.Option("--log-level", help="debug, info, warning or error", case_sensitive=False)
]


def main() -> None:
    """Entry point of the `flowmill` console script and `python -m flowmill`."""
    cli(prog_name="flowmill")
