"""One HTTP/1.1 connection: bytes received straight into buffers, responses parsed as they come.

The protocol side is deliberately dumb: `asyncio.BufferedProtocol` receives into buffers of
`BUFFER_SIZE` bytes (no copy per read, no bytes object per chunk) and queues what arrived. The
reader side (`Connection.read`, `read_head`, the body iterators of `Response`) parses on demand,
so one place knows HTTP framing: status line and headers, `Content-Length`, chunked transfer
coding, and bodies that end when the connection closes.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

from ..errors import ConnectFailed, HTTPStatus, Truncated

BUFFER_SIZE: Final = 256 * 1024  # one recv_into target; what a full chunk of body holds
MIN_ROOM: Final = 16 * 1024  # less free room than this: start a new buffer (fewer syscalls)
HIGH_WATER: Final = 2 * 1024 * 1024  # queued, unread bytes before the socket is paused
LOW_WATER: Final = 512 * 1024
MAX_HEAD: Final = 64 * 1024  # status line + headers


class Headers:
    """Response headers: case-insensitive lookup, every value of a repeated name kept."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items
        self._first: dict[str, str] = {}
        for name, value in items:
            self._first.setdefault(name.lower(), value)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._first.get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return self._first[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first

    def getall(self, name: str) -> list[str]:
        key = name.lower()
        return [v for n, v in self._items if n.lower() == key]

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)


@dataclass(frozen=True)
class Head:
    """A parsed status line and header block."""

    version: str
    status: int
    reason: str
    headers: Headers


