"""What every `flowmill` command shares: output, one-line errors, the App and store it
talks to, and value formatting."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import msgspec
import typer

from .._app import App
from .._loader import load_app
from .._logging import LogFormat, mask_url
from .._logging import setup as setup_log_output
from .._states import State
from ..errors import FlowmillError
from ._base import explain_store_error as explain_store_error
from ._base import print_error
from ._base import run_on as run_on
from ._base import store_file as store_file

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

# rich is imported inside the functions that print with it: `flowmill worker` prints
# nothing with rich, and a worker process should not carry its modules (see issue 17).

T = TypeVar("T")


def stdout_console() -> Console:
    from rich.console import Console

    # Made per call, not at import: a test runner swaps sys.stdout between invocations.
    # Piped output is not cut to 80 columns: lines that grep sees whole are worth more.
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(highlight=False, width=240 if wide else None)


def new_table(*columns: str, header: bool = True) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(show_header=header, box=box.SIMPLE_HEAD, show_edge=False)
    for col in columns:
        table.add_column(col)
    return table


def print_titled(console: Console, title: str, table: Table) -> None:
    """A table under a title line that is never wrapped: a long database URL stays whole."""
    from rich.text import Text

    console.print(Text(title, style="italic"), soft_wrap=True)
    console.print(table)


def add_row(table: Table, *cells: str) -> None:
    from rich.text import Text

    # Text cells: a payload, error or name may hold "[...]", which is not rich markup here.
    table.add_row(*(Text(c) for c in cells))


def print_columns(console: Console, title: str, headers: list[str], rows: list[list[str]]) -> None:
    """Aligned plain columns, one line per row, never wrapped: a terminal or grep sees it whole."""
    from rich.text import Text

    widths = [max(len(h), *(len(r[n]) for r in rows)) for n, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    console.print(Text(title, style="bold"), soft_wrap=True)
    console.print(Text(line(headers), style="bold"), soft_wrap=True)
    for r in rows:
        console.print(Text(line(r)), soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr, no traceback, and a non-zero exit."""
    print_error(message)
    raise typer.Exit(code)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn flowmill's errors (bad app path, bad URL, unknown id...) into one-line messages."""
    try:
        yield
    except FlowmillError as exc:
        fail(str(exc) or type(exc).__name__)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def setup_logging(level: str, fmt: LogFormat = "text") -> None:
    """Log at `level` and above to stderr, as text or JSON lines (see `flowmill._logging`)."""
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        fail(f"bad --log-level {level!r}: use debug, info, warning or error", 2)
    setup_log_output(number, fmt)


def seconds(name: str, value: float | None) -> timedelta | None:
    if value is None:
        return None
    if value < 0:
        fail(f"{name} must be >= 0, got {value}", 2)
    return timedelta(seconds=value)


def make_app(url: str | None, app_path: str | None) -> App:
    """The App an inspection command talks to: `--app`'s (for its types) on `--url`'s store."""
    if app_path is None:
        return App(url)
    loaded = load_app(app_path)
    if url is None or url == loaded.url:
        return loaded
    app = App(url)
    app.registry.update(loaded.registry)
    return app


async def require_store(app: App) -> None:
    """Refuse to read a local store file that holds no flowmill schema: opening it would
    create an empty database where a mistyped path was meant."""
    if app.store.capabilities.local_file and await app.store.schema_version() is None:
        fail(
            f"no flowmill database at {mask_url(app.url)} (check --url, or create it with "
            f"`flowmill migrate --url {mask_url(app.url)}`)"
        )


def on_store(
    url: str | None, app_path: str | None, work: Callable[[App], Awaitable[T]]
) -> tuple[App, T]:
    """Run `work` on the store that `--url`/`--app` name, which must exist already."""

    async def checked(app: App) -> T:
        await require_store(app)
        return await work(app)

    with one_line_errors():
        app = make_app(url, app_path)
        return app, run_on(app, checked)


def _json_default(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)  # pydantic models
    if callable(dump):
        return dump(mode="json")
    return repr(obj)


def to_json(value: Any, *, indent: int = 0) -> str:
    """A payload or result as JSON text (dataclasses, msgspec Structs and pydantic models too)."""
    data = msgspec.json.encode(value, enc_hook=_json_default)
    return (msgspec.json.format(data, indent=indent) if indent else data).decode()


def when(value: datetime | None, *, short: bool = False) -> str:
    if value is None:
        return "-"
    local = value.astimezone()
    if short:
        return local.strftime("%Y-%m-%d %H:%M:%S")
    return local.isoformat(sep=" ", timespec="milliseconds")


def shorten(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def parse_states(values: list[str] | None) -> list[State]:
    out: list[State] = []
    for value in values or []:
        for name in filter(None, (v.strip() for v in value.split(","))):
            try:
                out.append(State(name.lower()))
            except ValueError:
                fail(f"unknown state {name!r}: use one of {', '.join(s.value for s in State)}", 2)
    return out


def parse_tag(value: str | None) -> tuple[str | None, str | None]:
    """`--tag KEY` or `--tag KEY=VALUE` as (key, value); (None, None) without the option."""
    if value is None:
        return None, None
    key, eq, tag_value = value.partition("=")
    if not key:
        fail(f"bad --tag {value!r}: use KEY or KEY=VALUE", 2)
    return key, (tag_value if eq else None)
