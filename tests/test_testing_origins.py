"""Tests of the loopback origins (hub, gateway) and of every injectable fault."""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from modelfetch.testing import (
    EMPTY_CID,
    FaultRules,
    GatewayServer,
    HubServer,
    SentRange,
    Target,
    faults,
    git_blob_sha1,
    unused_url,
)

SMALL = b'{"hidden_size": 64}\n'
MODEL = bytes(range(256)) * 64  # 16 KiB, LFS because of the .onnx name
CID = "bafybeigdyrztest"


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with HubServer() as server:
        server.add_file("org/model", "config.json", SMALL)
        server.add_file("org/model", "onnx/model.onnx", MODEL)
        yield server


@pytest.fixture
def gateway() -> Iterator[GatewayServer]:
    with GatewayServer() as server:
        server.add_directory(CID, {"config.json": SMALL, "onnx/model.onnx": MODEL})
        server.add_file("bafkreifile", MODEL)
        yield server


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def fetch(
    url: str, method: str = "GET", headers: dict[str, str] | None = None, timeout: float = 5
) -> Answer:
    """One request with http.client: no redirects followed, the whole body read."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
    finally:
        conn.close()


@dataclass
class Raw:
    head: bytes
    body: bytes
    ending: str  # "eof", "reset" or "timeout"

    @property
    def status(self) -> int:
        return int(self.head.split(b" ", 2)[1])

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.decode("latin-1").partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


def raw_get(url: str, headers: dict[str, str] | None = None, timeout: float = 0.5) -> Raw:
    """GET over a bare socket, reading until EOF, reset or `timeout` s of silence."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    data = b""
    ending = "eof"
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while True:
            try:
                piece = sock.recv(1 << 16)
            except TimeoutError:
                ending = "timeout"
                break
            except ConnectionResetError:
                ending = "reset"
                break
            if not piece:
                break
            data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    return Raw(head, body, ending)


# -- hub: the protocol ---------------------------------------------------------------


def test_hub_small_file_head_and_get(hub: HubServer) -> None:
    url = hub.resolve_url("org/model", "config.json")
    head = fetch(url, "HEAD")
    assert head.status == 200
    assert head.body == b""
    assert head.headers["etag"] == f'"{git_blob_sha1(SMALL)}"'
    assert head.headers["x-repo-commit"] == hub.commit("org/model")
    assert head.headers["content-length"] == str(len(SMALL))
    assert head.headers["accept-ranges"] == "bytes"
    assert "x-xet-hash" not in head.headers
    got = fetch(url)
    assert (got.status, got.body) == (200, SMALL)
    assert got.headers["etag"] == head.headers["etag"]


def test_git_blob_sha1_matches_git() -> None:
    # `printf 'hello\n' | git hash-object --stdin`
    assert git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_hub_commit_is_fixed_and_differs_per_revision(hub: HubServer) -> None:
    main = hub.commit("org/model")
    assert len(main) == 40 and int(main, 16) >= 0
    assert main == HubServer.commit("org/model", "main", "model")
    assert main != hub.commit("org/model", "v1")
    assert main != hub.commit("org/model", "main", "dataset")


def test_hub_lfs_file_redirects_relative_to_cdn(hub: HubServer) -> None:
    sha = hashlib.sha256(MODEL).hexdigest()
    head = fetch(hub.resolve_url("org/model", "onnx/model.onnx"), "HEAD")
    assert head.status == 302
    location = head.headers["location"]
    assert location.startswith(f"/cdn/{sha}")
    assert head.headers["x-linked-etag"] == f'"{sha}"'
    assert head.headers["x-linked-size"] == str(len(MODEL))
    assert head.headers["etag"] == f'"{sha}"'
    assert head.headers["x-repo-commit"] == hub.commit("org/model")
    cdn = fetch(hub.url + location)
    assert (cdn.status, cdn.body) == (200, MODEL)
    assert cdn.headers["etag"] == f'"{sha}"'
    assert cdn.headers["x-repo-commit"] == hub.commit("org/model")
    part = fetch(hub.cdn_url(sha), headers={"Range": "bytes=100-199"})
    assert part.status == 206
    assert part.body == MODEL[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(MODEL)}"
    assert part.headers["content-length"] == "100"
    assert "x-repo-commit" not in part.headers  # a bare CDN URL carries no commit


def test_hub_lfs_default_threshold_and_override() -> None:
    with HubServer(lfs_threshold=100) as hub:
        assert hub.add_file("o/r", "a.bin", b"x" * 100).lfs
        assert not hub.add_file("o/r", "b.bin", b"x" * 99).lfs
        assert hub.add_file("o/r", "c.onnx", b"x").lfs
        assert not hub.add_file("o/r", "d.onnx", b"x", lfs=False).lfs
        assert fetch(hub.resolve_url("o/r", "d.onnx"), "HEAD").status == 200
        assert fetch(hub.resolve_url("o/r", "a.bin"), "HEAD").status == 302


