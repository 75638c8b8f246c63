"""A throwaway PostgreSQL server of the test's own, so a test may restart it at will."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unavailable() -> str | None:
    """Why a private server cannot be started here, or None."""
    if _bin("initdb") is None or _bin("pg_ctl") is None:
        return "initdb/pg_ctl not installed"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser"
    return None


@dataclass
class PrivatePG:
    directory: str
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        ctl = _bin("pg_ctl")
        assert ctl is not None
        _run([ctl, "-D", self.directory, *args])

    def start(self) -> None:
        self._ctl(
            "-w",
            "-t",
            "60",
            "-l",
            f"{self.directory}/log",
            "-o",
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c fsync=on -c synchronous_commit=on",
            "start",
        )

    def restart_immediate(self) -> None:
        """Kill the server without a checkpoint (as a crash would), then start it again."""
        self._ctl("-w", "-t", "60", "-m", "immediate", "stop")
        self.start()

    def stop(self) -> None:
        self._ctl("-w", "-t", "60", "-m", "fast", "stop")


def _run(cmd: list[str]) -> None:
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def _reachable_by_others(folder: str) -> bool:
    """Whether another user (the server's `postgres`) can pass through every folder up to
    `folder`: a private TMPDIR (`mktemp -d` makes it 0700) is not."""
    path = os.path.abspath(folder)
    while True:
        if not os.stat(path).st_mode & 0o001:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


@contextmanager
def private_pg() -> Iterator[PrivatePG]:
    base = tempfile.gettempdir()
    if os.geteuid() == 0 and not _reachable_by_others(base):
        base = "/tmp"  # the data folder must be reachable by the postgres user
    directory = tempfile.mkdtemp(prefix="fm-pg-", dir=base)
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    initdb = _bin("initdb")
    assert initdb is not None
    _run([initdb, "-D", directory, "-A", "trust", "-U", "postgres", "--no-sync"])
    server = PrivatePG(directory, _free_port())
    server.start()
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(directory, ignore_errors=True)
