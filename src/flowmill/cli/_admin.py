"""`flowmill migrate`, `flowmill demo` and `flowmill serve`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from typing import Annotated

import typer

from .._app import App
from .._logging import mask_url
from ..store.contract.capabilities import MigrateResult
from ._common import (
    fail,
    make_app,
    on_store,
    one_line_errors,
    run_on,
    setup_logging,
    stdout_console,
)
from ._root import AppOpt, LogLevelOpt, UrlOpt, cli

log = logging.getLogger("flowmill.cli")


@cli.command()
def migrate(url: UrlOpt = None, app_path: AppOpt = None) -> None:
    """Create or upgrade the store's schema, and print its version."""
    with one_line_errors():
        app = make_app(url, app_path)

        async def run(app: App) -> MigrateResult:
            done = await app.store.migrate()
            await app.open()
            return done

        done = run_on(app, run)
    if done.created:
        print(f"{mask_url(app.url)}: created schema version {done.after}")
    elif done.upgraded:
        print(f"{mask_url(app.url)}: upgraded schema from version {done.before} to {done.after}")
    else:
        print(f"{mask_url(app.url)}: schema version {done.after} is up to date")


@cli.command()
def demo(
    url: Annotated[
        str | None,
        typer.Option(metavar="URL", help="Store URL [default: a fresh sqlite:///flowmill-demo.db]"),
    ] = None,
    tasks: Annotated[
        int, typer.Option(metavar="N", min=1, max=100_000, help="How many fetch tasks")
    ] = 200,
    workers: Annotated[
        int, typer.Option(metavar="N", min=1, max=64, help="In-process workers")
    ] = 2,
    concurrency: Annotated[
        int, typer.Option(metavar="N", min=1, help="Attempts at once per worker")
    ] = 32,
    progress: Annotated[bool, typer.Option(help="Show a live progress bar")] = True,
    log_level: LogLevelOpt = "warning",
) -> None:
    """Run a small thumbnail pipeline end to end: retries, priorities, a delay, a dead letter."""
    from .. import _demo

    setup_logging(log_level)
    console = stdout_console()
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
    with one_line_errors():
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


@cli.command()
def serve(
    app_path: Annotated[
        str | None,
        typer.Argument(
            metavar="[MODULE:APP]",
            help="Where the App is (optional: --url alone serves any store)",
            show_default=False,
        ),
    ] = None,
    url: UrlOpt = None,
    host: Annotated[
        str, typer.Option(metavar="ADDRESS", help="Address to bind (keep it local by default)")
    ] = ("127.0.0.1"),
    port: Annotated[int, typer.Option(metavar="PORT", min=1, max=65535, help="Port")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            metavar="TOKEN",
            help="Dashboard token [default: $FLOWMILL_TOKEN, else a new one, printed]",
            show_default=False,
        ),
    ] = None,
    metrics_open: Annotated[
        bool, typer.Option("--metrics-open", help="Serve /metrics without the token")
    ] = False,
    log_level: LogLevelOpt = "info",
) -> None:
    """Serve the dashboard (/), its JSON API (/api), /metrics, /healthz and
    POST /signals/{waitpoint_id} (webhooks, e-mail approvals)."""
    setup_logging(log_level)
    with one_line_errors():
        app = make_app(url, app_path)
        try:
            import uvicorn
        except ImportError:
            fail("flowmill serve needs uvicorn: pip install 'flowmill[dashboard]'")
        from ..web import dashboard_app
        from ..web._dashboard import RedactToken, login_url, resolve_token

        chosen, generated = resolve_token(token)
        web = dashboard_app(app, token=chosen, metrics_open=metrics_open)
        if generated:  # nobody knows it yet: show it once, as Jupyter does
            print(f"flowmill dashboard: {login_url(host, port, chosen)}", flush=True)
        else:
            where = f"http://{host}:{port}/"
            print(f"flowmill dashboard: {where} (log in with your token)", flush=True)
        config = uvicorn.Config(web, host=host, port=port, log_level=log_level.lower())
        logging.getLogger("uvicorn.access").addFilter(RedactToken())  # after its log setup
        uvicorn.Server(config).run()


@cli.command()
def metrics(url: UrlOpt = None, app_path: AppOpt = None) -> None:
    """Print the store-derived gauges in Prometheus text format (what /metrics serves)."""
    from .._metrics import render_gauges

    async def read(app: App) -> str:
        return render_gauges(await app.metrics_snapshot())

    _, text = on_store(url, app_path, read)
    sys.stdout.write(text)