def test_hub_absolute_redirects() -> None:
    with HubServer(absolute_redirects=True) as hub:
        hub.add_file("o/r", "m.onnx", MODEL)
        head = fetch(hub.resolve_url("o/r", "m.onnx"), "HEAD")
        assert head.headers["location"].startswith(hub.url + "/cdn/")
        assert fetch(head.headers["location"]).body == MODEL


def test_hub_ranges(hub: HubServer) -> None:
    url = hub.resolve_url("org/model", "config.json")
    n = len(SMALL)
    assert fetch(url, headers={"Range": "bytes=0-4"}).body == SMALL[:5]
    suffix = fetch(url, headers={"Range": "bytes=-5"})
    assert (suffix.status, suffix.body) == (206, SMALL[-5:])
    assert suffix.headers["content-range"] == f"bytes {n - 5}-{n - 1}/{n}"
    assert fetch(url, headers={"Range": "bytes=3-"}).body == SMALL[3:]
    beyond = fetch(url, headers={"Range": f"bytes={n}-"})
    assert beyond.status == 416
    assert beyond.headers["content-range"] == f"bytes */{n}"


def test_hub_dataset_revision_and_commit_urls(hub: HubServer) -> None:
    hub.add_file("org/data", "data/train/part-0.csv", b"a,b\n", repo_type="dataset")
    hub.add_file("org/model", "config.json", b"v1", revision="refs/pr/1")
    got = fetch(hub.resolve_url("org/data", "data/train/part-0.csv", repo_type="dataset"))
    assert got.body == b"a,b\n"
    assert got.headers["x-repo-commit"] == hub.commit("org/data", repo_type="dataset")
    pr = hub.resolve_url("org/model", "config.json", revision="refs/pr/1")
    assert "refs%2Fpr%2F1" in pr
    assert fetch(pr).body == b"v1"
    by_commit = hub.resolve_url("org/model", "config.json", revision=hub.commit("org/model"))
    assert fetch(by_commit).body == SMALL
    # the model repo of the same name does not have the dataset's file
    assert fetch(hub.resolve_url("org/data", "data/train/part-0.csv")).status == 404


def test_hub_errors_carry_hub_codes(hub: HubServer) -> None:
    cases = [
        (hub.resolve_url("org/none", "config.json"), 404, "RepoNotFound"),
        (hub.resolve_url("org/model", "config.json", revision="v9"), 404, "RevisionNotFound"),
        (hub.resolve_url("org/model", "nope.txt"), 404, "EntryNotFound"),
    ]
    for url, status, code in cases:
        got = fetch(url)
        assert (got.status, got.headers["x-error-code"]) == (status, code)
        assert json.loads(got.body)["error"]
        head = fetch(url, "HEAD")
        assert (head.status, head.headers["x-error-code"]) == (status, code)
    missing = fetch(hub.resolve_url("org/model", "nope.txt"), "HEAD")
    assert missing.headers["x-repo-commit"] == hub.commit("org/model")
    assert fetch(hub.url + "/org/model/tree/main").status == 404
    assert fetch(hub.cdn_url("0" * 64)).status == 404


def test_hub_unknown_repo_as_401_like_the_real_hub() -> None:
    with HubServer(repo_not_found_status=401) as hub:
        got = fetch(hub.resolve_url("org/none", "x"))
        assert (got.status, got.headers["x-error-code"]) == (401, "RepoNotFound")


def test_hub_gated_repo(hub: HubServer) -> None:
    hub.set_gated("org/model", token="secret")
    url = hub.resolve_url("org/model", "config.json")
    anonymous = fetch(url)
    assert (anonymous.status, anonymous.headers["x-error-code"]) == (401, "GatedRepo")
    wrong = fetch(url, headers={"Authorization": "Bearer nope"})
    assert (wrong.status, wrong.headers["x-error-code"]) == (403, "GatedRepo")
    assert fetch(url, headers={"Authorization": "Bearer secret"}).body == SMALL
    hub.set_gated("org/model", None)
    assert fetch(url).status == 200


def test_hub_require_token() -> None:
    with HubServer(require_token="tok") as hub:
        hub.add_file("o/r", "a.txt", b"a")
        url = hub.resolve_url("o/r", "a.txt")
        assert fetch(url).status == 401
        assert "x-error-code" not in fetch(url, headers={"Authorization": "Bearer x"}).headers
        assert fetch(url, headers={"Authorization": "Bearer tok"}).body == b"a"


