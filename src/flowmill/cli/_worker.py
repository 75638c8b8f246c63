"""`flowmill worker`'s work, with neither typer nor rich: the command line parser here
reads the plain command lines a supervisor runs (`flowmill worker jobs:app --concurrency
64 ...`), so a worker process starts without loading the CLI framework (issue 17: worker
memory and start-up). Anything it does not fully understand (`--help`, an unknown option,
a value out of range) is left to the typer command in `_run`, which parses, validates and
reports it as it always has; both then run `run_worker_command`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from .._app import App
from .._loader import load_app
from .._logging import LogFormat, mask_url
from .._logging import setup as setup_log_output
from ..errors import FlowmillError, StoreError
from ..worker._health import HealthServer
from ..worker._lifecycle import ExitCode, StartHookFailed
from ..worker._processes import supervise, watch_parent
from ..worker._worker import Worker
from ._base import print_error, run_on

log = logging.getLogger("flowmill.cli")


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    """`flowmill worker`'s options; the defaults are the command line's."""

    app_path: str
    concurrency: int = 64
    queues: str | None = None
    lease_ttl: float = 30.0
    shutdown_grace: float = 20.0
    cancel_grace: float = 3.0
    repeat_signal_window: float = 2.0
    reap_interval: float | None = None
    health_port: int | None = None
    health_host: str = "127.0.0.1"
    processes: int = 1
    log_level: str = "info"
    log_format: str = "text"
    metrics_port: int | None = None


class _Failed(Exception):
    """A one-line error for the user, and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# -- the plain parser -------------------------------------------------------------------

_INT = re.compile(r"[0-9]+")
_FLOAT = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")


def _int(low: int, high: int | None = None) -> Callable[[str], int | None]:
    def convert(text: str) -> int | None:
        if not _INT.fullmatch(text):
            return None
        value = int(text)
        return value if value >= low and (high is None or value <= high) else None

    return convert


def _float(low: float) -> Callable[[str], float | None]:
    def convert(text: str) -> float | None:
        if not _FLOAT.fullmatch(text):
            return None
        value = float(text)
        return value if value >= low else None

    return convert


def _text(text: str) -> str | None:
    return None if text.startswith("-") else text


# option -> (field, converter); the bounds are those of the typer options in `_run`.
_OPTIONS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "--concurrency": ("concurrency", _int(1)),
    "--queues": ("queues", _text),
    "--lease-ttl": ("lease_ttl", _float(0.1)),
    "--shutdown-grace": ("shutdown_grace", _float(0)),
    "--cancel-grace": ("cancel_grace", _float(0)),
    "--repeat-signal-window": ("repeat_signal_window", _float(0)),
    "--reap-interval": ("reap_interval", _float(0.001)),
    "--health-port": ("health_port", _int(0, 65535)),
    "--health-host": ("health_host", _text),
    "--processes": ("processes", _int(1)),
    "--log-level": ("log_level", _text),
    "--log-format": ("log_format", _text),
    "--metrics-port": ("metrics_port", _int(1, 65535)),
}


def parse_worker_args(args: list[str]) -> WorkerOptions | None:
    """The options of `flowmill worker ARGS`, or None when the typer command must parse
    them: help, an unknown or repeated option, a missing or out-of-range value..."""
    values: dict[str, Any] = {}
    app_path: str | None = None
    rest = iter(args)
    for arg in rest:
        if not arg.startswith("-"):
            if app_path is not None:
                return None
            app_path = arg
            continue
        name, eq, text = arg.partition("=")
        if not eq:
            text = next(rest, "")
        option = _OPTIONS.get(name)
        if option is None or not text:
            return None
        field, convert = option
        value = convert(text)
        if value is None or field in values:
            return None
        values[field] = value
    if app_path is None:
        return None
    return WorkerOptions(app_path, **values)


def main(args: list[str]) -> int | None:
    """Run `flowmill worker ARGS` when the plain parser reads them (the exit code), else None."""
    options = parse_worker_args(args)
    if options is None:
        return None
    try:
        return run_worker_command(options)
    except KeyboardInterrupt:  # as click reports it
        print("\nAborted!", file=sys.stderr)
        return 1


# -- the command ------------------------------------------------------------------------


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except FlowmillError as exc:
        raise _Failed(str(exc) or type(exc).__name__, 1) from exc
    except KeyboardInterrupt:
        raise _Failed("", 130) from None


def run_worker_command(o: WorkerOptions) -> int:
    """Run the worker `o` describes; the process's exit code (errors are reported)."""
    try:
        return _run(o)
    except _Failed as exc:
        if str(exc):
            print_error(str(exc))
        return exc.code


def _run(o: WorkerOptions) -> int:
    fmt: LogFormat = "json" if o.log_format.lower() == "json" else "text"
    if o.log_format.lower() != fmt:
        raise _Failed(f"bad --log-format {o.log_format!r}: use text or json", ExitCode.USAGE)
    level = logging.getLevelName(o.log_level.upper())
    if not isinstance(level, int):
        raise _Failed(f"bad --log-level {o.log_level!r}: use debug, info, warning or error", 2)
    setup_log_output(level, fmt)
    if o.processes > 1:
        if o.health_port is not None:
            raise _Failed(
                "--health-port serves one worker process: with --processes, run one worker "
                "per container and scale with replicas instead",
                ExitCode.USAGE,
            )
        child = _child_args(sys.argv[1:])
        return supervise(o.processes, [sys.executable, "-m", "flowmill", *child])
    watch_parent()
    with _one_line_errors():
        app = load_app(o.app_path)
        w = app.worker(
            concurrency=o.concurrency,
            queues=[q.strip() for q in o.queues.split(",") if q.strip()] if o.queues else None,
            lease_ttl=timedelta(seconds=o.lease_ttl),
            shutdown_grace=timedelta(seconds=o.shutdown_grace),
            cancel_grace=timedelta(seconds=o.cancel_grace),
            repeat_signal_window=timedelta(seconds=o.repeat_signal_window),
            reap_interval=None if o.reap_interval is None else timedelta(seconds=o.reap_interval),
        )
    if o.metrics_port is not None:
        from .._metrics import instrument

        instrument(w, port=o.metrics_port)
    health = (
        HealthServer(w.readiness, o.health_host, o.health_port)
        if o.health_port is not None
        else None
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
    return int(code)


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
