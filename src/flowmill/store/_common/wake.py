"""Wake-ups between processes sharing one SQLite file, over Unix datagram sockets.

Every process that waits (a worker for work, an app for results) binds one socket in a
directory derived from the database path; a process that commits a change sends one byte
to each socket there. A lost datagram only delays work until the waiter's fallback poll,
so nothing here needs to be reliable.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import tempfile
import time
import weakref
from typing import Any

WORK = b"w"
FINISH = b"f"
OUTPUT = b"o"  # output frames appended

# Directory timestamps are coarse (a clock tick of a few ms): a listing taken this soon
# after the directory's last change may miss a socket bound later in the same tick.
_RACY_NS = 50_000_000


class Pulse:
    """A sticky wake-up flag per waiting asyncio task: a `fire` between two waits is kept.

    Several loops in one process wait on the same pulse (a claim loop, result waiters, the
    lease keeper); each has its own flag, so one consuming a wake-up never hides it from
    another. A task's first wait returns at once, since it cannot know what it missed.
    """

    def __init__(self) -> None:
        self._flags: weakref.WeakKeyDictionary[asyncio.Task[Any], asyncio.Event] = (
            weakref.WeakKeyDictionary()
        )

    def fire(self) -> None:
        for ev in list(self._flags.values()):
            ev.set()

    def arm(self) -> None:
        """Start keeping this task's wake-ups from now on, and forget older ones.

        For a caller about to read the state that the wake-ups are about: every fire before
        this is reflected in that read, so its next `wait` blocks (rather than returning at
        once as a first wait does) and still returns for a fire that comes after the read.
        """
        task = asyncio.current_task()
        assert task is not None
        ev = self._flags.get(task)
        if ev is None:
            self._flags[task] = asyncio.Event()
        else:
            ev.clear()

    async def wait(self, timeout_s: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        ev = self._flags.get(task)
        if ev is None:
            self._flags[task] = asyncio.Event()
            return
        if not ev.is_set():
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation
            # that arrives as the wait completes, and a worker's loop would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await ev.wait()
        ev.clear()


def wake_dir_for(db_path: str) -> str:
    """A short per-database directory: socket paths must stay under 108 bytes."""
    digest = hashlib.sha256(os.path.abspath(db_path).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"flowmill-{os.getuid()}-{digest}")


class WakeBus:
    """Sends and receives wake-ups for one database among local processes."""

    def __init__(self, directory: str | None) -> None:
        self.directory = directory
        self.work = Pulse()
        self.finish = Pulse()
        self.frames = Pulse()
        self._sock: socket.socket | None = None
        self._path: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._peers: list[str] = []
        # The peer list is reused while the directory's mtime stays what it was when listed.
        self._peers_mtime: int | None = None
        self._peers_racy = True
        self._send_sock: socket.socket | None = None  # made on first notify: building a
        # store must not allocate anything that needs closing

    def listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind this process's socket (once) so that other processes can wake it."""
        self._loop = loop
        if self._sock is not None or self.directory is None:
            return
        path = os.path.join(self.directory, f"{os.getpid()}-{os.urandom(4).hex()}.s")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        for _ in range(3):  # the last process to leave may remove the directory meanwhile
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            try:
                sock.bind(path)
                break
            except FileNotFoundError:
                continue
            except OSError:  # e.g. a path over the 108-byte cap: no socket left open
                sock.close()
                return
        else:
            sock.close()
            return  # no wake-ups for this process: waits fall back to polling
        self._sock, self._path = sock, path
        self._peers_mtime = None
        loop.add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        if WORK in data:
            self.work.fire()
        if FINISH in data:
            self.finish.fire()
        if OUTPUT in data:
            self.frames.fire()

    def notify(self, data: bytes) -> None:
        """Wake every other process, then local waiters in this process. Thread-safe.

        The other processes go first: waking this process's loop first would hand it the
        GIL, and the datagrams (often another process's critical path, such as a result
        that app waits for) would wait until the loop let go of it again.
        """
        self._send(data)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._deliver, data)

    def _send(self, data: bytes) -> None:
        if self.directory is None:
            return
        if self._send_sock is None:
            self._send_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._send_sock.setblocking(False)
        for peer in self._peer_paths():
            if peer == self._path:
                continue
            try:
                self._send_sock.sendto(data, peer)
            except (ConnectionRefusedError, FileNotFoundError):
                # The process that bound it is gone: tidy up after it.
                with contextlib.suppress(OSError):
                    os.unlink(peer)
                self._peers_mtime = None
            except OSError:
                pass  # a full buffer means that peer already has a wake-up pending

    def _peer_paths(self) -> list[str]:
        """The sockets in the directory; listed again whenever the directory has changed.

        A time-based cache would hide a waiter that binds just after a listing until the
        cache ran out; one stat per notify is cheap and exact.
        """
        assert self.directory is not None
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except FileNotFoundError:
            self._peers, self._peers_mtime = [], None
            return self._peers
        if mtime != self._peers_mtime or self._peers_racy:
            listed_at = time.time_ns()
            try:
                self._peers = [e.path for e in os.scandir(self.directory) if e.name.endswith(".s")]
            except FileNotFoundError:
                self._peers = []
            self._peers_mtime = mtime
            self._peers_racy = listed_at - mtime < _RACY_NS
        return self._peers

    def close(self) -> None:
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
            if self._path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self._path)
                with contextlib.suppress(OSError):  # fails while other processes listen
                    os.rmdir(os.path.dirname(self._path))
        if self._send_sock is not None:
            self._send_sock.close()
            self._send_sock = None
