"""HAMT-sharded directories: built exactly as kubo does (fixture CIDs), resolved by name."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest

from modelfetch.catalog import ModelSpec
from modelfetch.config import load_settings
from modelfetch.errors import BadBlock, NoSuchFile
from modelfetch.ipfs import (
    CIDV1_DEFAULTS,
    UNIXFS_V0_2015,
    UNIXFS_V1_2025,
    Cid,
    DagReader,
    DirectoryBuilder,
    DirectoryIndex,
    MemoryBlockStore,
    Profile,
    cid_of_path,
    directory_node,
    file_node,
    hamt,
    read_file,
)
from modelfetch.ipfs.publish import prepare
from modelfetch.ipfs.unixfs import (
    DIRECTORY_DATA,
    NodeType,
    PBLink,
    decode_pbnode,
    decode_unixfs,
    encode_pbnode,
    file_leaf_affixes,
)
from modelfetch.manifest import MANIFEST_NAME, generate
from modelfetch.store import Store

if TYPE_CHECKING:
    from conftest_ipfs import IpfsNode

pytest_plugins = ["conftest_ipfs"]  # the ipfs_node fixture (tests/conftest_ipfs.py)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "ipfs"
TRUSTLESS = FIXTURES / "gateway-conformance" / "fixtures" / "trustless_gateway_car"
HAMT_CAR = TRUSTLESS / "single-layer-hamt-with-multi-block-files.car"
HAMT_ROOT = "bafybeidbclfqleg2uojchspzd4bob56dqetqjsj27gy2cq3klkkgxtpn4i"
MULTIBLOCK = "bafybeigcisqd7m5nf3qmuvjdbakl5bdnh4ocrmacaqkpuh77qjvggmt2sa"
MULTIBLOCK_TSIZE = 245 + 1026  # its root block + the five raw leaves
needs_fixture = pytest.mark.skipif(not HAMT_CAR.is_file(), reason=f"{HAMT_CAR} not found")


def test_murmur3_matches_the_reference_vectors() -> None:
    # MurmurHash3_x64_128 seed 0, first 64 bits (the reference implementation's h1)
    assert hamt.murmur3_x64_64(b"").hex() == "0000000000000000"
    assert hamt.murmur3_x64_64(b"hello").hex() == "cbd8a7b341bd9b02"
    assert hamt.murmur3_x64_64(b"The quick brown fox jumps over the lazy dog").hex() == (
        "e34bbc7bbc071b6c"
    )


def test_slots_take_the_hash_bits_most_significant_first() -> None:
    key = 0xAB_CD_00_00_00_00_00_01
    assert hamt.slot(key, 0, 256) == 0xAB
    assert hamt.slot(key, 1, 256) == 0xCD
    assert hamt.slot(key, 7, 256) == 0x01
    assert hamt.slot(key, 0, 16) == 0xA
    with pytest.raises(ValueError, match="deeper"):
        hamt.slot(key, 8, 256)
    with pytest.raises(ValueError, match="power of two"):
        hamt.slot(key, 0, 100)
    assert hamt.slot_prefix(0xF, 256) == "0F"
    assert hamt.slot_prefix(0xF, 4096) == "00F"


@needs_fixture
def test_building_the_fixture_directory_gives_its_root_and_every_shard() -> None:
    theirs = MemoryBlockStore.from_car(HAMT_CAR.read_bytes())
    assert [str(r) for r in theirs.roots] == [HAMT_ROOT]
    entry = Cid.parse(MULTIBLOCK)
    links = [PBLink(entry, f"{i}.txt", MULTIBLOCK_TSIZE) for i in range(1, 1001)]
    ours = MemoryBlockStore()
    cid, size = hamt.build_shard(links, cid_version=1, on_block=ours.put)
    assert str(cid) == HAMT_ROOT
    shards = {c: b for c, b in theirs.blocks.items() if c.codec == 0x70 and c != entry}
    assert ours.blocks == shards  # all 237 shard blocks, byte for byte
    assert size == sum(len(b) for b in shards.values()) + 1000 * MULTIBLOCK_TSIZE


@needs_fixture
async def test_every_name_resolves_through_the_fixture_shards() -> None:
    store = MemoryBlockStore.from_car(HAMT_CAR.read_bytes())
    reader = DagReader(store)
    for i in [*range(1, 1001, 37), 1000]:
        assert str(await reader.resolve(HAMT_ROOT, f"{i}.txt")) == MULTIBLOCK
    for absent in ("0.txt", "1001.txt", "1.tx", ""):
        if absent:
            with pytest.raises(NoSuchFile):
                await reader.resolve(HAMT_ROOT, absent)
    data = await read_file(HAMT_ROOT, store, path="999.txt")
    assert len(data) == 1026
    top = decode_pbnode(store.blocks[Cid.parse(HAMT_ROOT)])
    entries = await hamt.iter_entries(
        reader.node, Cid.parse(HAMT_ROOT), top, decode_unixfs(top.data or b"")
    )
    assert sorted(e.name or "" for e in entries) == sorted(f"{i}.txt" for i in range(1, 1001))


async def test_a_shard_with_another_hash_function_is_refused() -> None:
    store = MemoryBlockStore()
    links = [PBLink(file_node(b"x").cid, f"f{i}", 9) for i in range(40)]
    cid, _ = hamt.build_shard(links, cid_version=0, fanout=8, on_block=store.put)
    bad = hamt.shard_data(1, 8).replace(b"\x28\x22", b"\x28\x11")  # hashType 0x11
    forged = encode_pbnode(decode_pbnode(store.blocks[cid]).links, bad)
    forged_cid = Cid(0, 0x70, 0x12, hashlib.sha256(forged).digest())
    store.put(forged_cid, forged)
    assert str(await DagReader(store).resolve(cid, "f3")) == str(links[3].cid)
    with pytest.raises(BadBlock, match="hash function"):
        await DagReader(store).resolve(forged_cid, "f3")


def _names(n: int, width: int) -> list[str]:
    return [f"{i:0{width}d}" for i in range(n)]


@pytest.mark.parametrize("profile", [UNIXFS_V0_2015, CIDV1_DEFAULTS])
def test_links_estimate_shards_just_above_256_kib(profile: Profile) -> None:
    node = file_node(b"same", profile)
    cid_len = len(bytes(node.cid))
    # names of 100 bytes: n entries estimate to n * (100 + cid_len)
    at = hamt.HAMT_SHARDING_SIZE // (100 + cid_len)
    exact = [PBLink(node.cid, name, node.size) for name in _names(at, 100)]
    pad = hamt.HAMT_SHARDING_SIZE - hamt.estimated_size(exact)
    assert 0 <= pad < 100 + cid_len
    if pad:  # one shorter name brings the estimate to exactly 256 KiB: still a basic directory
        exact.append(PBLink(node.cid, "x" * (pad - cid_len), node.size))
    assert hamt.estimated_size(exact) == hamt.HAMT_SHARDING_SIZE
    basic = directory_node({link.name or "": node for link in exact}, profile)
    assert basic.cid == _basic_cid(exact, profile)
    over = [*exact, PBLink(node.cid, "y", node.size)]
    sharded = directory_node({link.name or "": node for link in over}, profile)
    assert sharded.cid == hamt.build_shard(over, cid_version=profile.cid_version)[0]


def test_block_estimate_of_the_2025_profile_counts_the_whole_block() -> None:
    node = file_node(b"same", UNIXFS_V1_2025)
    links = [PBLink(node.cid, name, node.size) for name in _names(4000, 24)]
    # links estimate: 4000 * (24 + 36) = 240,000 (< 256 KiB); the block is bigger than 256 KiB
    assert hamt.estimated_size(links, "links") < hamt.HAMT_SHARDING_SIZE
    assert hamt.estimated_size(links, "block") > hamt.HAMT_SHARDING_SIZE
    files = {link.name or "": node for link in links}
    assert directory_node(files, UNIXFS_V1_2025).cid == hamt.build_shard(links, cid_version=1)[0]
    assert directory_node(files, CIDV1_DEFAULTS).cid == _basic_cid(links, CIDV1_DEFAULTS)


def test_big_directory_on_disk_is_sharded_and_readable(tmp_path: Path) -> None:
    root = tmp_path / "many"
    root.mkdir()
    for name in _names(1200, 200):  # 1200 x (200 + 34) > 256 KiB
        (root / name).write_bytes(name.encode())
    store = MemoryBlockStore()
    d = DirectoryBuilder(UNIXFS_V0_2015, on_block=store.put)
    for name in _names(1200, 200):
        node = file_node(name.encode())
        d.add(name, node)
        store.put(node.cid, _leaf_block(name.encode()))
    top = d.finish_node()
    assert cid_of_path(root) == str(top.cid)
    assert decode_unixfs(decode_pbnode(store.blocks[top.cid]).data or b"").type == (
        NodeType.HAMT_SHARD
    )


async def test_nested_big_directory_resolves(tmp_path: Path) -> None:
    store = MemoryBlockStore()
    d = DirectoryBuilder(CIDV1_DEFAULTS, on_block=store.put)
    for name in _names(3000, 60):
        node = file_node(name.encode(), CIDV1_DEFAULTS)
        store.put(node.cid, name.encode())
        d.add(f"weights/{name}", node)
    root = d.finish_node().cid
    reader = DagReader(store)
    name = _names(3000, 60)[1234]
    assert await read_file(root, store, path=f"weights/{name}") == name.encode()
    await reader.resolve(root, f"weights/{name}")
    assert reader.blocks_fetched <= 4  # root dir, the shard, maybe a sub-shard: never a scan


def _leaf_block(data: bytes) -> bytes:
    prefix, suffix = file_leaf_affixes(len(data))
    return prefix + data + suffix


def _basic_cid(links: list[PBLink], profile: Profile) -> Cid:
    ordered = sorted(links, key=lambda link: (link.name or "").encode())
    block = encode_pbnode(ordered, DIRECTORY_DATA)
    return Cid(profile.cid_version, 0x70, 0x12, hashlib.sha256(block).digest())


# -- against a real node (js-ipfs 0.66.1; see tests/conftest_ipfs.py) ----------------------------
#
# js-ipfs shards by entry count, not size: a directory of >= `shard-split-threshold` entries
# (1000 with its sharding experiment on, never by default), where kubo shards by estimated size
# (> 256 KiB). modelfetch follows kubo. With enough long names both agree that a directory is
# sharded, and then the shards must be the same blocks.

NODE_PROFILES: dict[str, tuple[dict[str, str], Profile]] = {
    "v0-defaults": ({}, UNIXFS_V0_2015),
    "cid-version-1": ({"cid-version": "1"}, CIDV1_DEFAULTS),
    "unixfs-v1-2025": (
        {"cid-version": "1", "raw-leaves": "true", "chunker": "size-1048576"},
        UNIXFS_V1_2025,
    ),
}


async def _node_add(
    node: IpfsNode, files: dict[str, bytes], params: dict[str, str]
) -> dict[str, str]:
    form = aiohttp.FormData()
    for name, data in files.items():
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
    query = {"pin": "false", "only-hash": "true", **params}
    timeout = aiohttp.ClientTimeout(total=300)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(f"{node.api}/add", params=query, data=form) as resp,
    ):
        body = await resp.text()
        assert resp.status == 200, body
    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
    return {str(line["Name"]): str(line["Hash"]) for line in lines}


BIG_NAMES = _names(1200, 200)
CID_ARGS = {
    "v0-defaults": [],
    "cid-version-1": ["--cid-version", "1"],
    "unixfs-v1-2025": ["--profile", "unixfs-v1-2025"],
}


def _big_tree(root: Path) -> dict[str, bytes]:
    """1200 small files, 200-byte names: ~280 KiB of links (kubo shards), >= 1000 (js too)."""
    files = {f"weights/{name}": name.encode()[-9:] for name in BIG_NAMES}
    files["config.json"] = b"{}"
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


async def test_js_ipfs_does_not_shard_by_size_as_kubo_does(ipfs_node: IpfsNode) -> None:
    # 900 names of 300 bytes: ~301 KiB of links, so kubo shards; fewer than 1000 entries, so
    # js-ipfs keeps a basic directory (its threshold counts entries). We give kubo's CID.
    files = {f"d/{name}": b"x" for name in _names(900, 300)}
    added = await _node_add(ipfs_node, files, {"shard-split-threshold": "1000"})
    links = [PBLink(file_node(b"x").cid, n[2:], file_node(b"x").size) for n in files]
    assert hamt.needs_sharding(links)
    assert Cid.parse(added["d"]) == _basic_cid(links, UNIXFS_V0_2015)
    ours = directory_node({n[2:]: file_node(b"x") for n in files}, UNIXFS_V0_2015)
    assert ours.cid == hamt.build_shard(links, cid_version=0)[0] != Cid.parse(added["d"])


@pytest.mark.parametrize("profile", ["v0-defaults", "unixfs-v1-2025"])
async def test_cid_and_publish_of_a_big_directory_equal_the_nodes(
    ipfs_node: IpfsNode, tmp_path: Path, profile: str
) -> None:
    params, prof = NODE_PROFILES[profile]
    home = tmp_path / "models"
    root = home / "org" / "big"
    files = _big_tree(root)
    added = await _node_add(
        ipfs_node,
        {f"big/{k}": v for k, v in files.items()},
        {**params, "shard-split-threshold": "1000"},
    )
    theirs = Cid.parse(added["big"])
    # `modelfetch cid DIR`
    proc = subprocess.run(
        [sys.executable, "-m", "modelfetch", "cid", str(root), *CID_ARGS[profile]],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert Cid.parse(proc.stdout.split()[0]) == theirs
    # publish's local CID, and the block indexes it keeps for serving the model
    generate(root, "big", home / MANIFEST_NAME)
    settings = load_settings(models_dir=home, env={})
    spec = ModelSpec(name="big", dir="org/big", files=tuple(files))
    settings = replace(settings, models={"big": spec})
    local = await prepare(settings, "big", profile=prof)
    assert local.root.cid == theirs
    assert local.files["config.json"].cid == Cid.parse(added["big/config.json"])
    weights = {p[len("weights/") :]: n for p, n in local.files.items() if "/" in p}
    assert directory_node(weights, prof).cid == Cid.parse(added["big/weights"])
    store = Store(home)
    tree = DirectoryIndex.load(store.directory_index_path(spec, theirs))
    assert tree is not None and tree.root == theirs and len(tree.nodes) > 2  # dir + shards
    shard_store = MemoryBlockStore(tree.nodes.items())
    for rel in ("config.json", "weights/" + BIG_NAMES[-1]):
        index = store.load_block_index(spec, rel, tree.files[rel])
        assert index is not None
        for cid in index.cids():
            shard_store.put(cid, index.read_block_from(cid, root / rel))
        assert await read_file(theirs, shard_store, path=rel) == files[rel]
