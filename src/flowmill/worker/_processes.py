"""`flowmill worker --processes N`: N worker processes under one parent, for CPU-bound
sync handlers that one process's threads cannot run in parallel (the GIL)."""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger("flowmill.worker")


def exit_status(returncode: int) -> int:
    """A child's exit status as a shell reports it (killed by signal N: 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def supervise(n: int, command: Sequence[str]) -> int:
    """Start `n` copies of `command`, pass SIGTERM/SIGINT on to each, wait for all, and
    return the highest exit status (0 only when every child stopped cleanly).

    A child that exits is not restarted: the parent's supervisor (systemd, Kubernetes)
    sees the parent's exit once all have stopped and decides.
    """
    children = [subprocess.Popen(list(command)) for _ in range(n)]
    log.info("started %d worker processes: %s", n, ", ".join(str(c.pid) for c in children))
    lock = threading.Lock()

    def forward(signum: int, frame: FrameType | None) -> None:
        with lock:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signum)

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
