"""A small TCP proxy that loses acknowledgements: it forwards a request to the server,
then drops the connection instead of forwarding the server's answer (at random, seeded).

The client saw its statement fail, yet the server ran it: exactly the case a dedup key
exists for. No toxiproxy here; asyncio streams are enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import random


class AckDroppingProxy:
    def __init__(self, upstream: tuple[str, int], rng: random.Random, p_drop: float) -> None:
        self.upstream = upstream
        self.rng = rng
        self.p_drop = p_drop
        self.dropped = 0
        self.armed = False  # drop nothing until the test says so (schema set-up passes)
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> AckDroppingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        answers = 0

        async def requests() -> None:
            while data := await client_r.read(65536):
                server_w.write(data)
                await server_w.drain()

        async def responses() -> None:
            nonlocal answers
            while data := await server_r.read(65536):
                answers += 1
                # The first answers are the start-up and authentication exchange.
                if self.armed and answers > 3 and self.rng.random() < self.p_drop:
                    self.dropped += 1
                    return  # the server answered; the client never hears it
                client_w.write(data)
                await client_w.drain()

        pumps = [asyncio.create_task(requests()), asyncio.create_task(responses())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for writer in (client_w, server_w):
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
