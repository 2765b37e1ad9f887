"""Our CIDs, CAR and block reads against a real IPFS node (js-ipfs 0.66.1, kubo-compatible RPC)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest

from modelfetch.errors import BadBlock
from modelfetch.ipfs import (
    CIDV1_DEFAULTS,
    UNIXFS_V0_2015,
    UNIXFS_V1_2025,
    BlockGetter,
    Cid,
    DagReader,
    MemoryBlockStore,
    Profile,
    cid_of_path,
    directory_node,
    file_node,
    file_nodes,
    iter_car_stream_file,
    read_car_file,
    read_file,
)

if TYPE_CHECKING:
    from conftest_ipfs import IpfsNode

pytest_plugins = ["conftest_ipfs"]  # the ipfs_node fixture (tests/conftest_ipfs.py)

CHUNK = 256 * 1024
MIB = 1024 * 1024
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 174 * CHUNK + 1, 50 * MIB + 12345]

# add parameters -> our profile. js-ipfs cannot set the link width (always 174), so the 1 MiB
# chunker run equals unixfs-v1-2025 only below 174 MiB: true of every file here.
PROFILES: dict[str, tuple[dict[str, str], Profile]] = {
    "v0-defaults": ({}, UNIXFS_V0_2015),
    "cid-version-1": ({"cid-version": "1"}, CIDV1_DEFAULTS),
    "unixfs-v1-2025": (
        {"cid-version": "1", "raw-leaves": "true", "chunker": "size-1048576"},
        UNIXFS_V1_2025,
    ),
}

TIMEOUT = aiohttp.ClientTimeout(total=120, sock_read=60)


@pytest.fixture(scope="module")
def payloads() -> dict[int, bytes]:
    rng = random.Random(20250101)
    big = rng.randbytes(max(SIZES))
    return {n: big[:n] for n in SIZES}


async def _add(
    node: IpfsNode,
    files: Mapping[str, bytes],
    params: Mapping[str, str],
) -> dict[str, dict[str, object]]:
    form = aiohttp.FormData()  # it percent-encodes file names, as kubo's clients do
    for name, data in files.items():
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
    query = {"pin": "false", **params}
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.post(f"{node.api}/add", params=query, data=form) as resp,
    ):
        body = await resp.text()
        assert resp.status == 200, body
    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
    return {str(line["Name"]): line for line in lines}


@pytest.mark.parametrize("profile", list(PROFILES))
async def test_file_cids_equal_the_nodes(
    ipfs_node: IpfsNode,
    payloads: dict[int, bytes],
    profile: str,
) -> None:
    params, prof = PROFILES[profile]
    files = {f"file-{n}.bin": data for n, data in payloads.items()}
    added = await _add(ipfs_node, files, {**params, "only-hash": "true"})
    for name, data in files.items():
        ours = file_node(data, prof)
        theirs = added[name]
        assert Cid.parse(str(theirs["Hash"])) == ours.cid, (profile, len(data))
        assert theirs["Size"] == ours.size, (profile, len(data))


def _model_tree(root: Path) -> dict[str, bytes]:
    rng = random.Random(7)
    files = {
        "config.json": b'{"hidden_size": 8}\n',
        "onnx/model.onnx": rng.randbytes(3 * CHUNK + 17),
        "onnx/model.onnx_data": rng.randbytes(5 * MIB + 1),
        "onnx/ext/deep/tiny.bin": b"x",
        "tokenizer/vocab.txt": b"a\nb\nc\n",
        "empty.bin": b"",
        "Zeta.txt": b"upper-case names sort before lower-case",
        "name with spaces & ümlauts.txt": b"unicode",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


@pytest.mark.parametrize("profile", list(PROFILES))
async def test_directory_cid_equals_the_nodes(
    ipfs_node: IpfsNode,
    tmp_path: Path,
    profile: str,
) -> None:
    params, prof = PROFILES[profile]
    root = tmp_path / "model"
    files = _model_tree(root)
    added = await _add(
        ipfs_node, {f"model/{k}": v for k, v in files.items()}, {**params, "only-hash": "true"}
    )
    theirs = Cid.parse(str(added["model"]["Hash"]))
    assert Cid.parse(cid_of_path(root, profile=prof)) == theirs
    assert directory_node(file_nodes(root, prof), prof).cid == theirs
    assert directory_node(file_nodes(root, prof), prof).size == added["model"]["Size"]
    for rel in files:
        assert Cid.parse(str(added[f"model/{rel}"]["Hash"])) == file_nodes(root, prof)[rel].cid


def _block_getter(
    session: aiohttp.ClientSession,
    node: IpfsNode,
    *,
    timeout: float = 10.0,
    log: list[Cid] | None = None,
) -> BlockGetter:
    """Blocks over the RPC (`block/get`); a CID the node lacks would hang: always time out."""

    async def get(cid: Cid) -> bytes:
        if log is not None:
            log.append(cid)
        async with session.post(
            f"{node.api}/block/get",
            params={"arg": str(cid)},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            if resp.status != 200:
                raise BadBlock(f"block {cid}: node answered {resp.status}")
            return await resp.read()

    return get


@pytest.mark.parametrize("profile", ["v0-defaults", "cid-version-1"])
async def test_blocks_and_car_from_the_node_rebuild_the_files(
    ipfs_node: IpfsNode,
    tmp_path: Path,
    profile: str,
) -> None:
    params, prof = PROFILES[profile]
    root_dir = tmp_path / "model"
    files = _model_tree(root_dir)
    added = await _add(ipfs_node, {f"model/{k}": v for k, v in files.items()}, params)
    root = Cid.parse(str(added["model"]["Hash"]))
    assert Cid.parse(cid_of_path(root_dir, profile=prof)) == root
    weights = files["onnx/model.onnx_data"]

    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        # block by block over the RPC, every block re-hashed
        get = _block_getter(session, ipfs_node)
        for rel, data in files.items():
            assert await read_file(root, get, path=rel) == data, rel
        # resume by block: whole leaves before the offset are never fetched
        log: list[Cid] = []
        reader = DagReader(_block_getter(session, ipfs_node, log=log))
        offset = 4 * CHUNK + 5
        tail = b"".join(
            [p async for p in reader.iter_file(root, "onnx/model.onnx_data", offset=offset)]
        )
        assert tail == weights[offset:]
        leaves = -(-len(weights) // CHUNK)
        assert len(log) < 3 + 2 + leaves - 4  # path blocks + parents + the leaves it needed

        # the whole DAG as a CAR (dag/export), checked against its root, nothing extra
        async with session.post(f"{ipfs_node.api}/dag/export", params={"arg": str(root)}) as r:
            assert r.status == 200
            car = await r.read()
        store = MemoryBlockStore.from_car(car)
        assert store.roots == (root,)
        for rel, data in files.items():
            assert await read_file(root, store, path=rel) == data
        assert store.unused() == []

        # one file's DAG, streamed: blocks verified as the CAR arrives
        file_cid = Cid.parse(str(added["model/onnx/model.onnx_data"]["Hash"]))
        async with session.post(f"{ipfs_node.api}/dag/export", params={"arg": str(file_cid)}) as r:
            got = b"".join([p async for p in iter_car_stream_file(_chunks(r.content), file_cid)])
        assert got == weights
        async with session.post(f"{ipfs_node.api}/dag/export", params={"arg": str(file_cid)}) as r:
            assert await read_car_file(await r.read(), file_cid) == weights
        # a CAR for one file must not be accepted as another's
        other = file_node(b"not it", prof).cid
        with pytest.raises(BadBlock, match="wrong root"):
            await read_car_file(car, other)

        # the path gateway serves plain bytes (unverified: we hash them) and honours Range
        url = f"{ipfs_node.gateway}/ipfs/{root}/onnx/model.onnx"
        async with session.get(url) as r:
            assert r.status == 200
            body = await r.read()
        assert file_node(body, prof).cid == file_nodes(root_dir, prof)["onnx/model.onnx"].cid
        async with session.get(url, headers={"Range": "bytes=100-199"}) as r:
            assert r.status == 206
            assert await r.read() == files["onnx/model.onnx"][100:200]


async def _chunks(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    async for chunk in content.iter_chunked(64 * 1024):
        yield chunk


async def test_a_missing_block_fails_in_bounded_time(ipfs_node: IpfsNode) -> None:
    absent = file_node(b"never added anywhere " + random.randbytes(16), CIDV1_DEFAULTS).cid
    async with aiohttp.ClientSession() as session:
        get = _block_getter(session, ipfs_node, timeout=1.5)
        with pytest.raises((BadBlock, asyncio.TimeoutError)):
            await read_file(absent, get)
