"""`flowmill worker` and `flowmill submit`: run tasks, and submit one."""

from __future__ import annotations

import logging
import os
import sys
from datetime import timedelta
from typing import Annotated

import typer

from .._app import App
from .._loader import load_app
from ._common import (
    one_line_errors,
    run_on,
    setup_logging,
)
from ._root import AppArg, LogLevelOpt, cli

log = logging.getLogger("flowmill.cli")


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
    setup_logging(log_level)
    with one_line_errors():
        app = load_app(app_path)
        w = app.worker(
            concurrency=concurrency,
            queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
            lease_ttl=timedelta(seconds=lease_ttl),
            shutdown_grace=timedelta(seconds=shutdown_grace),
        )

        async def run(app: App) -> None:
            await w.run(install_signal_handlers=True)

        run_on(app, run)
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