class Connection(asyncio.BufferedProtocol):
    """The socket side of one HTTP/1.1 connection (plain or TLS)."""

    def __init__(self, where: str) -> None:
        self.where = where  # host:port, for messages
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray(BUFFER_SIZE)
        self._fill = 0
        self._queue: deque[memoryview] = deque()
        self._queued = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self.received_any = False  # since the last request was sent: a reused connection
        # that dies before answering may be retried on a fresh one.
        # While a body is read: `read` raises TimeoutError after this long without bytes.
        # One timer re-armed lazily, not one per piece (at GB/s that costs real CPU).
        self.stall_timeout: float | None = None
        self._last_data = 0.0
        self._watchdog: asyncio.TimerHandle | None = None

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        if BUFFER_SIZE - self._fill < MIN_ROOM:
            self._push()
        return memoryview(self._buffer)[self._fill :]

    def buffer_updated(self, nbytes: int) -> None:
        self._fill += nbytes
        self.received_any = True
        self._last_data = _now()
        if self._fill == BUFFER_SIZE or self._waiter is not None:
            self._push()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._push()
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if exc is not None and self._error is None:
            self._error = exc
        self._push()
        self._wake()

    # -- the reader side ---------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """True while the connection can carry another request (not closed, nothing unread)."""
        return (
            self.transport is not None
            and not self.transport.is_closing()
            and not self._eof
            and not self._queue
            and not self._fill
        )

    def send(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectFailed(f"connection to {self.where} is closed")
        self.received_any = False
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _push(self) -> None:
        if not self._fill:
            return
        self._queue.append(memoryview(self._buffer)[: self._fill])
        self._queued += self._fill
        self._buffer = bytearray(BUFFER_SIZE)
        self._fill = 0
        if self._queued > HIGH_WATER and not self._paused and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> memoryview:
        """The next received bytes (empty at end of stream); raises ConnectFailed if broken."""
        while not self._queue:
            if self._fill:
                self._push()
                continue
            if self._eof:
                if self._error is not None:
                    raise ConnectFailed(f"connection to {self.where} broken: {_why(self._error)}")
                return memoryview(b"")
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            if self.stall_timeout is not None and self._watchdog is None:
                self._watchdog = loop.call_at(self._last_data + self.stall_timeout, self._watch)
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._queue.popleft()
        self._queued -= len(data)
        if self._paused and self._queued < LOW_WATER and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def watch_stalls(self, timeout: float | None) -> None:
        """From now on (None: no more), a read waiting `timeout` s for bytes fails."""
        self.stall_timeout = timeout
        self._last_data = _now()
        if timeout is None and self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _watch(self) -> None:
        """The stall watchdog: fail the waiting read if no byte came for `stall_timeout`."""
        self._watchdog = None
        timeout = self.stall_timeout
        waiter = self._waiter
        if timeout is None or waiter is None or waiter.done():
            return
        loop = asyncio.get_running_loop()
        due = self._last_data + timeout
        if loop.time() >= due:
            waiter.set_exception(TimeoutError())
        else:
            self._watchdog = loop.call_at(due, self._watch)

    def unread(self, data: memoryview) -> None:
        """Put back bytes read too far (they are returned by the next `read`)."""
        if data:
            self._queue.appendleft(data)
            self._queued += len(data)

    async def read_head(self) -> Head:
        """Read one response head (skipping 1xx interim answers)."""
        while True:
            head = await self._read_head_once()
            if not 100 <= head.status < 200 or head.status == 101:
                return head

    async def _read_head_once(self) -> Head:
        pending = bytearray()
        while True:
            data = await self.read()
            if not data:
                if pending or self.received_any:
                    raise ConnectFailed(f"{self.where} closed the connection mid-answer")
                raise ConnectFailed(f"{self.where} closed the connection without answering")
            start = max(0, len(pending) - 3)
            pending += data
            end = pending.find(b"\r\n\r\n", start)
            if end >= 0:
                rest = len(pending) - (end + 4)
                if rest:
                    self.unread(data[len(data) - rest :])
                return _parse_head(bytes(pending[:end]), self.where)
            if len(pending) > MAX_HEAD:
                raise HTTPStatus(502, f"{self.where} sent a response head over {MAX_HEAD} bytes")

    async def read_line(self, limit: int = 4096) -> bytes:
        """One CRLF-terminated line (without the CRLF), for chunked framing."""
        pending = bytearray()
        while True:
            data = await self.read()
            if not data:
                raise Truncated(f"{self.where} ended a chunked body mid-line")
            end = bytes(data[: limit + 2]).find(b"\n")
            if end >= 0:
                pending += data[: end + 1]
                self.unread(data[end + 1 :])
                return bytes(pending).rstrip(b"\r\n")
            pending += data
            if len(pending) > limit:
                raise HTTPStatus(502, f"{self.where} sent a chunked-body line over {limit} bytes")

    async def body_fixed(self, length: int) -> AsyncIterator[memoryview]:
        """Exactly `length` body bytes; fewer means the connection was cut (Truncated)."""
        left = length
        while left > 0:
            data = await self.read()
            if not data:
                raise Truncated(
                    f"{self.where} closed the connection {length - left:,} bytes into a "
                    f"{length:,}-byte body"
                )
            if len(data) > left:
                self.unread(data[left:])
                data = data[:left]
            left -= len(data)
            yield data

    async def body_chunked(self) -> AsyncIterator[memoryview]:
        """A chunked body, decoded (trailers are read and dropped)."""
        while True:
            line = await self.read_line()
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise HTTPStatus(502, f"{self.where} sent a bad chunk size {size_text!r}") from None
            if size == 0:
                while await self.read_line():  # trailer fields, then the empty line
                    pass
                return
            async for piece in self.body_fixed(size):
                yield piece
            if await self.read_line():
                raise HTTPStatus(502, f"{self.where} sent chunk data longer than announced")

    async def body_until_close(self) -> AsyncIterator[memoryview]:
        """A body delimited by the end of the connection (HTTP/1.0 style)."""
        while True:
            data = await self.read()
            if not data:
                return
            yield data


def _parse_head(raw: bytes, where: str) -> Head:
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise HTTPStatus(502, f"{where} sent an undecodable response head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise HTTPStatus(502, f"{where} did not answer with HTTP (status line {lines[0][:80]!r})")
    items: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t" and items:  # obsolete line folding
            name, value = items[-1]
            items[-1] = (name, f"{value} {line.strip()}")
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HTTPStatus(502, f"{where} sent a malformed header line {line[:80]!r}")
        items.append((name, value.strip()))
    return Head(parts[0], int(parts[1]), parts[2] if len(parts) > 2 else "", Headers(items))


def _now() -> float:
    return time.monotonic()  # what the event loop's time() is on every platform we run on


def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
