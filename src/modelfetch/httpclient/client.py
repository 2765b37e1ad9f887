"""Requests over pooled keep-alive HTTP/1.1 connections, with TLS, proxies and timeouts.

One `Client` per Fetcher. It sends a request, returns a `Response` once the head has arrived,
and takes the connection back when the body was read to the end. Errors are modelfetch's own
(`ConnectFailed`, `Stalled`, `Truncated`, `HTTPStatus`), never asyncio's or OSError's.
A refused connection and a host that does not resolve set `ConnectFailed.origin_down`: the
engine then stops asking that origin for the rest of the run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:  # ssl and urllib.request cost ~0.1 s to import: only when connecting
    import ssl

from ..errors import ConnectFailed, HTTPStatus, Stalled
from .connection import Connection, Head, Headers

USER_AGENT: Final = "modelfetch/0.1"
IDLE_PER_HOST: Final = 16  # idle keep-alive connections kept per host
DRAIN_ON_RELEASE: Final = 256 * 1024  # unread body bytes worth reading to keep a connection


@dataclass(frozen=True)
class Timeouts:
    """How long each phase may take, in seconds."""

    connect: float = 10.0  # TCP (+ TLS, + proxy tunnel) set-up
    answer: float = 30.0  # from the request sent to the response head
    stall: float = 30.0  # between two pieces of body


@dataclass(frozen=True)
class _Key:
    scheme: str
    host: str
    port: int


class Response:
    """A response whose head has arrived; the body is read with `chunks()` or `read()`."""

    def __init__(
        self,
        client: Client,
        key: _Key,
        conn: Connection,
        head: Head,
        url: str,
        method: str,
        stall: float,
        sent: Mapping[str, str],
    ) -> None:
        self._client = client
        self.sent_headers = sent  # what the request carried (is a token in it?)
        self._key = key
        self._conn: Connection | None = conn
        self.url = url
        self.status = head.status
        self.reason = head.reason
        self.headers: Headers = head.headers
        self._stall = stall
        self._done = False
        self._framing, self.length = _framing(head, method)
        self._reusable = head.version == "HTTP/1.1" and "close" not in (
            (head.headers.get("Connection") or "").lower()
        )
        if self._framing == "none":
            self._finish()

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").lower()

    async def chunks(self) -> AsyncIterator[memoryview]:
        """The body in the pieces it arrived in; Stalled after `stall` s without bytes."""
        conn = self._conn
        if conn is None:
            return
        if self._framing == "length":
            assert self.length is not None
            body = conn.body_fixed(self.length)
        elif self._framing == "chunked":
            body = conn.body_chunked()
        else:
            body = conn.body_until_close()
        conn.watch_stalls(self._stall)  # by the connection itself: no timer per piece
        try:
            while True:
                try:
                    piece = await anext(body)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise Stalled(f"no bytes for {self._stall:g} s from {self.url}") from None
                yield piece
        except BaseException:
            self.close()
            raise
        finally:
            conn.watch_stalls(None)
        self._finish()

    async def read(self, limit: int = 64 * 1024 * 1024) -> bytes:
        """The whole body (at most `limit` bytes, else HTTPStatus 502)."""
        parts: list[bytes] = []
        size = 0
        async for piece in self.chunks():
            size += len(piece)
            if size > limit:
                self.close()
                raise HTTPStatus(502, f"{self.url} sent a body over {limit:,} bytes")
            parts.append(bytes(piece))
        return b"".join(parts)

    def _finish(self) -> None:
        conn, self._conn = self._conn, None
        self._done = True
        if conn is None:
            return
        if self._reusable and self._framing != "close" and conn.usable:
            self._client._give_back(self._key, conn)
        else:
            conn.close()

    def close(self) -> None:
        """Abandon the body; the connection is closed, not reused."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def release(self) -> None:
        """Done with this answer: read a small rest to keep the connection, else close it."""
        if self._conn is None:
            return
        small = self.length is not None and self.length <= DRAIN_ON_RELEASE
        if self._framing == "length" and small:
            with contextlib.suppress(Exception):
                async for _ in self.chunks():
                    pass
            return
        self.close()


