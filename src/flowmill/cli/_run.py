"""`flowmill worker` and `flowmill submit`: run tasks, and submit one."""

from __future__ import annotations

import logging
import os
import sys
from datetime import timedelta
from typing import Annotated, Any

import typer

from .._app import App
from .._loader import load_app
from ..errors import TaskFailed
from ._common import (
    fail,
    one_line_errors,
    run_on,
    seconds,
    setup_logging,
    to_json,
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
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=1,
            max=65535,
            help="Serve this worker's Prometheus metrics on 127.0.0.1:PORT/metrics",
        ),
    ] = None,
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
        if metrics_port is not None:
            from .._metrics import instrument

            instrument(w, port=metrics_port)

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
    with one_line_errors():
        app = load_app(app_path)
        tdef = app.registry.get(task_name)
        if tdef is None:
            names = ", ".join(app.task_names()) or "none"
            fail(f"no task named {task_name!r} in {app_path} (registered: {names})")
        value = tdef.payload.decode((payload if payload is not None else "null").encode())

        async def run(app: App) -> tuple[str, Any]:
            h = await app.submit(
                tdef, value, key=key, delay=seconds("--delay", delay), priority=priority,
                queue=queue,
            )  # fmt: skip
            if not wait:
                return h.id, None
            print(h.id, flush=True)
            return h.id, await h.result(timeout=seconds("--timeout", timeout))

        try:
            task_id, result = run_on(app, run)
        except TaskFailed as exc:
            fail(f"task {exc.task_id} ended {exc.state}: {exc.error_type}: {exc.message}")
    if wait:
        print(to_json(result))
    else:
        print(task_id)
