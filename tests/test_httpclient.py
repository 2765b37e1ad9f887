"""modelfetch's HTTP/1.1 client against real servers: framing, keep-alive, TLS, proxies, errors."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from modelfetch.errors import ConnectFailed, Stalled, Truncated
from modelfetch.httpclient import Client, Timeouts
from modelfetch.testing import HubServer, faults
from modelfetch.testing.faults import unused_url

DATA = hashlib.sha256(b"seed").digest() * 40_000  # 1.28 MB
FAST = Timeouts(connect=2, answer=2, stall=1)


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with HubServer() as server:
        server.add_file("org/m", "weights.bin", DATA, lfs=False)
        yield server


async def body(client: Client, url: str, **headers: str) -> tuple[int, bytes]:
    resp = await client.request("GET", url, headers=headers, timeouts=FAST)
    return resp.status, await resp.read()


class _Site:
    """An aiohttp server of DATA (with Range, via FileResponse) that counts TCP connections."""

    def __init__(self, tmp_path: Path) -> None:
        self.file = tmp_path / "data.bin"
        self.file.write_bytes(DATA)
        self.transports: set[int] = set()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> _Site:
        async def handler(request: web.Request) -> web.StreamResponse:
            self.transports.add(id(request.transport))
            return web.FileResponse(self.file)

        app = web.Application()
        app.router.add_route("*", "/data.bin", handler)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/data.bin"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def test_content_length_body_ranges_and_keep_alive(tmp_path: Path) -> None:
    async with _Site(tmp_path) as site, Client(trust_env=False) as client:
        assert await body(client, site.url) == (200, DATA)
        status, part = await body(client, site.url, Range="bytes=100-199")
        assert (status, part) == (206, DATA[100:200])
        status, tail = await body(client, site.url, Range="bytes=1000000-")
        assert (status, tail) == (206, DATA[1_000_000:])
        resp = await client.request("HEAD", site.url, timeouts=FAST)
        assert resp.status == 200 and resp.length == len(DATA)
        assert await resp.read() == b""
        assert await body(client, site.url) == (200, DATA)
    # five requests, one TCP connection: the pool reused it each time
    assert len(site.transports) == 1


async def test_a_body_left_unread_is_not_reused(tmp_path: Path) -> None:
    async with _Site(tmp_path) as site, Client(trust_env=False) as client:
        resp = await client.request("GET", site.url, timeouts=FAST)
        await resp.release()  # 1.28 MB unread: closing beats draining
        assert await body(client, site.url, Range="bytes=0-3") == (206, DATA[:4])
        resp = await client.request("GET", site.url, headers={"Range": "bytes=0-99"})
        await resp.release()  # a small rest is drained: the connection is kept
        assert await body(client, site.url, Range="bytes=4-7") == (206, DATA[4:8])
    assert len(site.transports) == 2


class _RawServer:
    """A TCP server answering each connection with fixed bytes (framing the client must parse)."""

    def __init__(self, answer: bytes, *, close: bool = True) -> None:
        self.answer = answer
        self.close = close
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/x"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(self.answer)
                if not self.close:
                    threading.Event().wait(5)


async def test_chunked_body_with_extensions_and_trailers() -> None:
    payload = b"".join(
        [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"5;name=value\r\nhello\r\n",
            b"1\r\n \r\n",
            b"6\r\nworld!\r\n",
            b"0\r\nX-Trailer: yes\r\n\r\n",
        ]
    )
    server = _RawServer(payload)
    async with Client(trust_env=False) as client:
        assert await body(client, server.url) == (200, b"hello world!")


async def test_body_delimited_by_close_and_interim_answers_skipped() -> None:
    server = _RawServer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nuntil the end")
    async with Client(trust_env=False) as client:
        assert await body(client, server.url) == (200, b"until the end")


async def test_cut_fixed_length_body_is_truncated() -> None:
    server = _RawServer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten!!")
    async with Client(trust_env=False) as client:
        with pytest.raises(Truncated, match="10 bytes into a 100-byte body"):
            await body(client, server.url)


async def test_garbage_instead_of_http_is_a_clear_error() -> None:
    server = _RawServer(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    async with Client(trust_env=False) as client:
        with pytest.raises(Exception, match="did not answer with HTTP"):
            await body(client, server.url)


async def test_refused_and_unresolvable_hosts_mark_the_origin_down() -> None:
    async with Client(trust_env=False) as client:
        with pytest.raises(ConnectFailed, match="connection refused") as refused:
            await client.request("GET", unused_url() + "/x", timeouts=FAST)
        assert refused.value.origin_down
        with pytest.raises(ConnectFailed, match="cannot resolve host") as unknown:
            await client.request("GET", "http://no-such-host.invalid/x", timeouts=FAST)
        assert unknown.value.origin_down


async def test_no_answer_and_stalled_body(hub: HubServer) -> None:
    url = hub.resolve_url("org/m", "weights.bin")
    hub.inject(faults.hang(), times=1)
    hub.inject(faults.stall(after_bytes=1000), times=1)
    quick = Timeouts(connect=1, answer=0.3, stall=0.3)
    async with Client(trust_env=False) as client:
        with pytest.raises(Stalled, match="no answer"):
            await client.request("GET", url, timeouts=quick)
        resp = await client.request("GET", url, timeouts=quick)
        with pytest.raises(Stalled, match=r"no bytes for 0\.3 s"):
            await resp.read()
        assert await body(client, url) == (200, DATA)


async def test_server_closing_an_idle_connection_is_retried_on_a_new_one() -> None:
    served = []

    async def handler(request: web.Request) -> web.Response:
        served.append(request.transport)
        return web.Response(body=b"ok", headers={"Connection": "keep-alive"})

    app = web.Application()
    app.router.add_get("/x", handler)
    runner = web.AppRunner(app, keepalive_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with Client(trust_env=False) as client:
            assert await body(client, f"http://127.0.0.1:{port}/x") == (200, b"ok")
            await asyncio.sleep(0.4)  # the server drops the idle connection meanwhile
            assert await body(client, f"http://127.0.0.1:{port}/x") == (200, b"ok")
        assert len(served) == 2
    finally:
        await runner.cleanup()


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


async def _tls_site(server_ctx: ssl.SSLContext) -> AsyncIterator[str]:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)  # no length: chunked over TLS
        for i in range(0, len(DATA), 100_000):
            await resp.write(DATA[i : i + 100_000])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/big", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    try:
        yield f"https://localhost:{runner.addresses[0][1]}/big"
    finally:
        await runner.cleanup()


async def test_tls_with_a_trusted_ca(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls
    async for url in _tls_site(server_ctx):
        async with Client(trust_env=False) as client:
            client.set_ssl_context(client_ctx)
            assert await body(client, url) == (200, DATA)
        async with Client(trust_env=False) as untrusting:  # the system CAs do not know it
            with pytest.raises(ConnectFailed, match="TLS with localhost"):
                await body(untrusting, url)


class _Proxy:
    """A minimal forward proxy: CONNECT tunnels and absolute-form GETs, counting both."""

    def __init__(self) -> None:
        self.connects: list[str] = []
        self.gets: list[str] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://user:pw@127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
        assert b"Proxy-Authorization: Basic dXNlcjpwdw==" in head
        if method == "CONNECT":
            self.connects.append(target)
            host, port = target.rsplit(":", 1)
            up_r, up_w = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            self.gets.append(target)
            from urllib.parse import urlsplit

            parts = urlsplit(target)
            up_r, up_w = await asyncio.open_connection(parts.hostname, parts.port)
            up_w.write(head.replace(target.encode(), parts.path.encode(), 1))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer), return_exceptions=True)


async def test_proxies_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, hub: HubServer, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    proxy = _Proxy()
    proxy_url = await proxy.start()
    monkeypatch.setenv("http_proxy", proxy_url)
    monkeypatch.setenv("https_proxy", proxy_url)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    url = hub.resolve_url("org/m", "weights.bin")
    async with Client() as client:
        assert await body(client, url, Range="bytes=0-9") == (206, DATA[:10])
    assert proxy.gets == [url]
    async for tls_url in _tls_site(tls[0]):
        async with Client() as client:
            client.set_ssl_context(tls[1])
            assert await body(client, tls_url) == (200, DATA)
        assert proxy.connects == [tls_url.split("/")[2]]
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    async with Client() as client:
        assert await body(client, url) == (200, DATA)
    assert len(proxy.gets) == 1  # bypassed
    assert proxy.server is not None
    proxy.server.close()


def test_big_body_in_few_pieces(tmp_path: Path) -> None:
    """Bodies arrive in buffers of up to 256 KiB, not in thousands of small reads."""
    big = tmp_path / "big.bin"
    big.write_bytes(DATA * 20)  # 25.6 MB

    async def run(url: str) -> tuple[int, int]:
        async with Client(trust_env=False) as client:
            resp = await client.request("GET", url, timeouts=FAST)
            pieces = size = 0
            async for piece in resp.chunks():
                pieces += 1
                size += len(piece)
            return pieces, size

    with HubServer() as server:
        server.add_file_from_path("org/m", "big.bin", big, lfs=False)
        pieces, size = asyncio.run(run(server.resolve_url("org/m", "big.bin")))
    assert size == len(DATA) * 20
    assert pieces < size / 32_000  # far fewer pieces than 32 KB reads would give
