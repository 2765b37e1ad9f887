"""The trustless gateway double: raw blocks and CARs over a real IPFS node and in memory, faults."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
import pytest

from modelfetch.errors import BadBlock, Truncated
from modelfetch.ipfs import (
    CIDV1_DEFAULTS,
    UNIXFS_V0_2015,
    BlockGetter,
    Cid,
    DagReader,
    MemoryBlockStore,
    Profile,
    file_node,
    iter_car_stream_file,
    read_car,
    read_car_file,
    read_file,
    verify_block,
)
from modelfetch.testing import (
    MemoryBackend,
    NodeBackend,
    TrustlessGatewayServer,
    faults,
    unused_url,
)
from modelfetch.testing.pacing import CATCH_UP
from modelfetch.testing.trustless import (
    UNRELATED_BLOCK,
    UNRELATED_CID,
    DagScope,
    car_cut_short,
    extra_block,
    flip_block_byte,
    wrong_root,
)

if TYPE_CHECKING:
    from conftest_ipfs import IpfsNode

pytest_plugins = ["conftest_ipfs"]  # the ipfs_node fixture (tests/conftest_ipfs.py)

TIMEOUT = aiohttp.ClientTimeout(total=30)
CHUNK = 256 * 1024
CAR = "application/vnd.ipld.car"
RAW = "application/vnd.ipld.raw"
# `ipfs add --cid-version=1 --chunker=size-1024`: 1 KiB leaves, 174 links, so a 200-leaf file
# has two levels (root -> 2 parents -> leaves) at a tiny size.
TINY_V1 = Profile("tiny-v1", 1, True, 1024, 174)
TINY_SIZE = 200 * 1024 - 300  # 200 leaves, the last one partial
NODE_PARAMS: dict[str, tuple[dict[str, str], Profile]] = {
    "v0": ({"cid-version": "0"}, UNIXFS_V0_2015),
    "v1": ({"cid-version": "1"}, CIDV1_DEFAULTS),
}


def _model_files() -> dict[str, bytes]:
    rng = random.Random(42)
    return {
        "config.json": b'{"hidden_size": 8}\n',
        "onnx/model.onnx": rng.randbytes(2 * CHUNK + 1000),  # 3 leaves under one root
        "onnx/deep/tiny.bin": b"x",
        "name with spaces.txt": b"spaces",
    }


# -- helpers ----------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


async def fetch(
    session: aiohttp.ClientSession,
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> Answer:
    async with session.request(method, url, headers=headers) as resp:
        return Answer(resp.status, resp.headers.copy(), await resp.read())


def car_cids(body: bytes) -> list[Cid]:
    return [block.cid for block in read_car(body, verify=False)]


def car_roots(body: bytes) -> tuple[Cid, ...]:
    return read_car(body, verify=False).roots


def raw_getter(session: aiohttp.ClientSession, server: TrustlessGatewayServer) -> BlockGetter:
    """Blocks one by one from the double's `?format=raw` (the reader re-hashes them)."""

    async def get(cid: Cid) -> bytes:
        async with session.get(server.ipfs_url(cid, format="raw")) as resp:
            if resp.status != 200:
                raise KeyError(f"{cid}: {resp.status}")
            assert resp.headers["Content-Type"] == RAW
            return await resp.read()

    return get


async def chunks(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    async for chunk in content.iter_chunked(16 * 1024):
        yield chunk


async def node_add(
    node: IpfsNode, files: Mapping[str, bytes], params: Mapping[str, str]
) -> dict[str, Cid]:
    """`ipfs add` over the node's RPC; name -> CID of every file and directory added."""
    form = aiohttp.FormData()
    for name, data in files.items():
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.post(f"{node.api}/add", params=dict(params), data=form) as resp,
    ):
        body = await resp.text()
        assert resp.status == 200, body
    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
    return {str(line["Name"]): Cid.parse(str(line["Hash"])) for line in lines}


async def node_export(node: IpfsNode, cid: Cid) -> bytes:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.post(f"{node.api}/dag/export", params={"arg": str(cid)}) as resp,
    ):
        assert resp.status == 200
        return await resp.read()


def tiny_layout(data: bytes) -> tuple[Cid, list[Cid], list[Cid]]:
    """Root, parents and leaves of a TINY_V1 file, computed by the importer, not the server."""
    chunk, width = TINY_V1.chunk_size, TINY_V1.max_links
    leaves = [file_node(data[i : i + chunk], TINY_V1).cid for i in range(0, len(data), chunk)]
    span = chunk * width
    parents = [file_node(data[i : i + span], TINY_V1).cid for i in range(0, len(data), span)]
    return file_node(data, TINY_V1).cid, parents, leaves