def _framing(head: Head, method: str) -> tuple[str, int | None]:
    """How the body is delimited (RFC 9112 6.3): none, length, chunked or close."""
    status = head.status
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        length_text = head.headers.get("Content-Length")
        return "none", int(length_text) if length_text and length_text.isdigit() else None
    encoding = (head.headers.get("Transfer-Encoding") or "").lower()
    if encoding:
        if encoding.split(",")[-1].strip() != "chunked":
            return "close", None
        return "chunked", None
    lengths = head.headers.getall("Content-Length")
    if lengths:
        values = {v.strip() for v in ",".join(lengths).split(",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise HTTPStatus(502, f"conflicting or bad Content-Length {lengths!r}")
        return "length", int(next(iter(values)))
    return "close", None


class Client:
    """Pooled HTTP/1.1 client (plain and TLS), honouring HTTP(S)_PROXY and NO_PROXY."""

    def __init__(self, *, trust_env: bool = True, idle_per_host: int = IDLE_PER_HOST) -> None:
        self._idle: dict[_Key, list[Connection]] = {}
        self._idle_per_host = idle_per_host
        self._trust_env = trust_env
        self._proxies: dict[str, str] | None = None
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            import ssl

            self._ssl = ssl.create_default_context()
            self._ssl.set_alpn_protocols(["http/1.1"])
        return self._ssl

    def set_ssl_context(self, context: ssl.SSLContext) -> None:
        """Use `context` for TLS (tests with their own CA; a corporate CA bundle)."""
        self._ssl = context

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeouts: Timeouts = Timeouts(),
    ) -> Response:
        """Send `method url`; return the response once its head arrived (any status)."""
        if self._closed:
            raise RuntimeError("this Client is closed")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ConnectFailed(f"not an http(s) URL: {url}")
        port = parts.port or (443 if scheme == "https" else 80)
        key = _Key(scheme, parts.hostname, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        proxy = self._proxy_for(scheme, parts.hostname)
        sent = {"Host": _host_header(parts.hostname, port, scheme), "User-Agent": USER_AGENT}
        sent.update(headers or {})
        if proxy is not None and scheme == "http":
            target = url  # absolute form, through the proxy
            if proxy.auth:
                sent["Proxy-Authorization"] = proxy.auth
            key = _Key("http-proxy", proxy.host, proxy.port)
        payload = _request_bytes(method, target, sent)
        for reused in (True, False):
            conn = self._take(key) if reused else None
            if reused and conn is None:
                continue
            if conn is None:
                conn = await self._connect(key, parts.hostname, port, scheme, proxy, timeouts)
            try:
                conn.send(payload)
                async with asyncio.timeout(timeouts.answer):
                    head = await conn.read_head()
            except TimeoutError:
                conn.close()
                raise Stalled(f"no answer from {parts.netloc} for {timeouts.answer:g} s") from None
            except ConnectFailed:
                conn.close()
                if reused and not conn.received_any:
                    continue  # the server closed an idle connection as we reused it
                raise
            except BaseException:
                conn.close()
                raise
            return Response(self, key, conn, head, url, method, timeouts.stall, sent)
        raise AssertionError("unreachable")  # pragma: no cover

    def _take(self, key: _Key) -> Connection | None:
        conns = self._idle.get(key)
        while conns:
            conn = conns.pop()
            if conn.usable:
                return conn
            conn.close()
        return None

    def _give_back(self, key: _Key, conn: Connection) -> None:
        conns = self._idle.setdefault(key, [])
        if self._closed or len(conns) >= self._idle_per_host:
            conn.close()
        else:
            conns.append(conn)

    def _proxy_for(self, scheme: str, host: str) -> _Proxy | None:
        if not self._trust_env:
            return None
        import urllib.request

        if self._proxies is None:
            self._proxies = urllib.request.getproxies()
        value = self._proxies.get(scheme) or self._proxies.get("all")
        if not value or urllib.request.proxy_bypass(host):
            return None
        return _Proxy.parse(value)

    async def _connect(
        self,
        key: _Key,
        host: str,
        port: int,
        scheme: str,
        proxy: _Proxy | None,
        timeouts: Timeouts,
    ) -> Connection:
        import ssl

        loop = asyncio.get_running_loop()
        where = f"{host}:{port}"
        dial_host, dial_port = (proxy.host, proxy.port) if proxy else (host, port)
        tls = self._ssl_context() if scheme == "https" and proxy is None else None
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeouts.connect):
                transport, conn = await loop.create_connection(
                    lambda: Connection(where),
                    dial_host,
                    dial_port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                    happy_eyeballs_delay=0.25,
                )
                if proxy is not None and scheme == "https":
                    await _tunnel(conn, host, port, proxy)
                    tls_transport = await loop.start_tls(
                        transport, conn, self._ssl_context(), server_hostname=host
                    )
                    assert tls_transport is not None
                    conn.connection_made(tls_transport)
        except TimeoutError:
            raise ConnectFailed(
                f"no connection to {where} within {timeouts.connect:g} s "
                f"(waited {time.monotonic() - started:.1f} s)"
            ) from None
        except socket.gaierror as exc:
            raise ConnectFailed(
                f"cannot resolve host {dial_host} ({exc.strerror or exc})", origin_down=True
            ) from None
        except ConnectionRefusedError:
            raise ConnectFailed(
                f"cannot connect to {dial_host}:{dial_port}: connection refused", origin_down=True
            ) from None
        except ssl.SSLError as exc:
            raise ConnectFailed(f"TLS with {where} failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise ConnectFailed(
                f"cannot connect to {dial_host}:{dial_port}: {exc.strerror or exc}"
            ) from None
        assert isinstance(conn, Connection)
        return conn


@dataclass(frozen=True)
class _Proxy:
    host: str
    port: int
    auth: str | None

    @classmethod
    def parse(cls, value: str) -> _Proxy:
        parts = urlsplit(value if "://" in value else f"http://{value}")
        if not parts.hostname:
            raise ConnectFailed(f"proxy setting {value!r} names no host")
        auth = None
        if parts.username is not None:
            user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            auth = "Basic " + base64.b64encode(user.encode()).decode()
        return cls(parts.hostname, parts.port or 8080, auth)


async def _tunnel(conn: Connection, host: str, port: int, proxy: _Proxy) -> None:
    """HTTP CONNECT through `proxy` to host:port (for https through a proxy)."""
    headers = {"Host": f"{host}:{port}", "User-Agent": USER_AGENT}
    if proxy.auth:
        headers["Proxy-Authorization"] = proxy.auth
    conn.send(_request_bytes("CONNECT", f"{host}:{port}", headers))
    head = await conn.read_head()
    if head.status != 200:
        raise ConnectFailed(
            f"proxy {proxy.host}:{proxy.port} refused a tunnel to {host}:{port}: "
            f"HTTP {head.status} {head.reason}"
        )


def _host_header(host: str, port: int, scheme: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    default = 443 if scheme == "https" else 80
    return shown if port == default else f"{shown}:{port}"


def _request_bytes(method: str, target: str, headers: Mapping[str, str]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ConnectFailed(f"header {name!r} contains a line break: refused")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
