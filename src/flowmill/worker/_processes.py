"""`flowmill worker --processes N`: N worker processes under one parent, for CPU-bound
sync handlers that one process's threads cannot run in parallel (the GIL)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger("flowmill.worker")

# Set in each child's environment: the supervising parent's pid.
PARENT_ENV = "FLOWMILL_SUPERVISOR_PID"


def exit_status(returncode: int) -> int:
    """A child's exit status as a shell reports it (killed by signal N: 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def supervise(n: int, command: Sequence[str]) -> int:
    """Start `n` copies of `command`, pass SIGTERM/SIGINT on to each, wait for all, and
    return the highest exit status (0 only when every child stopped cleanly).

    A child that exits is not restarted: the parent's supervisor (systemd, Kubernetes)
    sees the parent's exit once all have stopped and decides.
    """
    env = {**os.environ, PARENT_ENV: str(os.getpid())}
    children = [subprocess.Popen(list(command), env=env) for _ in range(n)]
    log.info("started %d worker processes: %s", n, ", ".join(str(c.pid) for c in children))

    def forward(signum: int, frame: FrameType | None) -> None:
        # Runs on the main thread between bytecodes; no lock, so a second signal arriving
        # while the first is passed on cannot deadlock the handler.
        for child in children:
            child.send_signal(signum)  # skips a child that has exited

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        codes = [exit_status(c.wait()) for c in children]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    worst = max(codes)
    log.info("worker processes stopped with exit codes %s", codes)
    if worst:
        for child, code in zip(children, codes, strict=True):
            if code:
                log.warning("worker process %d exited with %d", child.pid, code)
    return worst


def watch_parent(poll_s: float = 0.5) -> None:
    """In a child started by `supervise`: stop gracefully (SIGTERM to itself) once the
    parent is gone, so a parent killed with SIGKILL leaves no orphaned workers behind.

    Does nothing in a worker that no `supervise` started.
    """
    raw = os.environ.pop(PARENT_ENV, None)
    if raw is None or not raw.isdigit():
        return
    parent = int(raw)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        log.warning("the parent process %d is gone: stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="flowmill-parent-watch", daemon=True).start()
