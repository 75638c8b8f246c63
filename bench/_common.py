"""Small helpers shared by the benchmark worker processes: the stdin/stdout protocol
with the bench (`ready`, `go`, `stop`, `done`) and memory figures."""

from __future__ import annotations

import asyncio
import resource
import sys

from flowmill import Worker


async def stdin_reader() -> asyncio.StreamReader:
    """The process's stdin as an asyncio stream (the bench sends `go` / `stop` lines)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def stop_on_stdin(stdin: asyncio.StreamReader, worker: Worker) -> None:
    """Stop `worker` gracefully on a `stop` line or at the end of input."""
    while True:
        line = (await stdin.readline()).strip()
        if not line or line == b"stop":
            worker.stop()
            return


def say(line: str) -> None:
    """One protocol line on stdout, flushed at once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def proc_status_kb(field: str, pid: int | str = "self") -> int | None:
    """A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), or None where there is none."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_kb() -> int:
    """This process's peak resident set size in KiB: VmHWM, else getrusage's ru_maxrss."""
    hwm = proc_status_kb("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


def rss_kb() -> int | None:
    """This process's current resident set size in KiB (Linux only)."""
    return proc_status_kb("VmRSS")
