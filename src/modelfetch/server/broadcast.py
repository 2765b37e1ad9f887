"""WebSocket fan-out: one bounded outbox per client, so a slow client never slows a download.

`Broadcaster.publish()` is called from the engine's listener on the event loop thread: it
serialises the message once and puts it in every client's outbox, never awaiting. Each
client has its own sender task that writes its outbox to the socket at the client's pace.

When a client falls behind, its outbox absorbs the difference:

- a message published with a `coalesce` key (a `downloading` progress event, keyed by
  model and file) replaces the one with the same key still waiting, and moves to the end,
  so the client gets the latest state of each transfer and order between a file's
  messages is kept;
- past `limit` waiting messages, the oldest coalescable message is dropped, or the
  oldest of any kind when there is none; drops are counted (`dropped`);
- a send that does not complete within `send_timeout` seconds closes that client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

log = logging.getLogger(__name__)

Message = dict[str, Any]
OnDrop = Callable[[int], None]


def dumps(message: Message) -> str:
    """The JSON text of a message, as sent on the socket."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


class Outbox:
    """Messages waiting for one client: bounded, latest-wins for coalescable ones."""

    def __init__(self, limit: int, on_drop: OnDrop | None = None) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self.dropped = 0
        self._on_drop = on_drop
        self._items: OrderedDict[tuple[str, Hashable], str] = OrderedDict()
        self._seq = itertools.count()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, text: str, coalesce: Hashable | None = None, *, first: bool = False) -> None:
        """Queue `text`; never blocks. `first` puts it ahead of everything (the snapshot)."""
        if coalesce is None:
            key: tuple[str, Hashable] = ("seq", next(self._seq))
        else:
            key = ("latest", coalesce)
            self._items.pop(key, None)
        self._items[key] = text
        if first:
            self._items.move_to_end(key, last=False)
        while len(self._items) > self.limit:
            self._drop_one()
        self._ready.set()

    def _drop_one(self) -> None:
        victim = next((k for k in self._items if k[0] == "latest"), None)
        if victim is None:
            victim = next(iter(self._items))
        del self._items[victim]
        self.dropped += 1
        if self._on_drop is not None:
            self._on_drop(1)

    async def get(self) -> str:
        """The oldest waiting message (waits for one)."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popitem(last=False)[1]


class _Client:
    def __init__(self, ws: web.WebSocketResponse, outbox: Outbox, abort: Callable[[], None]):
        self.ws = ws
        self.outbox = outbox
        self.abort = abort


class Broadcaster:
    """Sends every published message to every connected WebSocket client."""

    def __init__(
        self,
        *,
        limit: int = 512,
        send_timeout: float = 30.0,
        on_drop: OnDrop | None = None,
    ) -> None:
        self.limit = limit
        self.send_timeout = send_timeout
        self._on_drop = on_drop
        self._clients: set[_Client] = set()
        self._closing = False

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def outboxes(self) -> list[Outbox]:
        """Each connected client's outbox (for tests and diagnostics)."""
        return [c.outbox for c in self._clients]

    def publish(self, message: Message, *, coalesce: Hashable | None = None) -> None:
        """Queue `message` for every client; returns at once and never raises."""
        if not self._clients:
            return
        try:
            text = dumps(message)
            for client in list(self._clients):
                client.outbox.put(text, coalesce)
        except Exception:  # a broken message must never reach the engine
            log.exception("could not broadcast a message")

    async def serve(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        snapshot: Callable[[], Awaitable[Message]],
    ) -> None:
        """Run one prepared WebSocket until it closes: snapshot first, then the broadcast.

        The client is subscribed before the snapshot is built, so nothing published in
        between is lost; the snapshot is sent ahead of it.
        """
        transport = request.transport

        def abort() -> None:
            if transport is not None:
                transport.abort()

        client = _Client(ws, Outbox(self.limit, self._on_drop), abort)
        if self._closing:
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
            return
        self._clients.add(client)
        sender: asyncio.Task[None] | None = None
        try:
            client.outbox.put(dumps(await snapshot()), first=True)
            sender = asyncio.create_task(self._send_loop(client))
            async for msg in ws:  # clients have nothing to say; this sees pings and close
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self._clients.discard(client)
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender

    async def _send_loop(self, client: _Client) -> None:
        while True:
            text = await client.outbox.get()
            try:
                await asyncio.wait_for(client.ws.send_str(text), self.send_timeout)
            except TimeoutError:
                log.info(
                    "WebSocket client took more than %g s to accept a message: disconnected",
                    self.send_timeout,
                )
                client.abort()
                return
            except (ConnectionError, RuntimeError):  # closing or closed underneath us
                return

    async def close_all(self, timeout: float = 1.0) -> None:
        """Close every client (server shutdown); a client that does not answer is cut off."""
        self._closing = True

        async def close(client: _Client) -> None:
            try:
                await asyncio.wait_for(
                    client.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down"),
                    timeout,
                )
            except (TimeoutError, ConnectionError, RuntimeError):
                client.abort()

        await asyncio.gather(*(close(c) for c in list(self._clients)))
