"""The `flowmill` command's Typer apps and the options its commands share (`main` is in
`flowmill.cli`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperGroup

from ..store import DEFAULT_URL

HELP_NAMES = {"help_option_names": ["-h", "--help"]}


def _no_type(ctx: typer.Context) -> None:
    return None


def _tidy(param: Any) -> None:
    """Help shows what a value means (SECONDS, MODULE:APP), never `<str>`, `<bool>` or TEXT:
    an argument shows its name only, and an option only the metavar given to it, if any."""
    if isinstance(param, TyperArgument) or param.metavar is None:
        # An instance attribute: typer's rich help reads this method for the type column.
        param.display_type_rich = _no_type


class Group(TyperGroup):
    """A command group whose commands' help is tidied (see `_tidy`)."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for p in params:
            _tidy(p)
        return params

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None and not isinstance(cmd, TyperGroup):
            for p in cmd.params:
                _tidy(p)
            help_option = cmd.get_help_option(ctx)
            if help_option is not None:
                _tidy(help_option)
        return cmd


def _group(**options: Any) -> typer.Typer:
    return typer.Typer(
        cls=Group,
        context_settings=HELP_NAMES,
        no_args_is_help=True,
        rich_markup_mode="markdown",  # not "rich": `[default: ...]` in a help text is text
        **options,
    )


cli = _group(
    name="flowmill",
    help="flowmill: durable tasks for Python. Run workers, submit and inspect tasks.",
    add_completion=False,
    pretty_exceptions_enable=False,
)
tasks_cli = _group(help="List, show, cancel and retry tasks.")
cli.add_typer(tasks_cli, name="tasks")
workflows_cli = _group(help="List and show workflow runs.")
cli.add_typer(workflows_cli, name="workflows")
queues_cli = _group(help="List, pause and resume queues.")
cli.add_typer(queues_cli, name="queues")

schedules_cli = _group(help="List, pause, resume and run schedules (periodic tasks).")
cli.add_typer(schedules_cli, name="schedules")


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        print(f"flowmill {__version__}")
        raise typer.Exit()


@cli.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            callback=_print_version,
            is_eager=True,
            help="Print flowmill's version and exit.",
        ),
    ] = False,
) -> None:
    """flowmill: durable tasks for Python. Run workers, submit and inspect tasks."""


AppArg = Annotated[
    str, typer.Argument(metavar="MODULE:APP", help="Where the App is, e.g. jobs:app")
]
UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        metavar="URL",
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
    str,
    typer.Option(
        "--log-level", metavar="LEVEL", help="debug, info, warning or error", case_sensitive=False
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option("--json", help="Print JSON (see docs/howto/cli-json.md) instead of a table"),
]
