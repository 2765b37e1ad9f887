"""How a loopback origin accepts connections: through aiohttp, or into a black hole."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from aiohttp import web


class Site(web.BaseSite):
    """aiohttp's SockSite, with each new connection's protocol chosen by `factory`."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        factory: Callable[[], asyncio.BaseProtocol],
    ) -> None:
        super().__init__(runner)
        self._sock = sock
        self._factory = factory

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, sock=self._sock)


class BlackHole(asyncio.Protocol):
    """A connection a black_hole fault took: its bytes are never read, nothing is answered."""

    def __init__(self, held: set[asyncio.Transport]) -> None:
        self._held = held
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # the request stays in the kernel's buffer, unread
        self._transport = transport
        self._held.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._held.discard(self._transport)


__all__ = ["BlackHole", "Site"]
