"""A worker's liveness and readiness endpoint for orchestrators (Kubernetes probes):
`GET /livez` and `GET /readyz`, served by a small stdlib asyncio server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger("flowmill.worker")

_HEAD_LIMIT = 8192


class HealthServer:
    """Answers `/livez` (200 while the event loop runs) and `/readyz` (200 while `ready()`
    says the worker claims, 503 otherwise) on `host:port`."""

    def __init__(self, ready: Callable[[], tuple[bool, str]], host: str, port: int) -> None:
        self._ready = ready
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]  # the real one when 0 was asked
        log.info("health endpoint on http://%s:%d (/livez, /readyz)", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
            status, body = self._answer(head[:_HEAD_LIMIT])
            data = body.encode()
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a probe that hung up or sent no request: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _answer(self, head: bytes) -> tuple[str, str]:
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) < 2 or parts[0] not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", "use GET\n"
        path = parts[1].split(b"?", 1)[0]
        if path == b"/livez":
            return "200 OK", "ok\n"
        if path == b"/readyz":
            ready, why = self._ready()
            return ("200 OK", f"{why}\n") if ready else ("503 Service Unavailable", f"{why}\n")
        return "404 Not Found", "try /livez or /readyz\n"