def test_hub_serves_files_from_disk_with_ranges(tmp_path: Path) -> None:
    source = tmp_path / "weights.bin"
    data = hashlib.sha256(b"seed").digest() * (3 * 1024 * 1024 // 32 + 7)
    source.write_bytes(data)
    with HubServer() as hub:
        info = hub.add_file_from_path("o/r", "weights.bin", source)
        assert info.lfs and info.size == len(data)
        assert info.sha256 == hashlib.sha256(data).hexdigest()
        location = fetch(hub.resolve_url("o/r", "weights.bin"), "HEAD").headers["location"]
        assert fetch(hub.url + location).body == data
        part = fetch(hub.url + location, headers={"Range": "bytes=1000000-2999999"})
        assert (part.status, part.body) == (206, data[1_000_000:3_000_000])
        assert hub.bytes_sent("weights.bin") == len(data) + 2_000_000
        assert hub.bytes_sent(info.sha256) == len(data) + 2_000_000
        small = tmp_path / "small.txt"
        small.write_bytes(b"tiny")
        tiny = hub.add_file("o/r", "small.txt", small)
        assert tiny.git_sha1 == git_blob_sha1(b"tiny")
        assert fetch(hub.resolve_url("o/r", "small.txt")).body == b"tiny"


def test_hub_counters(hub: HubServer) -> None:
    sha = hashlib.sha256(MODEL).hexdigest()
    fetch(hub.resolve_url("org/model", "config.json"))
    fetch(hub.resolve_url("org/model", "config.json"), "HEAD")
    location = fetch(hub.resolve_url("org/model", "onnx/model.onnx")).headers["location"]
    fetch(hub.url + location)
    assert hub.requests == [
        ("GET", "/org/model/resolve/main/config.json"),
        ("HEAD", "/org/model/resolve/main/config.json"),
        ("GET", "/org/model/resolve/main/onnx/model.onnx"),
        ("GET", f"/cdn/{sha}"),
    ]
    assert hub.request_count("config.json") == 2
    assert hub.request_count("config.json", method="HEAD") == 1
    assert hub.bytes_sent("config.json") == len(SMALL)
    assert hub.bytes_sent("onnx/model.onnx") == len(MODEL)
    assert hub.bytes_sent(sha) == len(MODEL)
    assert hub.bytes_sent("other.bin") == 0
    hub.reset_counters()
    assert hub.requests == [] and hub.bytes_sent(sha) == 0


# -- gateway --------------------------------------------------------------------------


def test_gateway_serves_directory_files_and_ranges(gateway: GatewayServer) -> None:
    got = fetch(gateway.ipfs_url(CID, "onnx/model.onnx"))
    assert (got.status, got.body) == (200, MODEL)
    assert got.headers["x-ipfs-path"] == f"/ipfs/{CID}/onnx/model.onnx"
    assert got.headers["etag"].startswith(f'"{CID}')
    assert got.headers["accept-ranges"] == "bytes"
    part = fetch(gateway.ipfs_url(CID, "onnx/model.onnx"), headers={"Range": "bytes=10-19"})
    assert (part.status, part.body) == (206, MODEL[10:20])
    assert part.headers["content-range"] == f"bytes 10-19/{len(MODEL)}"
    head = fetch(gateway.ipfs_url(CID, "config.json"), "HEAD")
    assert (head.status, head.headers["content-length"], head.body) == (200, str(len(SMALL)), b"")
    whole = fetch(gateway.ipfs_url("bafkreifile"))
    assert (whole.body, whole.headers["etag"]) == (MODEL, '"bafkreifile"')


def test_gateway_probe_missing_and_listing(gateway: GatewayServer) -> None:
    probe = fetch(gateway.ipfs_url(EMPTY_CID))
    assert (probe.status, probe.body) == (200, b"")
    assert fetch(gateway.ipfs_url("bafyunknown")).status == 404
    assert fetch(gateway.ipfs_url(CID, "nope.bin")).status == 404
    assert fetch(gateway.url + "/ipns/x").status == 404
    redirect = fetch(gateway.ipfs_url(CID))
    assert (redirect.status, redirect.headers["location"]) == (301, f"/ipfs/{CID}/")
    listing = fetch(gateway.ipfs_url(CID) + "/")
    assert listing.status == 200 and b"config.json" in listing.body and b"onnx" in listing.body
    assert fetch(gateway.ipfs_url("bafkreifile") + "?format=car").status == 501


def test_gateway_files_from_disk_and_counters(tmp_path: Path) -> None:
    source = tmp_path / "m.bin"
    source.write_bytes(MODEL * 4)
    with GatewayServer() as gw:
        gw.add_directory("bafydir", {"sub/m.bin": source})
        gw.add_file_from_path("bafkfile", source)
        assert fetch(gw.ipfs_url("bafkfile"), "HEAD").headers["content-length"] == str(
            len(MODEL) * 4
        )
        assert fetch(gw.ipfs_url("bafydir", "sub/m.bin")).body == MODEL * 4
        tail = fetch(gw.ipfs_url("bafydir", "sub/m.bin"), headers={"Range": "bytes=-10"})
        assert tail.body == (MODEL * 4)[-10:]
        assert gw.bytes_sent("sub/m.bin") == len(MODEL) * 4 + 10
        assert gw.bytes_sent("bafydir/sub/m.bin") == len(MODEL) * 4 + 10
        assert gw.requests[1:] == [("GET", "/ipfs/bafydir/sub/m.bin")] * 2


def test_origin_works_from_another_process(gateway: GatewayServer) -> None:
    code = (
        "import hashlib, sys, urllib.request;"
        "print(hashlib.sha256(urllib.request.urlopen(sys.argv[1], timeout=5).read()).hexdigest())"
    )
    url = gateway.ipfs_url(CID, "onnx/model.onnx")
    out = subprocess.run(
        [sys.executable, "-c", code, url], capture_output=True, text=True, timeout=20, check=True
    )
    assert out.stdout.strip() == hashlib.sha256(MODEL).hexdigest()


async def test_origins_from_an_async_test(hub: HubServer, gateway: GatewayServer) -> None:
    timeout = aiohttp.ClientTimeout(total=5, sock_read=0.3)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(hub.resolve_url("org/model", "onnx/model.onnx")) as resp:
            assert resp.status == 200  # aiohttp follows the relative redirect
            assert await resp.read() == MODEL
        gateway.inject(faults.stall(100), times=1)
        async with session.get(gateway.ipfs_url(CID, "onnx/model.onnx")) as resp:
            assert resp.headers["Content-Length"] == str(len(MODEL))
            with pytest.raises(TimeoutError):
                await resp.read()
        async with session.get(gateway.ipfs_url(CID, "onnx/model.onnx")) as resp:
            assert await resp.read() == MODEL


# -- lifecycle --------------------------------------------------------------------------


def test_stop_does_not_hang_with_faults_holding_connections() -> None:
    server = GatewayServer().start()
    server.add_file("bafyx", MODEL)
    server.inject(faults.stall(10), path="bafyx", times=1)
    server.inject(faults.hang(), path="bafyhang")
    results: list[Raw] = []
    threads = [
        threading.Thread(target=lambda u=u: results.append(raw_get(u, timeout=30)))
        for u in (server.ipfs_url("bafyx"), server.ipfs_url("bafyhang"))
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while server.request_count() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 3
    for t in threads:
        t.join(5)
    assert len(results) == 2
    assert all(r.ending in ("eof", "reset") for r in results)  # closed, not left hanging
    assert sorted(len(r.body) for r in results) == [0, 10]
    with pytest.raises(RuntimeError):
        _ = server.url


def test_refuse_accept_and_unused_url(hub: HubServer) -> None:
    url = hub.resolve_url("org/model", "config.json")
    hub.refuse()
    with pytest.raises(ConnectionRefusedError):
        fetch(url)
    hub.accept()
    assert fetch(url).body == SMALL
    with pytest.raises(ConnectionRefusedError):
        fetch(unused_url() + "/ipfs/x")


def test_refuse_drops_keep_alive_connections(hub: HubServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=5)
    path = "/org/model/resolve/main/config.json"
    conn.request("GET", path)
    assert conn.getresponse().read() == SMALL
    hub.refuse(drop_connections=False)
    conn.request("GET", path)  # an open keep-alive connection still works
    assert conn.getresponse().read() == SMALL
    hub.accept()
    hub.refuse()
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        conn.request("GET", path)
        conn.getresponse().read()
    conn.close()
    with pytest.raises(ConnectionRefusedError):
        fetch(hub.url + path)
    hub.accept()
    assert fetch(hub.url + path).body == SMALL


def test_stop_during_a_sendfile(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = tmp_path / "big.bin"
    with source.open("wb") as f:
        f.truncate(64 << 20)
    server = GatewayServer().start()
    server.add_file("bafybig", source)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /ipfs/bafybig HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")  # then never read: sendfile blocks
        time.sleep(0.1)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 0.4
    assert "Error" not in caplog.text and "Traceback" not in caplog.text


def test_fixed_port_and_restart() -> None:
    first = GatewayServer().start()
    port = first.port
    first.stop()
    with GatewayServer(port=port) as again:
        assert again.url == f"http://127.0.0.1:{port}"
        assert fetch(again.ipfs_url(EMPTY_CID)).status == 200


# -- faults ---------------------------------------------------------------------------


def test_fault_hang(gateway: GatewayServer) -> None:
    gateway.inject(faults.hang(), times=1)
    got = raw_get(gateway.ipfs_url(CID, "config.json"), timeout=0.3)
    assert (got.ending, got.head) == ("timeout", b"")
    assert fetch(gateway.ipfs_url(CID, "config.json")).body == SMALL


def test_fault_drop(gateway: GatewayServer) -> None:
    gateway.inject(faults.drop(), times=1)
    got = raw_get(gateway.ipfs_url(CID, "config.json"))
    assert (got.ending, got.head, got.body) == ("eof", b"", b"")


def test_fault_stall(gateway: GatewayServer) -> None:
    gateway.inject(faults.stall(after_bytes=1000), times=1)
    got = raw_get(gateway.ipfs_url(CID, "onnx/model.onnx"), timeout=0.3)
    assert got.status == 200
    assert got.header("Content-Length") == str(len(MODEL))
    assert (got.ending, got.body) == ("timeout", MODEL[:1000])
    assert gateway.bytes_sent("onnx/model.onnx") == 1000


def test_fault_reset(gateway: GatewayServer) -> None:
    gateway.inject(faults.reset(after_bytes=500), times=1)
    got = raw_get(gateway.ipfs_url(CID, "onnx/model.onnx"), timeout=2)
    assert got.status == 200
    assert (got.ending, got.body) == ("reset", MODEL[:500])


def test_fault_truncated(gateway: GatewayServer) -> None:
    gateway.inject(faults.truncated(after_bytes=700), times=1)
    got = raw_get(gateway.ipfs_url(CID, "onnx/model.onnx"), timeout=2)
    assert got.header("Content-Length") == str(len(MODEL))
    assert (got.ending, got.body) == ("eof", MODEL[:700])
    gateway.inject(faults.truncated(after_bytes=10), times=1)
    with pytest.raises(http.client.IncompleteRead):
        fetch(gateway.ipfs_url(CID, "onnx/model.onnx"))


def test_fault_truncated_applies_to_the_range_asked(gateway: GatewayServer) -> None:
    gateway.inject(faults.truncated(after_bytes=5), times=1)
    got = raw_get(gateway.ipfs_url(CID, "onnx/model.onnx"), {"Range": "bytes=100-199"})
    assert got.status == 206
    assert got.header("Content-Length") == "100"
    assert got.body == MODEL[100:105]


def test_fault_wrong_bytes(gateway: GatewayServer) -> None:
    gateway.inject(faults.wrong_bytes(), times=1)
    got = fetch(gateway.ipfs_url(CID, "onnx/model.onnx"))
    assert got.status == 200 and len(got.body) == len(MODEL)
    diff = [i for i, (a, b) in enumerate(zip(got.body, MODEL, strict=True)) if a != b]
    assert diff == [len(MODEL) // 2]
    gateway.inject(faults.wrong_bytes(at=0, count=3), times=1)
    got = fetch(gateway.ipfs_url(CID, "onnx/model.onnx"), headers={"Range": "bytes=10-19"})
    assert got.status == 206
    assert got.body[3:] == MODEL[13:20]
    assert all(a == b ^ 0xFF for a, b in zip(got.body[:3], MODEL[10:13], strict=True))


def test_fault_status(gateway: GatewayServer) -> None:
    for code in (404, 500, 502, 503):
        gateway.inject(faults.status(code, body=b"upstream says no"), times=1)
        got = fetch(gateway.ipfs_url(CID, "config.json"))
        assert (got.status, got.body) == (code, b"upstream says no")
    gateway.inject(faults.status(503), times=1)
    assert fetch(gateway.ipfs_url(CID, "config.json"), "HEAD").status == 503


def test_fault_too_many_requests(gateway: GatewayServer) -> None:
    gateway.inject(faults.too_many_requests(retry_after=2), times=1)
    got = fetch(gateway.ipfs_url(CID, "config.json"))
    assert (got.status, got.headers["retry-after"]) == (429, "2")


def test_fault_html_error_page(gateway: GatewayServer) -> None:
    gateway.inject(faults.html_error_page(), times=1)
    got = fetch(gateway.ipfs_url(CID, "onnx/model.onnx"))
    assert got.status == 200
    assert got.headers["content-type"].startswith("text/html")
    assert got.body.startswith(b"<!DOCTYPE html>") and got.body != MODEL


def test_fault_oversize_without_content_length(gateway: GatewayServer) -> None:
    gateway.inject(faults.oversize(extra_bytes=100), times=1)
    got = raw_get(gateway.ipfs_url(CID, "config.json"))
    assert got.status == 200
    assert got.header("Content-Length") is None and got.header("Transfer-Encoding") is None
    assert (got.ending, got.body) == ("eof", SMALL + bytes(100))


def test_fault_oversize_with_content_lengths(gateway: GatewayServer) -> None:
    gateway.inject(faults.oversize(extra_bytes=50, content_length="sent"), times=1)
    got = fetch(gateway.ipfs_url(CID, "config.json"))
    assert got.headers["content-length"] == str(len(SMALL) + 50)
    assert got.body == SMALL + bytes(50)
    gateway.inject(faults.oversize(extra_bytes=50, content_length="file"), times=1)
    raw = raw_get(gateway.ipfs_url(CID, "config.json"))
    assert raw.header("Content-Length") == str(len(SMALL))
    assert raw.body == SMALL + bytes(50)


def test_fault_redirect_loop_and_redirect_to(gateway: GatewayServer) -> None:
    url = gateway.ipfs_url(CID, "config.json") + "?x=1"
    gateway.inject(faults.redirect_loop())
    got = fetch(url)
    assert (got.status, got.headers["location"]) == (302, f"/ipfs/{CID}/config.json?x=1")
    gateway.clear_faults()
    gateway.inject(faults.redirect_to("http://127.0.0.1:9/elsewhere", status=307), times=1)
    got = fetch(url)
    assert (got.status, got.headers["location"]) == (307, "http://127.0.0.1:9/elsewhere")
    assert fetch(url).status == 200


async def test_fault_redirect_loop_stops_a_client(gateway: GatewayServer) -> None:
    gateway.inject(faults.redirect_loop())
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.TooManyRedirects):
            await session.get(gateway.ipfs_url(CID, "config.json"), max_redirects=5)
    seen = gateway.requests
    assert len(seen) >= 5
    assert set(seen) == {("GET", f"/ipfs/{CID}/config.json")}


def test_fault_slow(gateway: GatewayServer) -> None:
    gateway.inject(faults.slow(bytes_per_sec=64 * 1024), times=1)
    started = time.monotonic()
    got = fetch(gateway.ipfs_url(CID, "onnx/model.onnx"))
    elapsed = time.monotonic() - started
    assert got.body == MODEL
    assert 0.2 <= elapsed < 2  # 16 KiB at 64 KiB/s ≈ 0.25 s
    started = time.monotonic()
    fetch(gateway.ipfs_url(CID, "onnx/model.onnx"))
    assert time.monotonic() - started < 0.2


def test_fault_ignore_range(gateway: GatewayServer) -> None:
    gateway.inject(faults.ignore_range(), times=1)
    got = fetch(gateway.ipfs_url(CID, "onnx/model.onnx"), headers={"Range": "bytes=10-19"})
    assert (got.status, got.body) == (200, MODEL)
    assert "content-range" not in got.headers


def test_fault_times_countdown_and_order(gateway: GatewayServer) -> None:
    url = gateway.ipfs_url(CID, "config.json")
    gateway.inject(faults.status(500), times=2)
    gateway.inject(faults.status(503), times=1)
    assert [fetch(url).status for _ in range(4)] == [500, 500, 503, 200]
    gateway.inject(faults.status(502))  # forever
    assert [fetch(url).status for _ in range(3)] == [502, 502, 502]
    gateway.clear_faults()
    assert fetch(url).status == 200


def test_fault_path_matching(gateway: GatewayServer) -> None:
    gateway.inject(faults.status(404), path="onnx/model.onnx")
    assert fetch(gateway.ipfs_url(CID, "onnx/model.onnx")).status == 404
    assert fetch(gateway.ipfs_url(CID, "config.json")).status == 200
    gateway.clear_faults()
    gateway.inject(faults.status(500), path="nnx/model.onnx")  # suffixes match whole segments
    assert fetch(gateway.ipfs_url(CID, "onnx/model.onnx")).status == 200


def test_body_faults_skip_head_and_count_only_applied(gateway: GatewayServer) -> None:
    url = gateway.ipfs_url(CID, "onnx/model.onnx")
    gateway.inject(faults.truncated(10), times=1)
    assert fetch(url, "HEAD").status == 200  # HEAD sends no body: fault not used up
    assert raw_get(url).body == MODEL[:10]
    assert fetch(url).body == MODEL


def test_hub_faults_target_resolve_or_cdn(hub: HubServer) -> None:
    resolve = hub.resolve_url("org/model", "onnx/model.onnx")
    hub.inject(faults.status(503), path="onnx/model.onnx", on="cdn", times=1)
    head = fetch(resolve, "HEAD")
    assert head.status == 302
    assert fetch(hub.url + head.headers["location"]).status == 503
    assert fetch(hub.url + head.headers["location"]).status == 200
    hub.inject(faults.status(500), path="onnx/model.onnx", on="resolve", times=1)
    assert fetch(resolve, "HEAD").status == 500
    assert fetch(resolve, "HEAD").status == 302
    # a body fault on the file reaches the CDN download, not the 302
    hub.inject(faults.truncated(100), path="onnx/model.onnx", times=1)
    location = fetch(resolve).headers["location"]
    assert raw_get(hub.url + location).body == MODEL[:100]
    with pytest.raises(ValueError):
        hub.inject(faults.hang(), on="ipfs")  # type: ignore[arg-type]


def test_fault_rules_take_in_order_count_down_and_filter() -> None:
    rules: FaultRules[str] = FaultRules({"cdn", "resolve"}, owner="TestOrigin")
    cdn = Target("cdn", ("/cdn/abc", "org/m/onnx/model.onnx"))
    rules.add("body:slow", on="cdn", times=2)
    rules.add("request:500", path="onnx/model.onnx", times=1)
    rules.add("request:503")  # forever
    assert rules.take(Target("resolve", ("/x",)), lambda f: f.startswith("body")) is None
    assert [rules.take(cdn, lambda f: f.startswith("body")) for _ in range(3)] == [
        "body:slow",
        "body:slow",
        None,
    ]
    requests = [rules.take(cdn, lambda f: f.startswith("request")) for _ in range(3)]
    assert requests == ["request:500", "request:503", "request:503"]
    assert rules.take(Target("resolve", ("/other",))) == "request:503"
    rules.clear()
    assert rules.take(cdn) is None
    with pytest.raises(ValueError, match="TestOrigin has no 'ipfs' requests"):
        rules.add("x", on="ipfs")
    with pytest.raises(ValueError):
        rules.add("x", times=0)
    # many threads taking a counted fault: each use is handed out exactly once
    rules.add("once-each", times=500)
    taken: list[str | None] = []
    workers = [
        threading.Thread(target=lambda: taken.extend(rules.take(cdn) for _ in range(100)))
        for _ in range(8)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert taken.count("once-each") == 500 and taken.count(None) == 300


def test_fault_factories_validate() -> None:
    with pytest.raises(ValueError):
        faults.stall(-1)
    with pytest.raises(ValueError):
        faults.status(99)
    with pytest.raises(ValueError):
        faults.redirect_to("http://x", status=200)
    with pytest.raises(ValueError):
        faults.slow(0)
    assert faults.stall(3).body_level and not faults.hang().body_level


# -- rate caps, black holes, faults of one range, range counters --------------------------

MB = 1_000_000
BIG = random.Random(7).randbytes(4 << 20)  # 4 MiB: a quarter takes 0.5 s at 2 MB/s
BIG_CID = "bafkreibig"


@dataclass
class Timed:
    answer: Answer
    began: float
    ended: float

    @property
    def rate(self) -> float:
        return len(self.answer.body) / (self.ended - self.began)


def fetch_together(requests: list[tuple[str, dict[str, str]]]) -> list[Timed]:
    """Each (url, headers) on its own connection, all started at once; timed from the client."""
    barrier = threading.Barrier(len(requests))
    results: list[Timed | None] = [None] * len(requests)

    def run(i: int, url: str, headers: dict[str, str]) -> None:
        barrier.wait()
        began = time.monotonic()
        answer = fetch(url, headers=headers, timeout=10)
        results[i] = Timed(answer, began, time.monotonic())

    threads = [threading.Thread(target=run, args=(i, *r)) for i, r in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    done = [r for r in results if r is not None]
    assert len(done) == len(requests)
    return done


def quarters(size: int) -> list[tuple[int, int]]:
    step = size // 4
    return [(i * step, (i + 1) * step - 1) for i in range(4)]


@pytest.fixture
def big_gateway() -> Iterator[GatewayServer]:
    with GatewayServer() as server:
        server.add_file(BIG_CID, BIG)
        yield server


def test_per_connection_cap_holds_each_connection_not_the_sum(big_gateway: GatewayServer) -> None:
    cap = 2 * MB
    url = big_gateway.ipfs_url(BIG_CID)
    big_gateway.limit(per_connection=cap)
    (one,) = fetch_together([(url, {"Range": f"bytes=0-{(1 << 20) - 1}"})])
    assert one.answer.body == BIG[: 1 << 20]
    assert one.rate <= 1.1 * cap  # by design at most the cap, from the client's clock
    four = fetch_together([(url, {"Range": f"bytes={a}-{b}"}) for a, b in quarters(len(BIG))])
    assert b"".join(t.answer.body for t in four) == BIG
    assert all(t.rate <= 1.1 * cap for t in four)
    # the 4 connections together: about 4 caps, well above one, never above 4
    span = max(t.ended for t in four) - min(t.began for t in four)
    assert 2.5 * cap <= len(BIG) / span <= 4 * 1.1 * cap, len(BIG) / span / cap
    big_gateway.limit()  # no caps: loopback speed again
    (free,) = fetch_together([(url, {})])
    assert free.rate > 5 * cap


def test_total_cap_holds_the_sum_of_connections() -> None:
    cap = 8 * MB
    with HubServer() as hub:
        info = hub.add_file("org/big", "big.bin", BIG, lfs=True)
        url = hub.cdn_url(info.sha256)
        hub.limit(total=cap)
        got = fetch_together([(url, {"Range": f"bytes={a}-{b}"}) for a, b in quarters(len(BIG))])
        assert all(t.answer.status == 206 for t in got)
        assert b"".join(t.answer.body for t in got) == BIG
        span = max(t.ended for t in got) - min(t.began for t in got)
        assert len(BIG) / span <= 1.1 * cap
        assert all(t.rate <= 1.1 * cap for t in got)
        # the counters a multi-range client is checked with
        assert hub.range_request_count() == 4 and hub.request_count() == 4
        assert hub.max_concurrent_bodies == 4
        ranges = sorted(hub.sent_ranges("big.bin"), key=lambda r: r.start)
        assert ranges == [
            SentRange(f"/cdn/{info.sha256}", a, b + 1, True, b + 1 - a)
            for a, b in quarters(len(BIG))
        ]
        hub.reset_counters()
        assert hub.max_concurrent_bodies == 0 and hub.sent_ranges() == []


def test_caps_together_and_validation(big_gateway: GatewayServer) -> None:
    url = big_gateway.ipfs_url(BIG_CID)
    big_gateway.limit(per_connection=4 * MB, total=2 * MB)  # the tighter cap wins
    (one,) = fetch_together([(url, {"Range": "bytes=0-524287"})])
    assert one.answer.body == BIG[: 1 << 19]
    assert one.rate <= 1.1 * 2 * MB
    for bad in ({"per_connection": 0}, {"total": -1}):
        with pytest.raises(ValueError):
            big_gateway.limit(**bad)


def test_caps_pace_faulted_bodies(big_gateway: GatewayServer) -> None:
    big_gateway.limit(per_connection=2 * MB)
    big_gateway.inject(faults.reset(after_bytes=300_000), times=1)
    began = time.monotonic()
    got = raw_get(big_gateway.ipfs_url(BIG_CID), {"Range": "bytes=100000-"}, timeout=5)
    assert time.monotonic() - began >= 300_000 / (2 * MB)
    assert (got.status, got.ending, got.body) == (206, "reset", BIG[100_000:400_000])


def test_fault_black_hole_never_reads_nor_answers(gateway: GatewayServer) -> None:
    gateway.inject(faults.black_hole(), times=2)
    url = gateway.ipfs_url(CID, "config.json")
    for _ in range(2):
        got = raw_get(url, timeout=0.3)  # the connection is accepted, the request sent
        assert (got.ending, got.head, got.body) == ("timeout", b"", b"")
    assert gateway.request_count() == 0  # never read, so never seen as a request
    assert fetch(url).body == SMALL  # the third connection is served
    with pytest.raises(ValueError):
        gateway.inject(faults.black_hole(), path="config.json")


def test_stop_drops_black_holed_connections() -> None:
    server = GatewayServer().start()
    server.inject(faults.black_hole())
    results: list[Raw] = []
    thread = threading.Thread(target=lambda: results.append(raw_get(server.url + "/", timeout=30)))
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    server.stop()
    thread.join(5)
    assert time.monotonic() - started < 3
    assert [(r.ending, r.head) for r in results] in ([("eof", b"")], [("reset", b"")])


def test_fault_reset_counts_from_the_range_start(hub: HubServer) -> None:
    cdn = hub.url + fetch(hub.resolve_url("org/model", "onnx/model.onnx")).headers["location"]
    for rng, want in (("bytes=1000-", MODEL[1000:1500]), ("bytes=2000-2999", MODEL[2000:2500])):
        hub.inject(faults.reset(after_bytes=500), on="cdn", times=1)
        got = raw_get(cdn, {"Range": rng}, timeout=2)
        assert (got.status, got.ending, got.body) == (206, "reset", want)
    hub.inject(faults.reset(after_bytes=500), on="cdn", times=1)
    got = raw_get(cdn, {"Range": "bytes=16000-16099"}, timeout=2)  # shorter than the cut
    assert (got.status, got.body) == (206, MODEL[16000:16100])


def test_fault_wrong_bytes_at_a_file_offset_hits_one_range(gateway: GatewayServer) -> None:
    url = gateway.ipfs_url(CID, "onnx/model.onnx")
    gateway.inject(faults.wrong_bytes(file_offset=5000, count=2), times=1)
    bodies = {}
    for a, b in ((0, 4095), (8192, 16383), (4096, 8191), (4096, 8191)):
        got = fetch(url, headers={"Range": f"bytes={a}-{b}"})
        assert got.status == 206
        bodies.setdefault((a, b), []).append(got.body)
    assert bodies[(0, 4095)] == [MODEL[:4096]]
    assert bodies[(8192, 16383)] == [MODEL[8192:]]
    lied, honest = bodies[(4096, 8191)]  # the covering range took the fault; the retry did not
    assert honest == MODEL[4096:8192]
    assert [i + 4096 for i, (x, y) in enumerate(zip(lied, honest, strict=True)) if x != y] == [
        5000,
        5001,
    ]
    # a flip straddling a range's start only changes the bytes inside it, in every body
    gateway.inject(faults.wrong_bytes(file_offset=4095, count=2))
    assert fetch(url, headers={"Range": "bytes=0-4094"}).body == MODEL[:4095]
    part = fetch(url, headers={"Range": "bytes=4096-4099"}).body
    assert part == bytes([MODEL[4096] ^ 0xFF]) + MODEL[4097:4100]
    whole = fetch(url).body
    assert [i for i, (x, y) in enumerate(zip(whole, MODEL, strict=True)) if x != y] == [4095, 4096]
    with pytest.raises(ValueError):
        faults.wrong_bytes(at=1, file_offset=1)


@pytest.mark.parametrize("where", ["resolve", "cdn", "gateway"])
def test_ranges_on_every_file_path(hub: HubServer, gateway: GatewayServer, where: str) -> None:
    data, origin = MODEL, gateway
    url = gateway.ipfs_url(CID, "onnx/model.onnx")
    if where == "resolve":
        data, origin, url = SMALL, hub, hub.resolve_url("org/model", "config.json")
    elif where == "cdn":
        origin = hub
        url = hub.url + fetch(hub.resolve_url("org/model", "onnx/model.onnx")).headers["location"]
    origin.reset_counters()
    n = len(data)
    closed = fetch(url, headers={"Range": "bytes=3-9"})
    assert (closed.status, closed.body) == (206, data[3:10])
    assert closed.headers["content-range"] == f"bytes 3-9/{n}"
    opened = fetch(url, headers={"Range": "bytes=5-"})
    assert (opened.status, opened.body) == (206, data[5:])
    assert opened.headers["content-range"] == f"bytes 5-{n - 1}/{n}"
    past = fetch(url, headers={"Range": "bytes=2-100000"})  # a last byte beyond: up to the end
    assert (past.status, past.body) == (206, data[2:])
    beyond = fetch(url, headers={"Range": f"bytes={n}-"})
    assert (beyond.status, beyond.headers["content-range"]) == (416, f"bytes */{n}")
    assert fetch(url).status == 200
    assert origin.range_request_count() == 4 and origin.request_count() == 5
    sent = [(r.start, r.end, r.ranged, r.sent) for r in origin.sent_ranges()]
    assert sent == [(3, 10, True, 7), (5, n, True, n - 5), (2, n, True, n - 2), (0, n, False, n)]
