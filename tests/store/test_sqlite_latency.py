"""The SQLite store's round-trip path: no wait on it but the commits' own.

A result read arms the finish wake-ups (no second read), runs on the caller's loop when the
reader is idle (no thread hops), a write waits for another process's lock in short steps
(not SQLite's 1, 2, 5 ms ladder), and a wake-up reaches other processes before this one's
loop is woken.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from flowmill.store._common import wake as _wake


async def test_other_processes_get_the_wake_up_before_this_loop_is_woken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = str(tmp_path / "wake")
    bus = _wake.WakeBus(directory)
    loop = asyncio.get_running_loop()
    bus.listen(loop)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as peer:
        peer.bind(str(tmp_path / "wake" / "peer.s"))
        peer.setblocking(False)
        seen: list[bool] = []
        real = loop.call_soon_threadsafe

        def recording(callback: Any, *args: Any, **kw: Any) -> Any:
            try:
                seen.append(peer.recv(8, socket.MSG_PEEK) == _wake.FINISH)
            except BlockingIOError:
                seen.append(False)
            return real(callback, *args, **kw)

        monkeypatch.setattr(loop, "call_soon_threadsafe", recording)
        try:
            bus.notify(_wake.FINISH)
        finally:
            monkeypatch.undo()
            bus.close()
        assert seen == [True]
        assert peer.recv(8) == _wake.FINISH