def blocks_for_range(data: bytes, lo: int, hi: int) -> list[Cid]:
    """The minimal blocks of a two-level TINY_V1 file covering bytes [lo, hi), in DFS order."""
    root, parents, leaves = tiny_layout(data)
    assert len(parents) == 2, "the payload must make a two-level tree"
    chunk, width = TINY_V1.chunk_size, TINY_V1.max_links
    out = [root]
    for i in range(lo // chunk, (hi - 1) // chunk + 1):
        if i % width == 0 or i == lo // chunk:
            out.append(parents[i // width])
        out.append(leaves[i])
    return out


# -- fixtures ---------------------------------------------------------------------------------


@dataclass
class Published:
    """A model directory published to a backend and served by a trustless double."""

    server: TrustlessGatewayServer
    root: Cid
    files: dict[str, bytes]
    cids: dict[str, Cid]
    node: IpfsNode | None


@pytest.fixture(params=["memory", "node"])
async def published(request: pytest.FixtureRequest) -> AsyncIterator[Published]:
    files = _model_files()
    if request.param == "node":
        node: IpfsNode | None = request.getfixturevalue("ipfs_node")
        assert node is not None
        added = await node_add(
            node, {f"model/{k}": v for k, v in files.items()}, NODE_PARAMS["v1"][0]
        )
        root = added["model"]
        cids = {rel: added[f"model/{rel}"] for rel in files}
        server = TrustlessGatewayServer(NodeBackend(node.api))
    else:
        node = None
        backend = MemoryBackend()
        root = backend.add_files(files, CIDV1_DEFAULTS)
        cids = {rel: file_node(data, CIDV1_DEFAULTS).cid for rel, data in files.items()}
        server = TrustlessGatewayServer(backend)
    with server:
        yield Published(server, root, files, cids, node)


@pytest.fixture
def memory_server() -> Iterator[tuple[TrustlessGatewayServer, MemoryBackend, Cid]]:
    backend = MemoryBackend()
    root = backend.add_files(_model_files(), CIDV1_DEFAULTS)
    with TrustlessGatewayServer(backend) as server:
        yield server, backend, root


# -- serving a model published to the real node ---------------------------------------------


@pytest.mark.parametrize("version", ["v0", "v1"])
async def test_node_model_served_as_raw_blocks_and_cars(ipfs_node: IpfsNode, version: str) -> None:
    params, profile = NODE_PARAMS[version]
    files = _model_files()
    added = await node_add(ipfs_node, {f"model/{k}": v for k, v in files.items()}, params)
    root = added["model"]
    assert root.version == int(version[1])
    weights_cid = added["model/onnx/model.onnx"]
    weights = files["onnx/model.onnx"]
    backend = NodeBackend(ipfs_node.api)
    with TrustlessGatewayServer(backend) as server:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            # one block: the directory node, as the node stores it
            ans = await fetch(session, server.ipfs_url(root, format="raw"))
            assert ans.status == 200
            assert ans.headers["Content-Type"] == RAW
            assert ans.headers["X-Ipfs-Roots"] == str(root)
            assert ans.headers["Etag"] == f'"{root}.raw"'
            verify_block(root, ans.body)

            # every file, block by block through ?format=raw, re-hashed by DagReader
            get = raw_getter(session, server)
            for rel, data in files.items():
                assert await read_file(root, get, path=rel) == data, rel

            # a file's CAR by its CID: strict read (nothing extra), same blocks as dag/export
            ans = await fetch(session, server.ipfs_url(weights_cid, format="car"))
            assert ans.status == 200
            assert ans.headers["Content-Type"] == f"{CAR}; version=1; order=dfs; dups=n"
            assert await read_car_file(ans.body, weights_cid) == weights
            exported = await node_export(ipfs_node, weights_cid)
            assert set(car_cids(ans.body)) == set(car_cids(exported))
            assert len(car_cids(ans.body)) == 4  # root + 3 leaves

            # <dircid>/<path>: root is the requested CID, path blocks first, then the file
            url = server.ipfs_url(root, "onnx/model.onnx", format="car")
            ans = await fetch(session, url)
            assert ans.status == 200
            assert car_roots(ans.body) == (root,)
            onnx_dir = added["model/onnx"]
            assert car_cids(ans.body)[:3] == [root, onnx_dir, weights_cid]
            assert ans.headers["X-Ipfs-Roots"] == f"{root},{onnx_dir},{weights_cid}"
            assert await read_car_file(ans.body, root, path="onnx/model.onnx") == weights
            # streamed and verified as it arrives
            async with session.get(url) as resp:
                got = b"".join(
                    [
                        p
                        async for p in iter_car_stream_file(
                            chunks(resp.content), root, path="onnx/model.onnx"
                        )
                    ]
                )
            assert got == weights

            # a file name with spaces (percent-encoded in the URL)
            url = server.ipfs_url(root, "name with spaces.txt", format="car")
            ans = await fetch(session, url)
            assert await read_car_file(ans.body, root, path="name with spaces.txt") == b"spaces"

            # dag-scope=all of the directory: exactly the node's own export
            ans = await fetch(session, server.ipfs_url(root, format="car", dag_scope="all"))
            exported = await node_export(ipfs_node, root)
            assert sorted(map(str, car_cids(ans.body))) == sorted(map(str, car_cids(exported)))
            store = MemoryBlockStore.from_car(ans.body)
            for rel, data in files.items():
                assert await read_file(root, store, path=rel) == data
            assert store.unused() == []
        assert weights_cid == file_node(weights, profile).cid


async def test_node_backend_caches_and_reports_missing(ipfs_node: IpfsNode) -> None:
    added = await node_add(ipfs_node, {"cached.bin": random.randbytes(3000)}, {"cid-version": "1"})
    cid = added["cached.bin"]
    backend = NodeBackend(ipfs_node.api, timeout=1.0)
    absent = file_node(b"never added " + random.randbytes(16), CIDV1_DEFAULTS).cid
    with TrustlessGatewayServer(backend) as server:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            first = await fetch(session, server.ipfs_url(cid, format="raw"))
            calls = backend.rpc_calls
            second = await fetch(session, server.ipfs_url(cid, format="car"))
            assert first.status == second.status == 200
            assert backend.rpc_calls == calls == 1  # the second answer came from the cache
            assert car_cids(second.body) == [cid]
            began = time.monotonic()
            for url in (
                server.ipfs_url(absent, format="raw"),
                server.ipfs_url(absent, format="car"),
            ):
                ans = await fetch(session, url)
                assert ans.status == 404, ans.body
            assert time.monotonic() - began < 15  # bounded, though the node itself would hang


async def test_node_export_and_memory_backend_give_identical_cars(ipfs_node: IpfsNode) -> None:
    files = _model_files()
    added = await node_add(ipfs_node, {f"m/{k}": v for k, v in files.items()}, {"cid-version": "1"})
    root = added["m"]
    memory = MemoryBackend.from_car(await node_export(ipfs_node, root))
    assert memory.roots == (root,)
    with (
        TrustlessGatewayServer(NodeBackend(ipfs_node.api)) as on_node,
        TrustlessGatewayServer(memory) as in_memory,
    ):
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            cases: list[tuple[str, DagScope | None]] = [
                ("", "all"),
                ("onnx/model.onnx", None),
                ("onnx", "entity"),
            ]
            for path, scope in cases:
                a = await fetch(
                    session, on_node.ipfs_url(root, path, format="car", dag_scope=scope)
                )
                b = await fetch(
                    session, in_memory.ipfs_url(root, path, format="car", dag_scope=scope)
                )
                assert a.status == b.status == 200
                assert a.body == b.body, path  # deterministic DFS, whatever the backend


async def test_unreachable_node_is_a_502() -> None:
    with TrustlessGatewayServer(NodeBackend(unused_url())) as server:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            ans = await fetch(session, server.ipfs_url(UNRELATED_CID, format="raw"))
    assert ans.status == 502


# -- entity-bytes ------------------------------------------------------------------------------


RANGES = [
    ("0:0", 0, 1),
    ("1000:3000", 1000, 3001),
    ("178000:178300", 178000, 178301),  # across the two parents (leaf 173 | 174)
    ("-1500:*", TINY_SIZE - 1500, TINY_SIZE),
    ("499:-1000", 499, TINY_SIZE - 999),  # the last leaf is not needed
    ("0:*", 0, TINY_SIZE),
    (f"{TINY_SIZE - 1}:99999999", TINY_SIZE - 1, TINY_SIZE),  # clipped to the end
    ("-99999999:10", 0, 11),
]


@pytest.mark.parametrize("where", ["memory", "node"])
async def test_entity_bytes_send_only_the_blocks_of_the_range(
    request: pytest.FixtureRequest, where: str
) -> None:
    data = random.Random(5).randbytes(TINY_SIZE)
    root, parents, leaves = tiny_layout(data)
    assert len(leaves) == 200 and len(parents) == 2
    if where == "node":
        node: IpfsNode = request.getfixturevalue("ipfs_node")
        params = {"cid-version": "1", "chunker": "size-1024"}
        added = await node_add(node, {"tiny.bin": data}, params)
        assert added["tiny.bin"] == root  # the node built the DAG the importer predicts
        server = TrustlessGatewayServer(NodeBackend(node.api))
    else:
        backend = MemoryBackend()
        assert backend.add_file(data, TINY_V1) == root
        server = TrustlessGatewayServer(backend)
    with server:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            etags = set()
            for spec, lo, hi in RANGES:
                ans = await fetch(session, server.ipfs_url(root, format="car", entity_bytes=spec))
                assert ans.status == 200, (spec, ans.body)
                etags.add(ans.headers["Etag"])
                assert car_cids(ans.body) == blocks_for_range(data, lo, hi), spec
                store = MemoryBlockStore.from_car(ans.body)
                got = b""
                async for piece in DagReader(store).iter_file(root, offset=lo):
                    got += piece
                    if len(got) >= hi - lo:
                        break
                assert got[: hi - lo] == data[lo:hi], spec
                assert store.unused() == [], spec  # every block sent was needed
            assert len(etags) == len(RANGES)  # the Etag depends on the range

            # a zero-length range, or a resume at the very end: the root block only
            for spec in ("-100:-200", f"{TINY_SIZE}:*"):
                ans = await fetch(session, server.ipfs_url(root, format="car", entity_bytes=spec))
                assert car_cids(ans.body) == [root], spec
            # past the end, or malformed: 400
            for spec in (f"{TINY_SIZE + 1}:*", "10:5", "abc", "1-5"):
                ans = await fetch(session, server.ipfs_url(root, format="car", entity_bytes=spec))
                assert ans.status == 400, spec
            # entity-bytes is for files: on a raw block it still means that block
            ans = await fetch(session, server.ipfs_url(leaves[3], format="car", entity_bytes="5:9"))
            assert car_cids(ans.body) == [leaves[3]]


# -- dag-scope, dups, roots ---------------------------------------------------------------------


async def test_dag_scopes(published: Published) -> None:
    server, root, cids = published.server, published.root, published.cids
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:

        async def blocks(path: str, scope: DagScope | None) -> list[Cid]:
            ans = await fetch(session, server.ipfs_url(root, path, format="car", dag_scope=scope))
            assert ans.status == 200, ans.body
            return car_cids(ans.body)

        weights = cids["onnx/model.onnx"]
        everything = await blocks("", "all")
        assert everything == await blocks("", None)  # the spec's default scope is all
        assert everything[0] == root
        assert len(everything) == 3 + 4 + 3  # dirs root, onnx, deep; weights; 3 small files
        assert await blocks("", "entity") == [root]  # a directory entity: its own node
        assert await blocks("", "block") == [root]
        onnx = await blocks("onnx", "entity")
        assert onnx[0] == root and len(onnx) == 2
        assert await blocks("onnx/model.onnx", "block") == [root, onnx[1], weights]
        file_blocks = await blocks("onnx/model.onnx", "entity")
        assert file_blocks[:3] == [root, onnx[1], weights] and len(file_blocks) == 6
        assert await blocks("onnx/model.onnx", "all") == file_blocks
        assert set(await blocks("onnx", "all")) < set(everything)

        # unknown things
        for path, status in [("nope.txt", 404), ("config.json/deeper", 404)]:
            ans = await fetch(session, server.ipfs_url(root, path, format="car"))
            assert ans.status == status, path
        ans = await fetch(session, server.ipfs_url(root, format="car") + "&dag-scope=everything")
        assert ans.status == 400


async def test_dups_and_car_roots() -> None:
    backend = MemoryBackend()
    zeros = backend.add_file(bytes(4 * 1024), TINY_V1)  # 4 identical leaves
    leaf = file_node(bytes(1024), TINY_V1).cid
    root = backend.add_files({"w/zeros.bin": bytes(4 * 1024)}, TINY_V1)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        with TrustlessGatewayServer(backend) as server:
            ans = await fetch(session, server.ipfs_url(zeros, format="car"))
            assert ans.headers["Content-Type"].endswith("dups=n")
            assert car_cids(ans.body) == [zeros, leaf]
            assert await read_car_file(ans.body, zeros) == bytes(4096)
            for how in ({"Accept": f"{CAR}; version=1; order=dfs; dups=y"}, None):
                url = server.ipfs_url(zeros, format="car") + ("" if how else "&car-dups=y")
                ans = await fetch(session, url, headers=how)
                assert ans.headers["Content-Type"] == f"{CAR}; version=1; order=dfs; dups=y"
                assert car_cids(ans.body) == [zeros, leaf, leaf, leaf, leaf]
                async with session.get(url, headers=how) as resp:
                    # not strict: CarStreamBlocks serves repeats from its cache and would count
                    # the duplicates left in the stream as extra blocks
                    stream = iter_car_stream_file(chunks(resp.content), zeros, strict=False)
                    got = b"".join([p async for p in stream])
                assert got == bytes(4096)

        # kubo-style roots: the header names the path's resolved CID, path blocks still first
        with TrustlessGatewayServer(backend, car_roots="resolved") as server:
            ans = await fetch(session, server.ipfs_url(root, "w/zeros.bin", format="car"))
            assert car_roots(ans.body) == (zeros,)
            got_cids = car_cids(ans.body)
            assert got_cids[0] == root and got_cids[2:] == [zeros, leaf]
            store = MemoryBlockStore.from_car(ans.body)
            assert await read_file(root, store, path="w/zeros.bin") == bytes(4096)
            ans = await fetch(session, server.ipfs_url(zeros, format="car"))
            assert car_roots(ans.body) == (zeros,)


# -- negotiation, probe, headers ----------------------------------------------------------------


async def test_negotiation_probe_and_headers(
    memory_server: tuple[TrustlessGatewayServer, MemoryBackend, Cid],
) -> None:
    server, backend, root = memory_server
    base = f"{server.url}/ipfs/{root}"
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        # only trustless answers
        for headers in (None, {"Accept": "*/*"}, {"Accept": "text/html"}):
            ans = await fetch(session, base, headers=headers)
            assert ans.status == 406, headers
            assert b"trustless" in ans.body
        assert (await fetch(session, base + "?format=tar")).status == 406
        ans = await fetch(session, base, headers={"Accept": f"{CAR}; version=2"})
        assert ans.status == 406
        # Accept alone, q-values, format wins over Accept
        ans = await fetch(session, base, headers={"Accept": RAW})
        assert ans.status == 200 and ans.headers["Content-Type"] == RAW
        verify_block(root, ans.body)
        ans = await fetch(session, base, headers={"Accept": f"{RAW};q=0.5, {CAR};q=0.9"})
        assert ans.headers["Content-Type"].startswith(CAR)
        assert car_roots(ans.body) == (root,)
        ans = await fetch(session, base + "?format=raw", headers={"Accept": CAR})
        assert ans.headers["Content-Type"] == RAW
        ans = await fetch(session, base + "?format=car&car-version=2")
        assert ans.status == 406
        # headers real gateways send
        ans = await fetch(session, base + "?format=car")
        assert ans.headers["Content-Disposition"] == f'attachment; filename="{root}.car"'
        assert ans.headers["X-Content-Type-Options"] == "nosniff"
        assert "immutable" in ans.headers["Cache-Control"]
        assert ans.headers.get("Transfer-Encoding") == "chunked"  # streamed, no Content-Length
        etag = ans.headers["Etag"]
        assert etag.startswith(f'"{root}.car.')
        assert (
            await fetch(session, base + "?format=car", headers={"If-None-Match": etag})
        ).status == 304
        scoped = await fetch(session, base + "?format=car&dag-scope=block")
        assert scoped.headers["Etag"] != etag
        # HEAD: headers only
        ans = await fetch(session, base + "?format=raw", method="HEAD")
        assert ans.status == 200 and ans.body == b""
        assert int(ans.headers["Content-Length"]) == len(backend.blocks[root])
        ans = await fetch(session, base + "?format=car", method="HEAD")
        assert ans.status == 200 and ans.body == b""
        # the probe, with and without a format
        probe = f"{server.url}/ipfs/bafkqaaa"
        for url in (probe, probe + "?format=raw"):
            ans = await fetch(session, url)
            assert ans.status == 200 and ans.body == b""
        ans = await fetch(session, probe + "?format=car")
        assert car_roots(ans.body) == (Cid.parse("bafkqaaa"),) and car_cids(ans.body) == []
        assert (await fetch(session, probe, method="HEAD")).status == 200
        # unknown, invalid, wrong method
        for url in (
            server.ipfs_url(UNRELATED_CID, format="raw"),
            server.ipfs_url(UNRELATED_CID, format="car"),
        ):
            assert (await fetch(session, url)).status == 404
            assert (await fetch(session, url, method="HEAD")).status == 404
        assert (await fetch(session, f"{server.url}/ipfs/notacid?format=raw")).status == 400
        assert (await fetch(session, base + "?format=raw", method="POST")).status == 405
        assert (await fetch(session, f"{server.url}/other")).status == 404
        # a block added after the start is served at once
        added = backend.put_block(b"late block")
        assert (await fetch(session, server.ipfs_url(added, format="raw"))).body == b"late block"


async def test_counters(memory_server: tuple[TrustlessGatewayServer, MemoryBackend, Cid]) -> None:
    server, _, root = memory_server
    weights = file_node(_model_files()["onnx/model.onnx"], CIDV1_DEFAULTS).cid
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        car = await fetch(session, server.ipfs_url(root, "onnx/model.onnx", format="car"))
        raw = await fetch(session, server.ipfs_url(weights, format="raw"))
        await fetch(session, server.ipfs_url(weights, format="raw"), method="HEAD")
    assert server.request_count() == 3
    assert server.request_count(method="HEAD") == 1
    assert server.bytes_sent("onnx/model.onnx") == len(car.body)
    assert server.bytes_sent(str(weights)) == len(car.body) + len(raw.body)
    assert server.blocks_sent() == 6 + 1
    assert server.blocks_sent(weights) == 2
    assert server.served_blocks[:3] == [str(c) for c in car_cids(car.body)[:3]]
    server.reset_counters()
    assert server.blocks_sent() == 0 and server.request_count() == 0
    assert server.bytes_sent(str(weights)) == 0


# -- trustless faults, seen by our verifier -----------------------------------------------------


async def test_flip_block_byte(published: Published) -> None:
    server, root = published.server, published.root
    weights = published.files["onnx/model.onnx"]
    first_leaf = file_node(weights[:CHUNK], CIDV1_DEFAULTS).cid
    url = server.ipfs_url(root, "onnx/model.onnx", format="car")
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        good = await fetch(session, url)
        server.inject(flip_block_byte(), times=1)
        bad = await fetch(session, url)
        assert len(bad.body) == len(good.body)
        with pytest.raises(BadBlock, match=str(first_leaf)):
            await read_car_file(bad.body, root, path="onnx/model.onnx")
        broken = [b.cid for b in read_car(bad.body, verify=False) if not _valid(b.cid, b.data)]
        assert broken == [first_leaf]
        # streamed: the bad block is refused before any of its bytes are released
        server.inject(flip_block_byte(), times=1)
        pieces: list[bytes] = []
        async with session.get(url) as resp:
            with pytest.raises(BadBlock):
                async for piece in iter_car_stream_file(
                    chunks(resp.content), root, path="onnx/model.onnx"
                ):
                    pieces.append(piece)
        assert pieces == []
        # a chosen block, in a raw answer
        server.inject(flip_block_byte(first_leaf, at=0), times=1)
        raw = await fetch(session, server.ipfs_url(first_leaf, format="raw"))
        with pytest.raises(BadBlock):
            verify_block(first_leaf, raw.body)
        assert raw.body[1:] == weights[1:CHUNK] and raw.body[0] == weights[0] ^ 0xFF
        # times=1: the next answer is clean again
        assert (
            await read_car_file((await fetch(session, url)).body, root, path="onnx/model.onnx")
            == weights
        )


def _valid(cid: Cid, data: bytes) -> bool:
    try:
        verify_block(cid, data)
    except BadBlock:
        return False
    return True


async def test_car_cut_short(published: Published) -> None:
    server, root = published.server, published.root
    url = server.ipfs_url(root, "onnx/model.onnx", format="car")
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        server.inject(car_cut_short(after_blocks=4), times=1)
        ans = await fetch(session, url)  # a clean HTTP answer...
        assert ans.status == 200
        assert len(car_cids(ans.body)) == 4  # ...of a CAR missing its last two leaves
        with pytest.raises(BadBlock, match="missing"):
            await read_car_file(ans.body, root, path="onnx/model.onnx")
        server.inject(car_cut_short(after_blocks=4), times=1)
        async with session.get(url) as resp:  # streamed: resumable, not corrupt
            with pytest.raises(Truncated, match="missing"):
                async for _ in iter_car_stream_file(
                    chunks(resp.content), root, path="onnx/model.onnx"
                ):
                    pass
        server.inject(car_cut_short(after_blocks=3, mid_block=True), times=2)
        ans = await fetch(session, url)
        with pytest.raises(BadBlock, match="cut short"):
            list(read_car(ans.body))
        async with session.get(url) as resp:
            with pytest.raises(Truncated, match="cut short"):
                async for _ in iter_car_stream_file(
                    chunks(resp.content), root, path="onnx/model.onnx"
                ):
                    pass
        server.inject(car_cut_short(after_blocks=0), times=1)
        ans = await fetch(session, url)
        assert car_roots(ans.body) == (root,) and car_cids(ans.body) == []


async def test_extra_block(published: Published) -> None:
    server, root = published.server, published.root
    data = published.files["onnx/model.onnx"]
    url = server.ipfs_url(root, "onnx/model.onnx", format="car")
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        server.inject(extra_block(), path="onnx/model.onnx", times=3)
        ans = await fetch(session, url)
        assert car_cids(ans.body)[1] == UNRELATED_CID
        with pytest.raises(BadBlock, match="outside the requested DAG"):
            await read_car_file(ans.body, root, path="onnx/model.onnx")
        assert await read_car_file(ans.body, root, path="onnx/model.onnx", strict=False) == data
        async with session.get(url) as resp:
            with pytest.raises(BadBlock, match="outside the requested DAG"):
                async for _ in iter_car_stream_file(
                    chunks(resp.content), root, path="onnx/model.onnx"
                ):
                    pass
        # at the end, after the file is complete
        server.clear_faults()
        server.inject(extra_block(b"another", at=None), times=1)
        ans = await fetch(session, url)
        assert car_cids(ans.body)[-1] == file_node(b"another", CIDV1_DEFAULTS).cid
        with pytest.raises(BadBlock, match="outside the requested DAG"):
            await read_car_file(ans.body, root, path="onnx/model.onnx")
        # the path filter: other requests are untouched
        server.inject(extra_block(), path="config.json")
        ans = await fetch(session, url)
        assert await read_car_file(ans.body, root, path="onnx/model.onnx") == data


async def test_wrong_root(published: Published) -> None:
    server, root = published.server, published.root
    weights = published.cids["onnx/model.onnx"]
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        server.inject(wrong_root(), times=2)
        ans = await fetch(session, server.ipfs_url(root, "onnx/model.onnx", format="car"))
        assert car_roots(ans.body) == (UNRELATED_CID,)
        with pytest.raises(BadBlock, match="wrong root"):
            await read_car_file(ans.body, root, path="onnx/model.onnx")
        ans = await fetch(session, server.ipfs_url(weights, format="raw"))
        assert ans.body == UNRELATED_BLOCK
        with pytest.raises(BadBlock):
            verify_block(weights, ans.body)
        # another block of the same DAG: valid for its own CID, not for the one asked
        config = published.cids["config.json"]
        server.inject(wrong_root(config), times=1)
        ans = await fetch(session, server.ipfs_url(weights, format="raw"))
        verify_block(config, ans.body)
        with pytest.raises(BadBlock):
            verify_block(weights, ans.body)


# -- generic faults through inject ------------------------------------------------------------


async def test_generic_faults(
    memory_server: tuple[TrustlessGatewayServer, MemoryBackend, Cid],
) -> None:
    server, _, root = memory_server
    url = server.ipfs_url(root, "onnx/model.onnx", format="car")
    raw_url = server.ipfs_url(root, format="raw")
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        full = await fetch(session, url)
        server.inject(faults.status(503), times=1)
        assert (await fetch(session, url)).status == 503
        server.inject(faults.too_many_requests(2), times=1)
        ans = await fetch(session, raw_url)
        assert ans.status == 429 and ans.headers["Retry-After"] == "2"

        # the chunked CAR body cut mid-stream: an HTTP-level error, never a short "success"
        for fault in (faults.truncated(5000), faults.reset(5000)):
            server.inject(fault, times=1)
            with pytest.raises(aiohttp.ClientPayloadError):
                await fetch(session, url)
        server.inject(faults.stall(5000), times=1)
        short = aiohttp.ClientTimeout(total=5, sock_read=0.5)
        async with session.get(url, timeout=short) as resp:
            with pytest.raises(asyncio.TimeoutError):
                await resp.read()
        server.inject(faults.hang(), times=1)
        with pytest.raises(asyncio.TimeoutError):
            await fetch_with(session, raw_url, short)

        # flipped bytes: the CAR's first block no longer matches its CID
        server.inject(faults.wrong_bytes(), times=1)
        ans = await fetch(session, url)
        assert len(ans.body) == len(full.body) and ans.body != full.body
        with pytest.raises(BadBlock):
            list(read_car(ans.body))
        server.inject(faults.wrong_bytes(at=3), times=1)
        ans = await fetch(session, raw_url)
        with pytest.raises(BadBlock):
            verify_block(root, ans.body)
        # junk after the CAR
        server.inject(faults.oversize(64), times=1)
        ans = await fetch(session, url)
        assert ans.body.startswith(full.body) and len(ans.body) == len(full.body) + 64
        with pytest.raises(BadBlock):
            list(read_car(ans.body))
        # slow: still complete and valid
        server.inject(faults.slow(4 * 1024 * 1024), times=1)
        began = time.monotonic()
        ans = await fetch(session, url)
        assert ans.body == full.body and time.monotonic() - began > 0.1
        # nothing left injected
        assert (await fetch(session, url)).body == full.body


async def fetch_with(
    session: aiohttp.ClientSession, url: str, timeout: aiohttp.ClientTimeout
) -> bytes:
    async with session.get(url, timeout=timeout) as resp:
        return await resp.read()


# -- MemoryBackend ------------------------------------------------------------------------------


async def test_memory_backend_sources() -> None:
    files = _model_files()
    built = MemoryBackend()
    root = built.add_files(files, cid_version=0)
    assert root.version == 0 and root in built and str(root) in built
    # from a CAR of that DAG, and from a MemoryBlockStore
    with TrustlessGatewayServer(built) as server:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            car = (await fetch(session, server.ipfs_url(root, format="car"))).body
    from_car = MemoryBackend.from_car(car)
    assert from_car.roots == (root,) and len(from_car) == len(built)
    store = MemoryBlockStore.from_car(car)
    shared = MemoryBackend(store)
    assert len(shared) == len(built)
    with pytest.raises(KeyError):
        await shared(UNRELATED_CID)
    store.put(UNRELATED_CID, UNRELATED_BLOCK)  # shared with the store
    assert await shared(UNRELATED_CID) == UNRELATED_BLOCK
    with TrustlessGatewayServer(from_car) as server:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            for rel, data in files.items():
                ans = await fetch(session, server.ipfs_url(root, rel, format="car"))
                assert await read_car_file(ans.body, root, path=rel) == data
    # a corrupt block in the backend is never served as if it were good
    corrupt = MemoryBackend(dict(built.blocks))
    corrupt.put(root, b"not the directory")
    with TrustlessGatewayServer(corrupt) as server:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            assert (await fetch(session, server.ipfs_url(root, format="raw"))).status == 502


# -- rate caps and range counters ---------------------------------------------------------------

MB = 1_000_000
QUARTER = 4 * CHUNK  # 1 MiB: four 256 KiB leaves of CIDV1_DEFAULTS


@pytest.fixture
def big_file() -> Iterator[tuple[TrustlessGatewayServer, Cid, bytes]]:
    data = random.Random(11).randbytes(4 * QUARTER)
    backend = MemoryBackend()
    root = backend.add_file(data, CIDV1_DEFAULTS)
    with TrustlessGatewayServer(backend) as server:
        yield server, root, data


async def car_range(car: bytes, root: Cid, lo: int, length: int) -> bytes:
    """Bytes [lo, lo + length) of the file `root`, read from a CAR's blocks (hash-checked)."""
    got = b""
    async for piece in DagReader(MemoryBlockStore.from_car(car)).iter_file(root, offset=lo):
        got += piece
        if len(got) >= length:
            break
    return got[:length]


async def timed_car(session: aiohttp.ClientSession, url: str) -> tuple[bytes, float, float]:
    began = time.monotonic()
    async with session.get(url) as resp:
        assert resp.status == 200
        body = await resp.read()
    return body, began, time.monotonic()


async def test_caps_pace_entity_byte_cars(
    big_file: tuple[TrustlessGatewayServer, Cid, bytes],
) -> None:
    server, root, data = big_file
    cap = 2 * MB
    urls = [
        server.ipfs_url(root, format="car", entity_bytes=f"{lo}:{lo + QUARTER - 1}")
        for lo in range(0, len(data), QUARTER)
    ]
    server.limit(per_connection=cap)
    connector = aiohttp.TCPConnector(limit=8)
    async with aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session:
        got = await asyncio.gather(*(timed_car(session, url) for url in urls))
        for (body, began, ended), lo in zip(got, range(0, len(data), QUARTER), strict=True):
            assert await car_range(body, root, lo, QUARTER) == data[lo : lo + QUARTER]
            assert len(body) / (ended - began) <= 1.1 * cap  # each connection under its cap
        span = max(e for _, _, e in got) - min(b for _, b, _ in got)
        together = sum(len(b) for b, _, _ in got) / span
        assert 2.5 * cap <= together <= 4 * 1.1 * cap, together / cap
        assert server.range_request_count() == 4 and server.max_concurrent_bodies == 4
        ranges = sorted((r.start, r.end, r.ranged) for r in server.sent_ranges(str(root)))
        assert ranges == [(lo, lo + QUARTER, True) for lo in range(0, len(data), QUARTER)]
        assert sorted(r.sent for r in server.sent_ranges()) == sorted(len(b) for b, _, _ in got)

        # a total cap holds the sum; raw blocks obey it too
        server.limit(total=2 * cap)
        got = await asyncio.gather(*(timed_car(session, url) for url in urls[:2]))
        span = max(e for _, _, e in got) - min(b for _, b, _ in got)
        assert sum(len(b) for b, _, _ in got) / span <= 1.1 * 2 * cap
        leaf = file_node(data[:CHUNK], CIDV1_DEFAULTS).cid
        # Idle first: a bucket less than CATCH_UP s behind lets a sender catch up, which
        # a body this small would show as a burst above the cap.
        await asyncio.sleep(2 * CATCH_UP)
        block, began, ended = await timed_car(session, server.ipfs_url(leaf, format="raw"))
        assert block == data[:CHUNK] and len(block) / (ended - began) <= 1.1 * 2 * cap


async def test_wrong_bytes_at_a_file_offset_changes_raw_blocks_not_cars(
    memory_server: tuple[TrustlessGatewayServer, MemoryBackend, Cid],
) -> None:
    server, _, root = memory_server
    weights = _model_files()["onnx/model.onnx"]
    leaf = file_node(weights[:CHUNK], CIDV1_DEFAULTS).cid
    server.inject(faults.wrong_bytes(file_offset=10))
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        car = await fetch(session, server.ipfs_url(root, "onnx/model.onnx", format="car"))
        assert await read_car_file(car.body, root, path="onnx/model.onnx") == weights
        raw = (await fetch(session, server.ipfs_url(leaf, format="raw"))).body
        assert [i for i, (a, b) in enumerate(zip(raw, weights, strict=False)) if a != b] == [10]
        ranged = await fetch(
            session, server.ipfs_url(leaf, format="raw"), headers={"Range": "bytes=100-199"}
        )
        assert (ranged.status, ranged.body) == (206, weights[100:200])  # not the covering range
