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
from .._logging import LogFormat, mask_url
from ..errors import StoreError
from ..worker._health import HealthServer
from ..worker._lifecycle import ExitCode, StartHookFailed
from ..worker._processes import supervise, watch_parent
from ..worker._worker import Worker
from ._common import (
    fail,
    one_line_errors,
    run_on,
    seconds,
    setup_logging,
)
from ._root import AppArg, LogLevelOpt, cli

log = logging.getLogger("flowmill.cli")


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
    fmt: LogFormat = "json" if log_format.lower() == "json" else "text"
    if log_format.lower() != fmt:
        fail(f"bad --log-format {log_format!r}: use text or json", ExitCode.USAGE)
    setup_logging(log_level, fmt)
    if processes > 1:
        if health_port is not None:
            fail(
                "--health-port serves one worker process: with --processes, run one worker "
                "per container and scale with replicas instead",
                ExitCode.USAGE,
            )
        child = _child_args(sys.argv[1:])
        raise typer.Exit(supervise(processes, [sys.executable, "-m", "flowmill", *child]))
    watch_parent()
    with one_line_errors():
        app = load_app(app_path)
        w = app.worker(
            concurrency=concurrency,
            queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
            lease_ttl=timedelta(seconds=lease_ttl),
            shutdown_grace=timedelta(seconds=shutdown_grace),
            cancel_grace=timedelta(seconds=cancel_grace),
            repeat_signal_window=timedelta(seconds=repeat_signal_window),
            reap_interval=seconds("--reap-interval", reap_interval),
        )
    if metrics_port is not None:
        from .._metrics import instrument

        instrument(w, port=metrics_port)
    health = (
        HealthServer(w.readiness, health_host, health_port) if health_port is not None else None
    )
    code = run_worker(app, w, health)
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
        os._exit(code)
    if code:
        raise typer.Exit(code)


def run_worker(app: App, w: Worker, health: HealthServer | None) -> ExitCode:
    """Run `w` until it stops; the exit code says why it stopped."""

    async def run(app: App) -> ExitCode:
        if health is not None:
            try:
                await health.start()
            except OSError as exc:
                log.error("cannot serve the health endpoint on %s:%d: %s", health.host,
                          health.port, exc)  # fmt: skip
                return ExitCode.CONFIG
        try:
            try:
                await app.open()
            except StoreError as exc:
                log.error("cannot open the store %s: %s", mask_url(app.url), exc)
                return ExitCode.STORE_UNAVAILABLE
            await w.run(install_signal_handlers=True)
            return w.exit_code
        finally:
            if health is not None:
                await health.close()

    try:
        return run_on(app, run)
    except StartHookFailed as exc:
        log.error("%s", exc, exc_info=exc.__cause__)
        return ExitCode.START_HOOK_FAILED
    except KeyboardInterrupt:  # Ctrl-C before the worker's own handlers were in place
        return ExitCode.INTERRUPTED
    except Exception:
        log.exception("the worker failed")
        return ExitCode.CRASHED


def _child_args(argv: list[str]) -> list[str]:
    """This command line without --processes (so each child runs one worker)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--processes":
            skip = True
            continue
        if arg.startswith("--processes="):
            continue
        out.append(arg)
    return out
