"""A worker's life around its loop: start and stop hooks with the resources they share,
and the exit codes that say why `flowmill worker` stopped."""

from __future__ import annotations

import inspect
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from enum import IntEnum
from typing import Any

from ..errors import FlowmillError

log = logging.getLogger("flowmill.worker")

WorkerHook = Callable[..., Any]
"""`@app.on_worker_start` / `@app.on_worker_stop` functions: sync or async, taking no
argument or the worker's `resources` dict."""


class ExitCode(IntEnum):
    """Why `flowmill worker` exited (its exit status)."""

    OK = 0
    """Stopped as asked (SIGTERM/SIGINT, attempts ended or were handed back; or idle)."""
    CONFIG = 1
    """The app could not be loaded (bad MODULE:APP, import error) or is misconfigured."""
    USAGE = 2
    """The command line was not understood (unknown option, bad value)."""
    STORE_UNAVAILABLE = 3
    """The store could not be opened at start (unreachable, refused, bad schema)."""
    START_HOOK_FAILED = 4
    """An `@app.on_worker_start` hook raised; the worker claimed nothing."""
    FORCED = 5
    """A repeated signal (after the repeat window) cut the graceful phase short."""
    CRASHED = 6
    """The worker itself failed unexpectedly (a bug: the traceback is in the log)."""
    INTERRUPTED = 130
    """Ctrl-C (SIGINT) before the worker had started (the shell's usual 128 + 2)."""


class StartHookFailed(FlowmillError):
    """An `on_worker_start` hook raised: the worker stops before claiming anything."""


def _call(hook: WorkerHook, resources: dict[str, Any]) -> Any:
    try:
        params = inspect.signature(hook).parameters
    except (TypeError, ValueError):  # a builtin or C callable: call it bare
        params = {}  # type: ignore[assignment]
    return hook(resources) if params else hook()


def hook_name(hook: WorkerHook) -> str:
    return getattr(hook, "__qualname__", None) or repr(hook)


async def run_start_hooks(hooks: list[WorkerHook], resources: dict[str, Any]) -> int:
    """Run `hooks` in order; a returned mapping is merged into `resources`.

    Returns how many ran; raises `StartHookFailed` (from the hook's error) at the first
    that fails, so the worker claims nothing without the resources its handlers expect.
    """
    for n, hook in enumerate(hooks):
        try:
            value = _call(hook, resources)
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            raise StartHookFailed(
                f"on_worker_start hook {hook_name(hook)} failed: {type(exc).__name__}: {exc}"
            ) from exc
        if isinstance(value, Mapping):
            resources.update(value)
        elif value is not None:
            log.warning(
                "on_worker_start hook %s returned a %s, not a mapping: ignored",
                hook_name(hook),
                type(value).__name__,
            )
        log.debug("on_worker_start hook %s done (%d of %d)", hook_name(hook), n + 1, len(hooks))
    return len(hooks)


async def run_stop_hooks(hooks: list[WorkerHook], resources: dict[str, Any]) -> None:
    """Run every stop hook, last registered first; one that fails is logged, not fatal."""
    for hook in reversed(hooks):
        try:
            value = _call(hook, resources)
            if inspect.isawaitable(value):
                await _awaited(value)
        except Exception:
            log.exception("on_worker_stop hook %s failed", hook_name(hook))


async def _awaited(value: Awaitable[Any]) -> Any:
    return await value


class SignalPolicy:
    """What SIGTERM and SIGINT do to a running worker.

    The first starts the graceful stop. A repeat within `window_s` of the first is ignored:
    GNU `timeout`, some supervisors and a double Ctrl-C send two at once, and that must
    not skip the grace. A later repeat cuts the grace short (`force`), once.
    """

    def __init__(
        self, window_s: float, graceful: Callable[[str], None], force: Callable[[str], None]
    ) -> None:
        self.window_s = window_s
        self._graceful = graceful
        self._force = force
        self._first_at: float | None = None
        self.forced = False

    def __call__(self, sig: signal.Signals) -> None:
        now = time.monotonic()
        if self._first_at is None:
            self._first_at = now
            self._graceful(sig.name)
        elif now - self._first_at < self.window_s:
            log.info(
                "%s again within %gs of the first: the graceful stop goes on",
                sig.name,
                self.window_s,
            )
        elif not self.forced:
            self.forced = True
            self._force(sig.name)
