"""Shared base of the loopback origins: an aiohttp app on its own loop in a daemon thread."""

from __future__ import annotations

import asyncio
import contextlib
import http
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

from aiohttp import web

from .faults import Fault, On

CHUNK = 1 << 20  # bytes per write when streaming from memory or reading a file
SENDFILE_CHUNK = 16 << 20  # bytes per sendfile call (so byte counters move during big sends)


@dataclass(frozen=True, slots=True)
class Blob:
    """File contents served by an origin: bytes in memory or a file on disk."""

    data: bytes | None
    path: Path | None
    size: int

    @classmethod
    def of(cls, source: bytes | Path) -> Blob:
        """Wrap bytes or a path (its size is read now)."""
        if isinstance(source, Path):
            return cls(None, source, source.stat().st_size)
        return cls(bytes(source), None, len(source))

    def chunks(self, start: int, end: int, size: int = CHUNK) -> Iterator[bytes]:
        """Yield the bytes [start, end) in pieces of at most `size`."""
        if self.data is not None:
            view = memoryview(self.data)
            for pos in range(start, end, size):
                yield bytes(view[pos : min(pos + size, end)])
            return
        assert self.path is not None
        with self.path.open("rb") as f:
            f.seek(start)
            left = end - start
            while left > 0:
                piece = f.read(min(size, left))
                if not piece:
                    return
                left -= len(piece)
                yield piece


@dataclass(frozen=True, slots=True)
class Target:
    """What a request is about: its category (e.g. "resolve", "cdn", "ipfs") and match names."""

    category: str
    names: tuple[str, ...]


@dataclass(slots=True)
class _Injected:
    fault: Fault
    path: str | None
    times: int | None
    on: str


