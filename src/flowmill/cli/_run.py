"""`flowmill worker`'s typer command: its options and help. The work is done in `_worker`,
whose plain parser runs the command lines it reads without this module (see there)."""

from __future__ import annotations

from typing import Annotated

import typer

from ._root import AppArg, LogLevelOpt, cli
from ._worker import WorkerOptions, run_worker_command
from ._worker import _child_args as _child_args
from ._worker import run_worker as run_worker

_EXIT_CODES = (
    "Exit codes: 0 stopped as asked (SIGTERM/SIGINT: attempts ended or were handed back; "
    "or idle); 1 the app could not be loaded or is misconfigured (or the health port is "
    "taken); 2 bad command line; "
    "3 the store could not be opened at start; 4 an on_worker_start hook failed; "
    "5 a repeated signal (after --repeat-signal-window) cut the grace short; "
    "6 the worker failed unexpectedly (traceback in the log); 130 Ctrl-C before it started."
)


@cli.command(epilog=_EXIT_CODES)
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
        typer.Option(
            "--shutdown-grace",
            min=0,
            help="On SIGTERM, seconds running attempts get to end on their own",
        ),
    ] = 20.0,
    cancel_grace: Annotated[
        float,
        typer.Option(
            "--cancel-grace",
            min=0,
            help="Seconds an attempt asked to stop (grace over, timeout, cancel) gets before "
            "it is abandoned; an async one gets them twice (then cancelled)",
        ),
    ] = 3.0,
    repeat_signal_window: Annotated[
        float,
        typer.Option(
            "--repeat-signal-window",
            min=0,
            help="A second SIGTERM/SIGINT within this many seconds of the first is ignored; "
            "a later one cuts the grace short",
        ),
    ] = 2.0,
    reap_interval: Annotated[
        float | None,
        typer.Option(
            "--reap-interval",
            min=0.001,
            help="Seconds between reaper passes, which reclaim expired leases "
            "[default: a third of --lease-ttl, from 1 to 10]",
            show_default=False,
        ),
    ] = None,
    health_port: Annotated[
        int | None,
        typer.Option(
            "--health-port",
            min=0,
            max=65535,
            help="Serve GET /livez and /readyz on this port (0: any free port)",
            show_default=False,
        ),
    ] = None,
    health_host: Annotated[
        str, typer.Option("--health-host", help="Address the health endpoint binds")
    ] = "127.0.0.1",
    processes: Annotated[
        int,
        typer.Option(
            "--processes",
            min=1,
            help="Run this many worker processes (for CPU-bound sync handlers); the parent "
            "forwards signals and exits with the highest child exit code",
        ),
    ] = 1,
    log_level: LogLevelOpt = "info",
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format", help="text, or json: one JSON object per line", case_sensitive=False
        ),
    ] = "text",
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            metavar="PORT",
            min=1,
            max=65535,
            help="Serve this worker's Prometheus metrics on 127.0.0.1:PORT/metrics",
        ),
    ] = None,
) -> None:
    """Run a worker for MODULE:APP until SIGTERM or Ctrl-C.

    On the first signal it claims nothing more and gives running attempts --shutdown-grace
    to end, then asks them to stop and hands them back. Budget: --shutdown-grace plus twice
    --cancel-grace plus a moment to hand back must fit your supervisor's kill timeout
    (defaults: 20 + 2 x 3 s, within Kubernetes' 30 s).
    """
    code = run_worker_command(
        WorkerOptions(
            app_path,
            concurrency=concurrency,
            queues=queues,
            lease_ttl=lease_ttl,
            shutdown_grace=shutdown_grace,
            cancel_grace=cancel_grace,
            repeat_signal_window=repeat_signal_window,
            reap_interval=reap_interval,
            health_port=health_port,
            health_host=health_host,
            processes=processes,
            log_level=log_level,
            log_format=log_format,
            metrics_port=metrics_port,
        )
    )
    if code:
        raise typer.Exit(code)
