"""The `flowmill` command: run workers, submit and inspect tasks, migrate, and the demo."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from typing import Annotated, Any, NoReturn, TypeVar

import msgspec
import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ._app import App, TaskInfo
from ._budgets import BudgetStatus
from ._clock import from_ms
from ._loader import load_app
from ._states import State
from .errors import FlowmillError, IllegalTransition, TaskFailed
from .store import DEFAULT_URL
from .store.contract.capabilities import MigrateResult
from .workflows._builder import WorkflowStatus

log = logging.getLogger("flowmill.cli")
T = TypeVar("T")

cli = typer.Typer(
    name="flowmill",
    help="flowmill: durable tasks for Python. Run workers, submit and inspect tasks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
tasks_cli = typer.Typer(help="List, show, cancel and retry tasks.", no_args_is_help=True)
cli.add_typer(tasks_cli, name="tasks")

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


# -- plumbing ------------------------------------------------------------------------


def _out() -> Console:
    # Made per call, not at import: a test runner swaps sys.stdout between invocations.
    # Piped output is not cut to 80 columns: lines that grep sees whole are worth more.
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(highlight=False, width=240 if wide else None)


def _table(*columns: str, header: bool = True) -> Table:
    table = Table(show_header=header, box=box.SIMPLE_HEAD, show_edge=False)
    for col in columns:
        table.add_column(col)
    return table


def _print_titled(console: Console, title: str, table: Table) -> None:
    """A table under a title line that is never wrapped: a long database URL stays whole."""
    console.print(Text(title, style="italic"), soft_wrap=True)
    console.print(table)


def _row(table: Table, *cells: str) -> None:
    # Text cells: a payload, error or name may hold "[...]", which is not rich markup here.
    table.add_row(*(Text(c) for c in cells))


def _print_columns(console: Console, title: str, headers: list[str], rows: list[list[str]]) -> None:
    """Aligned plain columns, one line per row, never wrapped: a terminal or grep sees it whole."""
    widths = [max(len(h), *(len(r[n]) for r in rows)) for n, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    console.print(Text(title, style="bold"), soft_wrap=True)
    console.print(Text(line(headers), style="bold"), soft_wrap=True)
    for r in rows:
        console.print(Text(line(r)), soft_wrap=True)


def _fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr, no traceback, and a non-zero exit."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        Text.assemble(("error:", "bold red"), " ", message)
    )
    raise typer.Exit(code)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn flowmill's errors (bad app path, bad URL, unknown id...) into one-line messages."""
    try:
        yield
    except FlowmillError as exc:
        _fail(str(exc) or type(exc).__name__)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _setup_logging(level: str) -> None:
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        _fail(f"bad --log-level {level!r}: use debug, info, warning or error", 2)
    logging.basicConfig(
        level=number,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _seconds(name: str, value: float | None) -> timedelta | None:
    if value is None:
        return None
    if value < 0:
        _fail(f"{name} must be >= 0, got {value}", 2)
    return timedelta(seconds=value)


def _make_app(url: str | None, app_path: str | None) -> App:
    """The App an inspection command talks to: `--app`'s (for its types) on `--url`'s store."""
    if app_path is None:
        return App(url)
    loaded = load_app(app_path)
    if url is None or url == loaded.url:
        return loaded
    app = App(url)
    app.registry.update(loaded.registry)
    return app


async def _require_store(app: App) -> None:
    """Refuse to read a local store file that holds no flowmill schema: opening it would
    create an empty database where a mistyped path was meant."""
    if app.store.capabilities.local_file and await app.store.schema_version() is None:
        _fail(
            f"no flowmill database at {app.url} (check --url, or create it with "
            f"`flowmill migrate --url {app.url}`)"
        )


def _run_on(app: App, work: Callable[[App], Awaitable[T]]) -> T:
    """Run `work(app)` on a fresh event loop, then close the app."""

    async def main() -> T:
        try:
            return await work(app)
        finally:
            await app.close()

    return asyncio.run(main())


def _inspect(
    url: str | None, app_path: str | None, work: Callable[[App], Awaitable[T]]
) -> tuple[App, T]:
    """Run `work` on the store that `--url`/`--app` name, which must exist already."""

    async def checked(app: App) -> T:
        await _require_store(app)
        return await work(app)

    with _errors():
        app = _make_app(url, app_path)
        return app, _run_on(app, checked)


def _json_default(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)  # pydantic models
    if callable(dump):
        return dump(mode="json")
    return repr(obj)


def to_json(value: Any, *, indent: int = 0) -> str:
    """A payload or result as JSON text (dataclasses, msgspec Structs and pydantic models too)."""
    data = msgspec.json.encode(value, enc_hook=_json_default)
    return (msgspec.json.format(data, indent=indent) if indent else data).decode()


def _when(value: datetime | None, *, short: bool = False) -> str:
    if value is None:
        return "-"
    local = value.astimezone()
    if short:
        return local.strftime("%Y-%m-%d %H:%M:%S")
    return local.isoformat(sep=" ", timespec="milliseconds")


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _states(values: list[str] | None) -> list[State]:
    out: list[State] = []
    for value in values or []:
        for name in filter(None, (v.strip() for v in value.split(","))):
            try:
                out.append(State(name.lower()))
            except ValueError:
                _fail(f"unknown state {name!r}: use one of {', '.join(s.value for s in State)}", 2)
    return out


# -- worker and submit ---------------------------------------------------------------


@cli.command()
def worker(
    app_path: AppArg,
    concurrency: Annotated[int, typer.Option(min=1, help="Attempts run at once")] = 64,
    queues: Annotated[
        str | None, typer.Option(help="Comma-separated queues [default: the app's queues]")
    ] = None,
    lease_ttl: Annotated[
        float, typer.Option("--lease-ttl", min=0.1, help="Lease length, seconds")
    ] = 30.0,
    shutdown_grace: Annotated[
        float,
        typer.Option("--shutdown-grace", min=0, help="On SIGTERM, seconds to let attempts end"),
    ] = 30.0,
    log_level: LogLevelOpt = "info",
) -> None:
    """Run a worker for MODULE:APP until SIGTERM or Ctrl-C (a second one cancels attempts)."""
    _setup_logging(log_level)
    with _errors():
        app = load_app(app_path)
        w = app.worker(
            concurrency=concurrency,
            queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
            lease_ttl=timedelta(seconds=lease_ttl),
            shutdown_grace=timedelta(seconds=shutdown_grace),
        )

        async def run(app: App) -> None:
            await w.run(install_signal_handlers=True)

        _run_on(app, run)
    if w.runner.stats.abandoned_threads > 0:
        # A sync handler ignored its stop request and still runs in a non-daemon executor
        # thread, which would keep the interpreter from exiting: leave without waiting.
        log.warning(
            "%d handler thread(s) did not stop; exiting without waiting for them",
            w.runner.stats.abandoned_threads,
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@cli.command()
def submit(
    app_path: AppArg,
    task_name: Annotated[str, typer.Argument(metavar="TASK_NAME", help="A registered task")],
    payload: Annotated[
        str | None, typer.Argument(metavar="PAYLOAD_JSON", help="The payload as JSON")
    ] = None,
    key: Annotated[str | None, typer.Option(help="Dedup key: one active task per key")] = None,
    delay: Annotated[float | None, typer.Option(help="Run after this many seconds")] = None,
    priority: Annotated[int | None, typer.Option(help="Higher runs first")] = None,
    queue: Annotated[str | None, typer.Option(help="Queue [default: the task's]")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result and print it")] = False,
    timeout: Annotated[
        float | None, typer.Option(help="With --wait: give up after this many seconds")
    ] = None,
) -> None:
    """Submit one task and print its id (with --wait, then its result as JSON)."""
    with _errors():
        app = load_app(app_path)
        tdef = app.registry.get(task_name)
        if tdef is None:
            names = ", ".join(app.task_names()) or "none"
            _fail(f"no task named {task_name!r} in {app_path} (registered: {names})")
        value = tdef.payload.decode((payload if payload is not None else "null").encode())

        async def run(app: App) -> tuple[str, Any]:
            h = await app.submit(
                tdef, value, key=key, delay=_seconds("--delay", delay), priority=priority,
                queue=queue,
            )  # fmt: skip
            if not wait:
                return h.id, None
            print(h.id, flush=True)
            return h.id, await h.result(timeout=_seconds("--timeout", timeout))

        try:
            task_id, result = _run_on(app, run)
        except TaskFailed as exc:
            _fail(f"task {exc.task_id} ended {exc.state}: {exc.error_type}: {exc.message}")
    if wait:
        print(to_json(result))
    else:
        print(task_id)


# -- inspection ----------------------------------------------------------------------


@cli.command()
def status(url: UrlOpt = None, app_path: AppOpt = None) -> None:
    """Task counts by queue and state, dead letters included; then every budget."""
    app, rows = _inspect(url, app_path, lambda app: app.status())
    console = _out()
    if not rows:
        console.print(f"no tasks in {app.url}")
        _print_budgets(console, rows.budgets)
        return
    shown = [s for s in State if s is State.DEAD_LETTERED or any(r.state is s for r in rows)]
    queues = sorted({r.queue for r in rows})
    counts = {(r.queue, r.state): r.count for r in rows}
    table = _table("queue")
    for s in shown:
        table.add_column(s.value, justify="right", style="red" if s is State.DEAD_LETTERED else "")
    table.add_column("total", justify="right", style="bold")
    for q in [*queues, "all"] if len(queues) > 1 else queues:
        picked = queues if q == "all" else [q]
        cells = [sum(counts.get((p, s), 0) for p in picked) for s in shown]
        total = sum(r.count for r in rows if r.queue in picked)
        _row(table, q, *(str(c) for c in cells), str(total))
    _print_titled(console, f"tasks in {app.url}", table)
    _print_budgets(console, rows.budgets)


def _amounts(values: dict[str, int]) -> str:
    return ", ".join(f"{k}={v:,}" for k, v in sorted(values.items())) or "-"


def _print_budgets(console: Console, budgets: list[BudgetStatus]) -> None:
    """Usage against limits; a hard-breached budget holds its ready tasks back."""
    if not budgets:
        return
    table = _table("budget", "usage", "hard", "soft", "window ends", "state", "held")
    for b in budgets:
        state = f"HARD-BREACHED ({', '.join(b.breached)})" if b.hard_breached else "ok"
        _row(
            table,
            b.id,
            _amounts(b.usage),
            _amounts(b.hard),
            _amounts(b.soft),
            _when(b.window_ends_at, short=True),
            state,
            str(b.tasks_held),
        )
    _print_titled(console, "budgets", table)


@tasks_cli.command("list")
def tasks_list(
    state: Annotated[
        list[str] | None, typer.Option(help="Only these states (repeat, or comma-separate)")
    ] = None,
    queue: Annotated[str | None, typer.Option(help="Only this queue")] = None,
    name: Annotated[str | None, typer.Option(help="Only this task name")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many")] = 50,
    after: Annotated[str | None, typer.Option(help="Start after this task id")] = None,
    url: UrlOpt = None,
    app_path: AppOpt = None,
) -> None:
    """Tasks in submission order, filtered."""
    states = _states(state)
    app, infos = _inspect(
        url,
        app_path,
        lambda app: app.list_tasks(states=states, queue=queue, name=name, limit=limit, after=after),
    )
    _print_tasks(infos, limit, f"tasks in {app.url}")


def _print_tasks(infos: list[TaskInfo], limit: int, title: str) -> None:
    console = _out()
    if not infos:
        console.print("no matching tasks")
        return
    rows = [
        [
            i.id,
            i.name,
            i.queue,
            i.state.value,
            f"{i.attempts}/{i.max_attempts}",
            str(i.priority),
            _when(i.created_at, short=True),
            f"{i.error.type}: {_short(i.error.message, 50)}" if i.error else "",
        ]
        for i in infos
    ]
    headers = ["id", "name", "queue", "state", "tries", "prio", "created", "error"]
    _print_columns(console, title, headers, rows)
    if len(infos) == limit:
        console.print(f"(first {limit}; next page: --after {infos[-1].id})")


@tasks_cli.command("show")
def tasks_show(task_id: IdArg, url: UrlOpt = None, app_path: AppOpt = None) -> None:
    """Every field of one task, its error with traceback, and its result."""
    _, info = _inspect(url, app_path, lambda app: app.get(task_id))
    console = _out()
    table = _table("field", "value", header=False)
    table.columns[0].style = "bold"
    table.columns[0].no_wrap = True
    table.columns[1].overflow = "fold"
    fields: list[tuple[str, str]] = [
        ("id", info.id),
        ("name", info.name),
        ("queue", info.queue),
        ("state", info.state.value),
        ("phase", info.phase.value),
        ("attempts", f"{info.attempts} of {info.max_attempts}"),
        ("priority", str(info.priority)),
        ("key", info.key or "-"),
        ("tags", to_json(info.tags) if info.tags else "-"),
        ("parent", info.parent_id or "-"),
        ("progress", "-" if info.progress is None else f"{info.progress:g}%"),
        ("progress message", info.progress_message or "-"),
        ("lease owner", info.lease_owner or "-"),
        ("lease expires", _when(info.lease_expires_at)),
        ("cancel requested", "yes" if info.cancel_requested else "no"),
        ("created", _when(info.created_at)),
        ("updated", _when(info.updated_at)),
        ("run at", _when(info.run_at)),
        ("expires", _when(info.expires_at)),
        ("started", _when(info.started_at)),
        ("finished", _when(info.finished_at)),
        ("payload", to_json(info.payload, indent=2)),
        ("result", "-" if info.result is None else to_json(info.result, indent=2)),
    ]
    if info.error is not None:
        fields.append(("error", f"{info.error.type} ({info.error.category}): {info.error.message}"))
    for k, v in fields:
        _row(table, k, v)
    _print_titled(console, f"task {info.id}", table)
    if info.error is not None and info.error.traceback:
        console.print("[bold]traceback[/] (last attempt):", markup=True)
        console.print(info.error.traceback.rstrip(), markup=False)


@tasks_cli.command("cancel")
def tasks_cancel(task_id: IdArg, url: UrlOpt = None, app_path: AppOpt = None) -> None:
    """Cancel a waiting task now, or ask a running one to stop."""
    _, after = _inspect(
        url, app_path, lambda app: app.cancel(task_id, "cancelled from the flowmill CLI")
    )
    if after is State.CANCELLED:
        print(f"task {task_id}: cancelled")
    elif after is State.RUNNING:
        print(f"task {task_id}: running; asked its worker to stop it")
    else:
        _fail(f"task {task_id} is {after.value}: it can no longer be cancelled")


def _retry(task_id: str, url: str | None, app_path: str | None) -> None:
    async def retry(app: App) -> State:
        try:
            return await app.retry(task_id)
        except IllegalTransition as exc:
            raise FlowmillError(
                f"task {task_id} is {exc.source}: only failed or dead-lettered tasks can be retried"
            ) from None

    _, after = _inspect(url, app_path, retry)
    print(f"task {task_id}: {after.value} (a fresh attempt budget)")


@tasks_cli.command("retry")
def tasks_retry(task_id: IdArg, url: UrlOpt = None, app_path: AppOpt = None) -> None:
    """Run a failed or dead-lettered task again."""
    _retry(task_id, url, app_path)


@cli.command()
def replay(task_id: IdArg, url: UrlOpt = None, app_path: AppOpt = None) -> None:
    """Run a dead-lettered (or failed) task again: the same as `tasks retry`."""
    _retry(task_id, url, app_path)


@cli.command("dead-letters")
def dead_letters(
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many")] = 50,
    after: Annotated[str | None, typer.Option(help="Start after this task id")] = None,
    url: UrlOpt = None,
    app_path: AppOpt = None,
) -> None:
    """Tasks whose retries ran out, oldest first; `flowmill replay ID` runs one again."""
    app, infos = _inspect(url, app_path, lambda app: app.dead_letters(limit=limit, after=after))
    console = _out()
    if not infos:
        console.print(f"no dead letters in {app.url}")
        return
    rows = [
        [
            i.id,
            i.name,
            i.queue,
            f"{i.attempts}/{i.max_attempts}",
            _when(i.finished_at, short=True),
            f"{i.error.type}: {_short(i.error.message, 50)}" if i.error else "",
        ]
        for i in infos
    ]
    headers = ["id", "name", "queue", "tries", "finished", "error"]
    _print_columns(console, f"dead letters in {app.url}", headers, rows)
    if len(infos) == limit:
        console.print(f"(first {limit}; next page: --after {infos[-1].id})")


# -- schema and demo -----------------------------------------------------------------


@cli.command()
def migrate(url: UrlOpt = None) -> None:
    """Create or upgrade the store's schema, and print its version."""
    with _errors():
        app = App(url)

        async def run(app: App) -> MigrateResult:
            done = await app.store.migrate()
            await app.open()
            return done

        done = _run_on(app, run)
    if done.created:
        print(f"{app.url}: created schema version {done.after}")
    elif done.upgraded:
        print(f"{app.url}: upgraded schema from version {done.before} to {done.after}")
    else:
        print(f"{app.url}: schema version {done.after} is up to date")


@cli.command()
def demo(
    url: Annotated[
        str | None,
        typer.Option(help="Store URL [default: a fresh sqlite:///flowmill-demo.db]"),
    ] = None,
    tasks: Annotated[int, typer.Option(min=1, max=100_000, help="How many fetch tasks")] = 200,
    workers: Annotated[int, typer.Option(min=1, max=64, help="In-process workers")] = 2,
    concurrency: Annotated[int, typer.Option(min=1, help="Attempts at once per worker")] = 32,
    progress: Annotated[bool, typer.Option(help="Show a live progress bar")] = True,
    log_level: LogLevelOpt = "warning",
) -> None:
    """Run a small thumbnail pipeline end to end: retries, priorities, a delay, a dead letter."""
    from . import _demo

    _setup_logging(log_level)
    console = _out()
    if url is None:
        url = _demo.DEFAULT_URL
        for suffix in ("", "-wal", "-shm"):  # "fresh": the default file is the demo's own
            with contextlib.suppress(FileNotFoundError):
                os.remove("flowmill-demo.db" + suffix)
    console.print(
        f"[bold]flowmill demo[/]: {tasks} thumbnails on {url} with {workers} in-process "
        f"worker(s) x {concurrency}",
        markup=True,
    )
    started = time.perf_counter()
    with _errors():
        summary = asyncio.run(
            _demo.run_demo(
                url,
                tasks=tasks,
                workers=workers,
                concurrency=concurrency,
                console=console,
                progress=progress,
            )
        )
    _demo.render_summary(summary, console, _demo.command_name(sys.argv[0]))
    log.debug("demo took %.2fs in all", time.perf_counter() - started)


def main() -> None:
    """Entry point of the `flowmill` console script and `python -m flowmill`."""
    cli(prog_name="flowmill")


@cli.command()
def serve(
    app_path: AppArg,
    host: Annotated[str, typer.Option(help="Address to bind (keep it local by default)")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port")] = 8765,
    log_level: LogLevelOpt = "info",
) -> None:
    """Serve POST /signals/{waitpoint_id} for MODULE:APP (webhooks, e-mail approvals)."""
    _setup_logging(log_level)
    with _errors():
        app = load_app(app_path)
        try:
            import uvicorn
        except ImportError:
            _fail("flowmill serve needs uvicorn: pip install 'flowmill[dashboard]'")
        from .web import signals_app

        uvicorn.run(signals_app(app), host=host, port=port, log_level=log_level.lower())


# -- workflows -----------------------------------------------------------------------

workflows_cli = typer.Typer(help="List and show workflow runs.", no_args_is_help=True)
cli.add_typer(workflows_cli, name="workflows")

_STATE_STYLE = {
    "completed": "green",
    "failed": "red",
    "dead_lettered": "red",
    "cancelled": "yellow",
    "expired": "yellow",
    "skipped": "dim",
    "running": "cyan",
    "ready": "blue",
    "blocked": "dim",
}


def _duration(value: timedelta | None) -> str:
    if value is None:
        return ""
    ms = value.total_seconds() * 1000
    return f" {ms:.0f} ms" if ms < 10_000 else f" {ms / 1000:.1f} s"


@workflows_cli.command("list")
def workflows_list(
    url: UrlOpt = None,
    app_path: AppOpt = None,
    name: Annotated[str | None, typer.Option(help="Only runs of this workflow")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many runs")] = 20,
) -> None:
    """The newest workflow runs, with their nodes counted by state."""
    _, runs = _inspect(url, app_path, lambda app: app.workflow_runs(name=name, limit=limit))
    console = _out()
    if not runs:
        console.print("no workflow runs")
        return
    rows = [
        [
            r.id,
            r.name,
            _when(from_ms(r.created_at_ms), short=True),
            f"{r.total}",
            ", ".join(f"{s.value} {n}" for s, n in sorted(r.by_state.items())),
        ]
        for r in runs
    ]
    _print_columns(console, "workflow runs", ["id", "name", "created", "nodes", "states"], rows)


@workflows_cli.command("show")
def workflows_show(
    run_id: Annotated[str, typer.Argument(metavar="ID", help="The workflow run id")],
    url: UrlOpt = None,
    app_path: AppOpt = None,
) -> None:
    """A tree of the run's nodes: state, duration, attempts and errors.

    Each node is drawn under its first upstream; its other upstreams are named."""
    from rich.tree import Tree

    async def work(app: App) -> WorkflowStatus:
        return await (await app.workflow_run(run_id)).status()

    _, status = _inspect(url, app_path, work)
    console = _out()
    counts = ", ".join(f"{s.value} {n}" for s, n in sorted(status.counts.items()))
    root = Tree(
        Text.assemble(
            (f"{status.name}", "bold"),
            f"  run {status.id}  ",
            (status.state.value, _STATE_STYLE.get(status.state.value, "")),
            f"  ({counts})",
        )
    )
    branches: dict[str, Tree] = {}
    for node in status.nodes.values():
        parent = branches.get(node.upstream[0], root) if node.upstream else root
        label = Text.assemble(
            (node.name, "bold"),
            "  ",
            (node.state.value, _STATE_STYLE.get(node.state.value, "")),
            _duration(node.duration),
            f"  attempts {node.attempts}" if node.attempts > 1 else "",
            f"  (also after {', '.join(node.upstream[1:])})" if len(node.upstream) > 1 else "",
        )
        if node.error is not None:
            label.append(f"\n{node.error.type}: {node.error.message}", style="red")
        branches[node.name] = parent.add(label)
    console.print(root)