def name_matches(name: str, pattern: str) -> bool:
    """True when `name` equals `pattern` or ends with "/" + `pattern` (a path-suffix match)."""
    pattern = pattern.lstrip("/")
    return name.lstrip("/") == pattern or name.endswith("/" + pattern)


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """Parse a single `bytes=` range into [start, end); None = serve all; "416" = unsatisfiable."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # unknown unit or several ranges: ignoring Range is allowed (RFC 9110)
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0:
                return "416"
            return (max(0, size - suffix), size)
        start = int(first)
        end = size if last == "" else min(int(last) + 1, size)
    except ValueError:
        return None
    if start >= size or end <= start:
        return "416"
    return (start, end)


def raw_head(status: int, headers: Mapping[str, str]) -> bytes:
    """Serialize an HTTP/1.1 status line and headers (for answers aiohttp would not send)."""
    reason = http.HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class OriginServer:
    """Base class: runs an aiohttp.web app on 127.0.0.1 in a daemon thread, with faults."""

    categories: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, *, port: int = 0) -> None:
        self._wanted_port = port
        self._port: int | None = None
        self._lock = threading.RLock()
        self._faults: list[_Injected] = []
        self._requests: list[tuple[str, str]] = []
        self._sent: dict[tuple[str, ...], int] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._holder: socket.socket | None = None
        self._stopping: asyncio.Event | None = None
        self._active: set[asyncio.Transport] = set()
        self._sendfiling: dict[asyncio.Transport, asyncio.Task[object]] = {}

    # -- lifecycle ------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, `http://127.0.0.1:<port>` (only valid once started)."""
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        """The TCP port the server listens on (only valid once started)."""
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._port

    def start(self) -> Self:
        """Start serving in a daemon thread; returns self once the port accepts connections."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []
        thread = threading.Thread(
            target=self._run, args=(ready, failure), name=f"{type(self).__name__}", daemon=True
        )
        thread.start()
        ready.wait()
        if failure:
            thread.join(5)
            raise failure[0]
        self._thread = thread
        return self

    def stop(self) -> None:
        """Stop serving: abort open connections (even faulted ones) and join the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        with contextlib.suppress(Exception):
            future.result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None
        self._loop = None
        self._port = None
        self._site = None
        if self._holder is not None:
            self._holder.close()
            self._holder = None

    def __enter__(self) -> Self:
        """Start the server (see `start`)."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server (see `stop`)."""
        self.stop()

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            loop.close()
            return
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _startup(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=1 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        await self._listen(self._wanted_port)

    async def _listen(self, port: int) -> None:
        assert self._runner is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        self._site = web.SockSite(self._runner, sock)
        await self._site.start()

    async def _shutdown(self) -> None:
        assert self._stopping is not None
        self._stopping.set()
        self._drop_connections()
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._runner.cleanup(), 5)

    def _drop_connections(self) -> None:
        """Abort every open connection (busy or idle keep-alive)."""
        transports = set(self._active)
        server = self._runner.server if self._runner is not None else None
        if server is not None:
            transports.update(h.transport for h in server.connections if h.transport is not None)
        for transport in transports:
            task = self._sendfiling.get(transport)
            if task is not None:
                # Aborting a transport inside loop.sendfile trips an asyncio bug (3.11):
                # cancel the send instead, which restores the transport first.
                task.cancel()
            else:
                transport.abort()

    def _call(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        loop = self._loop
        if loop is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        asyncio.run_coroutine_threadsafe(fn(), loop).result(timeout=10)

    def refuse(self, *, drop_connections: bool = True) -> None:
        """Stop listening (connections are refused) until `accept()`; drop open ones too."""
        self._call(self._refuse)
        if drop_connections:
            self._call(self._drop_all)

    def accept(self) -> None:
        """Listen again on the same port after `refuse()`."""
        self._call(self._accept)

    async def _drop_all(self) -> None:
        self._drop_connections()

    async def _refuse(self) -> None:
        if self._site is None:
            return
        await self._site.stop()
        self._site = None
        # Hold the port (bound, not listening) so connections get ECONNREFUSED.
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", self.port))
        self._holder = holder

    async def _accept(self) -> None:
        if self._site is not None:
            return
        if self._holder is not None:
            self._holder.close()
            self._holder = None
        await self._listen(self.port)

    # -- faults ---------------------------------------------------------------------

    def inject(
        self, fault: Fault, *, path: str | None = None, times: int | None = None, on: On = "any"
    ) -> None:
        """Apply `fault` to the next `times` matching requests (None: forever).

        `path` matches the end of the request path or of a file's name (e.g. "onnx/model.onnx"),
        None matches every request. `on` limits a hub fault to "resolve" or "cdn" requests.
        Faults apply in injection order; body faults apply only to GETs that send file bytes.
        """
        if on != "any" and on not in self.categories:
            raise ValueError(f"{type(self).__name__} has no {on!r} requests")
        if times is not None and times < 1:
            raise ValueError(f"times must be >= 1 or None, got {times}")
        with self._lock:
            self._faults.append(_Injected(fault, path, times, on))

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, target: Target, *, body: bool) -> Fault | None:
        with self._lock:
            for injected in self._faults:
                if injected.fault.body_level != body:
                    continue
                if injected.on != "any" and injected.on != target.category:
                    continue
                pattern = injected.path
                if pattern is not None and not any(name_matches(n, pattern) for n in target.names):
                    continue
                if injected.times is not None:
                    injected.times -= 1
                    if injected.times <= 0:
                        self._faults.remove(injected)
                return injected.fault
        return None

    # -- counters -------------------------------------------------------------------

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Every (method, decoded path) received since start or `reset_counters()`, in order."""
        with self._lock:
            return list(self._requests)

    def request_count(self, path: str | None = None, method: str | None = None) -> int:
        """How many requests matched `path` (suffix match, None = all) and `method`."""
        return sum(
            1
            for m, p in self.requests
            if (method is None or m == method) and (path is None or name_matches(p, path))
        )

    def bytes_sent(self, path_or_sha: str) -> int:
        """Body bytes sent for a file, by request path suffix, file name suffix or hash."""
        with self._lock:
            return sum(
                n
                for keys, n in self._sent.items()
                if any(name_matches(k, path_or_sha) for k in keys)
            )

    def reset_counters(self) -> None:
        """Forget the requests seen and the bytes sent."""
        with self._lock:
            self._requests.clear()
            self._sent.clear()

    def _count(self, keys: tuple[str, ...], n: int) -> None:
        # Called just before bytes go to the socket, so a client that has read them sees them.
        if n:
            with self._lock:
                self._sent[keys] = self._sent.get(keys, 0) + n

    # -- request handling -----------------------------------------------------------

    def _target(self, request: web.Request) -> Target:
        """Classify a request (subclasses say what it is about)."""
        return Target("other", (request.path,))

    async def _serve(self, request: web.Request, target: Target) -> web.StreamResponse:
        """Answer a request that no request-level fault replaced (subclasses implement)."""
        raise web.HTTPNotFound()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            self._active.add(transport)
        try:
            with self._lock:
                self._requests.append((request.method, request.path))
            target = self._target(request)
            fault = self._take_fault(target, body=False)
            if fault is not None:
                return await self._answer_fault(request, fault)
            return await self._serve(request, target)
        except ConnectionError:
            _abort(request)  # the client went away mid-answer
            return web.Response()
        finally:
            if transport is not None:
                self._active.discard(transport)

    async def _park(self, request: web.Request) -> None:
        """Wait until the server stops or the client has gone away."""
        assert self._stopping is not None
        while not self._stopping.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.05)

    async def _answer_fault(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        kind = fault.kind
        if kind == "hang":
            await self._park(request)
            _abort(request)
            return web.Response()
        if kind == "drop":
            if request.transport is not None:
                request.transport.close()
            return web.Response()
        if kind == "status":
            return web.Response(status=fault.status, body=fault.body, headers=dict(fault.headers))
        if kind == "too_many_requests":
            retry = fault.retry_after
            value = str(int(retry)) if retry == int(retry) else f"{retry:g}"
            return web.Response(
                status=429, text="Too Many Requests\n", headers={"Retry-After": value}
            )
        if kind == "html_error_page":
            return web.Response(
                status=fault.status, body=fault.body, content_type="text/html", charset="utf-8"
            )
        if kind == "redirect_loop":
            return web.Response(status=302, headers={"Location": str(request.rel_url)})
        if kind == "redirect_to":
            return web.Response(status=fault.status, headers={"Location": fault.url})
        raise AssertionError(f"not a request-level fault: {kind}")

    async def send_blob(
        self,
        request: web.Request,
        target: Target,
        blob: Blob,
        headers: Mapping[str, str],
        count_keys: tuple[str, ...],
    ) -> web.StreamResponse:
        """Serve a file (200, or 206 for a Range) applying any body-level fault to a GET."""
        size = blob.size
        rng = parse_range(request.headers.get("Range"), size)
        if rng == "416":
            return web.Response(status=416, headers={"Content-Range": f"bytes */{size}", **headers})
        fault: Fault | None = None
        if request.method == "GET":
            fault = self._take_fault(target, body=True)
        if fault is not None and fault.kind == "ignore_range":
            rng = None
        start, end = rng if isinstance(rng, tuple) else (0, size)
        hdrs = dict(headers)
        hdrs["Accept-Ranges"] = "bytes"
        hdrs.setdefault("Content-Type", "application/octet-stream")
        status = 200
        if isinstance(rng, tuple):
            status = 206
            hdrs["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        length = end - start

        if request.method != "GET":
            resp = web.StreamResponse(status=status, headers=hdrs)
            resp.content_length = length
            await resp.prepare(request)
            await resp.write_eof()
            return resp

        if fault is not None and fault.kind == "oversize" and fault.content_length == "none":
            return await self._oversize_unannounced(
                request, blob, start, end, status, hdrs, fault, count_keys
            )

        resp = web.StreamResponse(status=status, headers=hdrs)
        resp.content_length = length
        if fault is not None and fault.kind == "oversize" and fault.content_length == "sent":
            resp.content_length = length + fault.extra_bytes
        await resp.prepare(request)

        if fault is None or fault.kind == "ignore_range":
            await self._send_plain(request, resp, blob, start, end, count_keys)
        elif fault.kind in ("stall", "reset", "truncated"):
            await self._send_cut(request, resp, blob, start, end, fault, count_keys)
        elif fault.kind == "wrong_bytes":
            await self._send_wrong(resp, blob, start, end, fault, count_keys)
        elif fault.kind == "slow":
            await self._send_slow(request, resp, blob, start, end, fault, count_keys)
        elif fault.kind == "oversize":
            await self._send_plain(request, resp, blob, start, end, count_keys)
            extra = bytes(fault.extra_bytes)
            self._count(count_keys, len(extra))
            if fault.content_length == "sent":
                await resp.write(extra)
            elif request.transport is not None:  # "file": bytes beyond Content-Length
                request.transport.write(extra)
                await request.writer.drain()
                request.transport.close()
        else:
            raise AssertionError(f"not a body fault: {fault.kind}")
        await resp.write_eof()
        return resp

    async def _send_plain(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        blob: Blob,
        start: int,
        end: int,
        count_keys: tuple[str, ...],
    ) -> None:
        if blob.data is not None:
            view = memoryview(blob.data)
            for pos in range(start, end, CHUNK):
                window = view[pos : min(pos + CHUNK, end)]
                self._count(count_keys, len(window))
                await resp.write(window)
            return
        assert blob.path is not None
        loop = asyncio.get_running_loop()
        transport = request.transport
        with blob.path.open("rb") as f:
            pos = start
            task = asyncio.current_task()
            if transport is not None and task is not None:
                self._sendfiling[transport] = task
                try:
                    while pos < end:
                        n = min(SENDFILE_CHUNK, end - pos)
                        self._count(count_keys, n)
                        sent = await loop.sendfile(transport, f, pos, n)
                        self._count(count_keys, sent - n)
                        pos += sent
                        if sent < n:
                            raise ConnectionResetError("file shrank while sending")
                    return
                except NotImplementedError:
                    pass
                finally:
                    self._sendfiling.pop(transport, None)
            for piece in blob.chunks(pos, end):
                self._count(count_keys, len(piece))
                await resp.write(piece)

    async def _send_cut(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        blob: Blob,
        start: int,
        end: int,
        fault: Fault,
        count_keys: tuple[str, ...],
    ) -> None:
        cut = min(end, start + fault.after_bytes)
        for piece in blob.chunks(start, cut):
            self._count(count_keys, len(piece))
            await resp.write(piece)
        await request.writer.drain()
        transport = request.transport
        if transport is None:
            return
        if fault.kind == "truncated":
            transport.close()  # flushes what was written, then FIN
        elif fault.kind == "stall":
            await self._park(request)
            _abort(request)
        else:  # reset
            await _wait_sent(transport)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()

    async def _send_wrong(
        self,
        resp: web.StreamResponse,
        blob: Blob,
        start: int,
        end: int,
        fault: Fault,
        count_keys: tuple[str, ...],
    ) -> None:
        length = end - start
        at = length // 2 if fault.at is None else fault.at
        flip_from, flip_to = at, at + fault.count
        offset = 0
        for piece in blob.chunks(start, end):
            lo, hi = max(flip_from, offset), min(flip_to, offset + len(piece))
            if lo < hi:
                mutable = bytearray(piece)
                for i in range(lo - offset, hi - offset):
                    mutable[i] ^= 0xFF
                piece = bytes(mutable)
            self._count(count_keys, len(piece))
            await resp.write(piece)
            offset += len(piece)

    async def _send_slow(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        blob: Blob,
        start: int,
        end: int,
        fault: Fault,
        count_keys: tuple[str, ...],
    ) -> None:
        assert self._stopping is not None
        tick = 0.05
        step = max(1, int(fault.bytes_per_sec * tick))
        began = time.monotonic()
        sent = 0
        for piece in blob.chunks(start, end, step):
            if self._stopping.is_set():
                _abort(request)
                return
            self._count(count_keys, len(piece))
            await resp.write(piece)
            await request.writer.drain()
            sent += len(piece)
            delay = began + sent / fault.bytes_per_sec - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)

    async def _oversize_unannounced(
        self,
        request: web.Request,
        blob: Blob,
        start: int,
        end: int,
        status: int,
        hdrs: dict[str, str],
        fault: Fault,
        count_keys: tuple[str, ...],
    ) -> web.StreamResponse:
        transport = request.transport
        if transport is None:
            return web.Response()
        # No Content-Length, no chunking: the body ends when the connection closes (HTTP/1.0 style).
        hdrs = {**hdrs, "Connection": "close"}
        transport.write(raw_head(status, hdrs))
        for piece in blob.chunks(start, end):
            self._count(count_keys, len(piece))
            transport.write(piece)
            await request.writer.drain()
        self._count(count_keys, fault.extra_bytes)
        transport.write(bytes(fault.extra_bytes))
        await request.writer.drain()
        transport.close()
        return web.Response()  # never sent: the transport is closing


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


async def _wait_sent(transport: asyncio.BaseTransport, limit: float = 2.0) -> None:
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
