"""Sending one body of a loopback origin: counted, paced by its caps, with one body fault."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from .counters import BodyRecord
from .faults import Fault
from .pacing import Pace

if TYPE_CHECKING:
    from ._server import OriginServer

SENDFILE_CHUNK = 16 << 20  # bytes per sendfile call (so byte counters move during big sends)
CUT_KINDS = frozenset({"stall", "reset", "truncated"})


class BodyWriter:
    """Writes one GET body, through aiohttp or (`resp` None) straight to the socket.

    Bytes are counted into `record` just before they go, paced by `pace` (the caps) when
    given, and changed by `fault` at body offsets: bytes flipped from `flip_at` (default
    `fault.at`), the body cut (stall, reset, truncated) after `fault.after_bytes`, extra
    bytes after the end (oversize). Other faults leave the bytes alone.
    """

    def __init__(
        self,
        server: OriginServer,
        request: web.Request,
        resp: web.StreamResponse | None,
        record: BodyRecord,
        fault: Fault | None,
        pace: Pace | None,
        *,
        flip_at: int | None = None,
    ) -> None:
        self.server = server
        self.request = request
        self.resp = resp
        self.record = record
        self.fault = fault
        self.pace = pace
        self.sent = 0
        self.closed = False
        kind = fault.kind if fault is not None else None
        self.cut_at = fault.after_bytes if fault is not None and kind in CUT_KINDS else None
        self.flip_at = flip_at
        if fault is not None and kind == "wrong_bytes" and flip_at is None:
            self.flip_at = fault.at

    @property
    def needs_flip_at(self) -> bool:
        """A wrong_bytes fault still waiting to be told where to flip (a CAR's first block)."""
        return self.fault is not None and self.fault.kind == "wrong_bytes" and self.flip_at is None

    @property
    def plain(self) -> bool:
        """The bytes go as they are, unpaced, through aiohttp: a file may go by sendfile."""
        kind = self.fault.kind if self.fault is not None else None
        plain_kinds = (None, "ignore_range", "oversize")
        return self.pace is None and self.resp is not None and kind in plain_kinds

    async def write(self, data: bytes | memoryview) -> bool:
        """Send `data` (or the part before a cut); False once the body was cut."""
        if self.closed:
            return False
        fault = self.fault
        if fault is not None and fault.kind == "wrong_bytes" and self.flip_at is not None:
            lo = max(self.flip_at, self.sent)
            hi = min(self.flip_at + fault.count, self.sent + len(data))
            if lo < hi:
                mutable = bytearray(data)
                for i in range(lo - self.sent, hi - self.sent):
                    mutable[i] ^= 0xFF
                data = bytes(mutable)
        if self.cut_at is not None and self.sent + len(data) > self.cut_at:
            await self._send(data[: self.cut_at - self.sent])
            await self._cut()
            return False
        await self._send(data)
        return True

    async def sendfile(self, path: Path, start: int, end: int) -> None:
        """Send the file bytes [start, end) with the kernel's sendfile when it can (`plain`)."""
        assert self.plain
        loop = asyncio.get_running_loop()
        transport = self.request.transport
        task = asyncio.current_task()
        with path.open("rb") as f:
            pos = start
            if transport is not None and task is not None:
                self.server._sendfiling[transport] = task
                try:
                    while pos < end:
                        n = min(SENDFILE_CHUNK, end - pos)
                        self.server._count(self.record, n)
                        sent = await loop.sendfile(transport, f, pos, n)
                        self.server._count(self.record, sent - n)
                        self.sent += sent
                        pos += sent
                        if sent < n:
                            raise ConnectionResetError("file shrank while sending")
                    return
                except NotImplementedError:
                    pass
                finally:
                    self.server._sendfiling.pop(transport, None)
            f.seek(pos)
            while pos < end and (piece := f.read(min(1 << 20, end - pos))):
                pos += len(piece)
                await self.write(piece)

    async def end(self) -> None:
        """Finish the body: a pending cut happens now; oversize adds its bytes; last chunk."""
        if self.closed:
            return
        if self.cut_at is not None:  # the cut lies at or past the end: cut at the end
            await self._cut()
            return
        fault = self.fault
        self.closed = True
        if fault is not None and fault.kind == "oversize":
            extra = bytes(fault.extra_bytes)
            resp = self.resp
            if resp is None or (fault.content_length == "file" and not resp.chunked):
                await self._send(extra, raw=True)  # past the announced length, or the close
                if self.request.transport is not None:
                    self.request.transport.close()
                return
            await self._send(extra)
        if self.resp is not None:
            await self.resp.write_eof()

    async def _send(self, data: bytes | memoryview, *, raw: bool = False) -> None:
        if not data:
            return
        pace = self.pace
        if pace is None:
            await self._emit(data, raw)
            return
        stopping = self.server._stopping
        assert stopping is not None
        view = memoryview(data)
        for pos in range(0, len(view), pace.chunk):
            if stopping.is_set():
                abort(self.request)
                raise ConnectionResetError("server stopping")
            piece = view[pos : pos + pace.chunk]
            await pace.take(len(piece))
            await self._emit(piece, raw)

    async def _emit(self, data: bytes | memoryview, raw: bool) -> None:
        self.server._count(self.record, len(data))
        self.sent += len(data)
        if self.resp is not None and not raw:
            await self.resp.write(data)
            return
        transport = self.request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
        transport.write(data)
        await self.request.writer.drain()

    async def _cut(self) -> None:
        self.closed = True
        assert self.fault is not None
        await self.request.writer.drain()
        transport = self.request.transport
        if transport is None:
            return
        if self.fault.kind == "truncated":
            transport.close()  # flushes what was written, then FIN
        elif self.fault.kind == "stall":
            await self.server._park(self.request)
            abort(self.request)
        else:  # reset
            await wait_sent(transport)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()


def abort(request: web.Request) -> None:
    """Drop the request's connection at once."""
    transport = request.transport
    if transport is not None:
        transport.abort()


async def wait_sent(transport: asyncio.BaseTransport, limit: float = 2.0) -> None:
    """Wait (up to `limit` s) until the kernel has sent everything queued on the socket."""
    try:
        import fcntl
        import termios
    except ImportError:  # not Linux/Unix: nothing to poll
        return
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        except OSError:
            return
        if struct.unpack("i", buf)[0] == 0:
            return
        await asyncio.sleep(0.005)


__all__ = ["BodyWriter", "abort", "wait_sent"]
