"""Shared base of the loopback origins: an aiohttp app on its own loop in a daemon thread."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping
from types import TracebackType
from typing import Any, ClassVar, Self

from aiohttp import web

from ._body import BodyWriter, abort
from ._listen import BlackHole, Site
from .blob import CHUNK, Blob, parse_range, raw_head
from .counters import TrafficCounters
from .faults import Fault, On
from .pacing import Pace, TokenBucket
from .rules import FaultRules, Target, name_matches


class OriginServer(TrafficCounters):
    """Base class: runs an aiohttp.web app on 127.0.0.1 in a daemon thread, with faults.

    Faults are injected (`inject`) and used by the stage they act on: a connection (black
    hole), a request (status, hang, ...) or a body (see `faults`). Rate caps (`limit`) apply
    to every body sent; counters (`TrafficCounters`) tell what was asked and sent.
    """

    categories: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, *, port: int = 0) -> None:
        super().__init__()
        self._wanted_port = port
        self._port: int | None = None
        self._lock = threading.RLock()
        self._faults: FaultRules[Fault] = FaultRules(self.categories, owner=type(self).__name__)
        self._per_connection: float | None = None
        self._total: TokenBucket | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._site: Site | None = None
        self._holder: socket.socket | None = None
        self._stopping: asyncio.Event | None = None
        self._active: set[asyncio.Transport] = set()
        self._swallowed: set[asyncio.Transport] = set()
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
        self._site = Site(self._runner, sock, self._new_connection)
        await self._site.start()

    def _new_connection(self) -> asyncio.BaseProtocol:
        """The protocol of an accepted connection: aiohttp's, or a black hole's."""
        if self._faults.take(Target("connection", ()), _is_connection_fault) is not None:
            return BlackHole(self._swallowed)
        assert self._runner is not None and self._runner.server is not None
        return self._runner.server()

    async def _shutdown(self) -> None:
        assert self._stopping is not None
        self._stopping.set()
        self._drop_connections()
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._runner.cleanup(), 5)

    def _drop_connections(self) -> None:
        """Abort every open connection (busy or idle keep-alive)."""
        transports = {*self._active, *self._swallowed}
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

    # -- faults and caps -----------------------------------------------------------

    def inject(
        self, fault: Fault, *, path: str | None = None, times: int | None = None, on: On = "any"
    ) -> None:
        """Apply `fault` to the next `times` matching requests (None: forever).

        `path` matches the end of the request path or of a file's name (e.g. "onnx/model.onnx"),
        None matches every request. `on` limits a hub fault to "resolve" or "cdn" requests.
        Faults apply in injection order; body faults apply only to GETs that send file bytes
        (a `file_offset` flip only to those whose range covers it). A black hole takes the
        next `times` connections instead, before any request is read (so no `path` or `on`).
        """
        if fault.level == "connection" and (path is not None or on != "any"):
            raise ValueError(f"{fault.kind} takes connections before a request is read: no path")
        self._faults.add(fault, path=path, times=times, on=on)

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        self._faults.clear()

    def limit(self, *, per_connection: float | None = None, total: float | None = None) -> None:
        """Cap body bytes/s: of each connection, and of all connections together (None: no cap).

        Every GET body started afterwards obeys both caps (file bodies and ranges, CARs, raw
        blocks, faulted bodies; a `slow` fault adds its own), sent in chunks of at most 64 KiB.
        `limit()` removes the caps.
        """
        for name, value in (("per_connection", per_connection), ("total", total)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 bytes/s or None, got {value}")
        self._per_connection = per_connection
        self._total = TokenBucket(total) if total is not None else None

    def _pace(self, fault: Fault | None) -> Pace | None:
        buckets = [TokenBucket(self._per_connection)] if self._per_connection else []
        if self._total is not None:
            buckets.append(self._total)
        if fault is not None and fault.kind == "slow":
            buckets.append(TokenBucket(fault.bytes_per_sec))
        return Pace(buckets) if buckets else None

    @contextlib.contextmanager
    def _body(
        self,
        request: web.Request,
        resp: web.StreamResponse | None,
        keys: tuple[str, ...],
        fault: Fault | None,
        span: tuple[int, int | None, bool],
        *,
        flip_at: int | None = None,
    ) -> Iterator[BodyWriter]:
        """A writer for one GET body: `span` is (start, end, ranged) for the counters."""
        record = self._open_body(keys, request.path, *span)
        try:
            yield BodyWriter(self, request, resp, record, fault, self._pace(fault), flip_at=flip_at)
        finally:
            self._close_body(record)

    # -- request handling -----------------------------------------------------------

    def _target(self, request: web.Request) -> Target:
        """Classify a request (subclasses say what it is about)."""
        return Target("other", (request.path,))

    def _asks_range(self, request: web.Request) -> bool:
        """Whether a request asks for part of a body (for `range_request_count`)."""
        return "Range" in request.headers

    async def _serve(self, request: web.Request, target: Target) -> web.StreamResponse:
        """Answer a request that no request-level fault replaced (subclasses implement)."""
        raise web.HTTPNotFound()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            self._active.add(transport)
        try:
            self._count_request(request.method, request.path, self._asks_range(request))
            target = self._target(request)
            fault = self._faults.take(target, _is_request_fault)
            if fault is not None:
                return await self._answer_fault(request, fault)
            return await self._serve(request, target)
        except ConnectionError:
            abort(request)  # the client went away mid-answer
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
            abort(request)
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
        start, end = rng if isinstance(rng, tuple) else (0, size)
        fault: Fault | None = None
        if request.method == "GET":
            fault = self._faults.take(target, lambda f: f.level == "body" and f.covers(start, end))
        if fault is not None and fault.kind == "ignore_range":
            rng, start, end = None, 0, size
        hdrs = dict(headers)
        hdrs["Accept-Ranges"] = "bytes"
        hdrs.setdefault("Content-Type", "application/octet-stream")
        status = 200
        if isinstance(rng, tuple):
            status = 206
            hdrs["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        length = end - start

        resp = web.StreamResponse(status=status, headers=hdrs)
        resp.content_length = length
        if request.method != "GET":
            await resp.prepare(request)
            await resp.write_eof()
            return resp
        # An oversize body without Content-Length (nor chunks) ends when the connection closes:
        # its head goes straight to the socket, HTTP/1.0 style, and so does the body.
        oversize = fault.content_length if fault is not None and fault.kind == "oversize" else None
        unannounced = oversize == "none"
        if unannounced:
            if request.transport is None:
                return web.Response()
            request.transport.write(raw_head(status, {**hdrs, "Connection": "close"}))
        else:
            if fault is not None and oversize == "sent":
                resp.content_length = length + fault.extra_bytes
            await resp.prepare(request)

        flip_at = None
        if fault is not None and fault.kind == "wrong_bytes":
            flip_at = length // 2 if fault.at is None else fault.at
            if fault.file_offset is not None:
                flip_at = fault.file_offset - start
        span = (start, end, isinstance(rng, tuple))
        body_resp = None if unannounced else resp
        with self._body(request, body_resp, count_keys, fault, span, flip_at=flip_at) as out:
            if out.plain and blob.path is not None:
                await out.sendfile(blob.path, start, end)
            else:
                for piece in blob.windows(start, end):
                    if not await out.write(piece):
                        break
            await out.end()
        return web.Response() if unannounced else resp  # unannounced: never sent, closing


def _is_connection_fault(fault: Fault) -> bool:
    return fault.level == "connection"


def _is_request_fault(fault: Fault) -> bool:
    return fault.level == "request"


__all__ = ["CHUNK", "Blob", "OriginServer", "Target", "name_matches", "parse_range", "raw_head"]
