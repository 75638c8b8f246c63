"""`?durability=fsync` and `?durability=aof` on a private server: what each refuses, and
that fsync waits for the very writes it acknowledges (WAITAOF on their connection)."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest
from redis.asyncio.connection import AbstractConnection

from flowmill._states import State
from flowmill.errors import ConfigurationError, StoreError
from flowmill.store.contract.signals import SignalDeliver, WaitpointCreate
from flowmill.store.redis import RedisStore
from flowmill.testing.conformance._util import T0, claim_one, finish, insert, task
from tests.crash._private_redis import PrivateRedis

from .test_store_redis import valkey_server

pytestmark = pytest.mark.redis

ACKNOWLEDGED = (b"fm_insert", b"fm_finish", b"fm_signal_deliver")


def _flat(command: bytes | str | Iterable[bytes]) -> bytes:
    if isinstance(command, str):
        return command.encode()
    if isinstance(command, bytes | bytearray | memoryview):
        return bytes(command)
    return b"".join(bytes(part) for part in command)


async def test_fsync_waits_on_the_connection_that_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # WAITAOF waits for the writes of the connection it is sent on: sent on another
    # connection of the pool, it would return at once and acknowledge nothing
    sent: list[bytes] = []
    original = AbstractConnection.send_packed_command

    async def spy(self: AbstractConnection, command: bytes, check_health: bool = True) -> None:
        sent.append(_flat(command))
        await original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", spy)
    with valkey_server(tmp_path, "--appendonly", "yes", "--appendfsync", "everysec") as url:
        store = RedisStore(url + "?durability=fsync", prefix=f"fmfs:{uuid.uuid4().hex[:8]}:")
        await store.open()
        try:
            sent.clear()
            await insert(store, task())
            row = await claim_one(store)
            await store.waitpoint_create(
                WaitpointCreate(row.id, row.lease_epoch, "wp-fs", "k", 60_000, T0)
            )
            await store.signal_deliver(SignalDeliver("wp-fs", "go", b"{}", None, T0))
            await finish(store, row.id, row.lease_epoch, State.COMPLETED, result=b"1")
        finally:
            await store.close()
    writes = [s for s in sent if any(fn in s for fn in ACKNOWLEDGED)]
    assert len(writes) == 3
    for packet in writes:
        assert re.search(rb"(?i)FCALL.*WAITAOF", packet, re.DOTALL), packet[:200]
    others = [s for s in sent if s not in writes]
    assert not [s for s in others if re.search(rb"(?i)WAITAOF", s)]  # claims do not wait


async def test_durability_fsync_needs_aof(tmp_path: Path) -> None:
    with valkey_server(tmp_path, "--appendonly", "no") as url:
        store = RedisStore(url + "?durability=fsync")
        with pytest.raises(StoreError, match="durability=fsync needs AOF") as info:
            await store.open()
        assert "\n" not in str(info.value)


def test_durability_fsync_is_refused_on_a_cluster_url() -> None:
    with pytest.raises(ConfigurationError, match="not available with a cluster URL"):
        RedisStore("redis+cluster://127.0.0.1:7000?durability=fsync")


def _redis_before_waitaof() -> str:
    """A redis-server older than 7.2 (no WAITAOF) on PATH; skips the test without one."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"v=(\d+)\.(\d+)", version)
    if found is None or (int(found[1]), int(found[2])) >= (7, 2):
        pytest.skip(f"this redis-server has WAITAOF: {version.strip()}")
    return exe


async def test_durability_fsync_needs_waitaof(tmp_path: Path) -> None:
    # Redis before 7.2 has no WAITAOF: fsync is refused at start, with the reason
    server = PrivateRedis(tmp_path, ("--appendonly", "yes"), exe=_redis_before_waitaof())
    await asyncio.to_thread(server.start)
    try:
        store = RedisStore(server.url + "?durability=fsync")
        with pytest.raises(StoreError, match="needs WAITAOF"):
            await store.open()
        plain = RedisStore(server.url + "?durability=aof", prefix="fmfs:")
        await plain.open()  # aof needs no WAITAOF
        await plain.close()
    finally:
        server.stop()
