"""The IPFS code against real CARs from the IPFS gateway conformance suite (shared fixtures)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import fast_settings, leftovers
from modelfetch.catalog import IPFSRef, ModelSpec
from modelfetch.config import Settings
from modelfetch.engine import Fetcher, ModelResult
from modelfetch.errors import BadBlock, NoSuchFile
from modelfetch.ipfs import (
    CIDV1_DEFAULTS,
    UNIXFS_V0_2015,
    Cid,
    DagNode,
    DagReader,
    DirectoryBuilder,
    MemoryBlockStore,
    Profile,
    UnixFSFileBuilder,
    cid_of_path,
    fetch_index,
    file_node,
    iter_file,
    leaf_check,
    read_car,
    read_car_file,
    read_file,
    stat,
    symlink_node,
)
from modelfetch.ipfs.unixfs import NodeType
from modelfetch.records import Records
from modelfetch.store import Store
from modelfetch.testing import GatewayServer, TrustlessGatewayServer
from modelfetch.testing import trustless as tfaults
from modelfetch.testing.trustless import MemoryBackend

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "ipfs"
CONFORMANCE = FIXTURES / "gateway-conformance"
UNIXFS = CONFORMANCE / "fixtures" / "path_gateway_unixfs"
TRUSTLESS = CONFORMANCE / "fixtures" / "trustless_gateway_car"
TOOLING = CONFORMANCE / "tooling" / "car" / "_fixtures"

pytestmark = pytest.mark.skipif(
    not CONFORMANCE.is_dir(), reason=f"IPFS conformance fixtures not found at {CONFORMANCE}"
)

ALL_CARS = sorted(CONFORMANCE.rglob("*.car")) if CONFORMANCE.is_dir() else []

MULTIBLOCK = "bafybeigcisqd7m5nf3qmuvjdbakl5bdnh4ocrmacaqkpuh77qjvggmt2sa"
HELLO = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
ASCII = "bafkreifkam6ns4aoolg3wedr4uzrs3kvq66p4pecirz6y2vlrngla62mxm"
#: the 1026-byte multiblock.txt was cut in 256-byte raw leaves (CIDv1, balanced, 174 links)
TINY_CHUNKS = Profile("256-byte-chunks", 1, True, 256, 174)


def _store(path: Path) -> MemoryBlockStore:
    return MemoryBlockStore.from_car(path.read_bytes())


@pytest.mark.parametrize("car", ALL_CARS, ids=lambda p: p.name)
def test_every_fixture_car_parses_and_verifies(car: Path) -> None:
    with car.open("rb") as f:
        reader = read_car(f)
        blocks = list(reader)
    assert len(reader.roots) == 1
    assert blocks
    assert len({b.cid for b in blocks}) == len(blocks)


async def test_dir_with_files() -> None:
    store = _store(UNIXFS / "dir-with-files.car")
    root = store.roots[0]
    assert str(root) == "bafybeihchr7vmgjaasntayyatmp5sv6xza57iy2h4xj7g46bpjij6yhrmy"
    ascii_ = await read_file(root, store, path="ascii.txt")
    assert ascii_ == b"hello application/vnd.ipld.car\n"
    assert await read_file(root, store, path="ascii-copy.txt") == ascii_
    assert await read_file(root, store, path="hello.txt") == b"hello world\n"
    multiblock = await read_file(root, store, path="/multiblock.txt")
    assert len(multiblock) == 1026
    assert store.unused() == []

    entry = await stat(root, store, path="multiblock.txt")
    assert (str(entry.cid), entry.kind, entry.size) == (MULTIBLOCK, "file", 1026)
    assert (await stat(root, store)).kind == "directory"

    # our builders give back every CID of the fixture from the files' bytes
    nodes = {
        "ascii.txt": file_node(ascii_, cid_version=1),
        "ascii-copy.txt": file_node(ascii_, cid_version=1),
        "hello.txt": file_node(b"hello world\n", cid_version=1),
        "multiblock.txt": file_node(multiblock, TINY_CHUNKS),
    }
    assert str(nodes["hello.txt"].cid) == HELLO
    assert str(nodes["ascii.txt"].cid) == ASCII
    assert str(nodes["multiblock.txt"].cid) == MULTIBLOCK
    d = DirectoryBuilder(cid_version=1)
    for path, node in nodes.items():
        d.add(path, node)
    assert d.finish_node().cid == root


async def test_multiblock_read_from_every_offset() -> None:
    store = _store(UNIXFS / "dir-with-files.car")
    whole = await read_file(MULTIBLOCK, store)
    for offset in (0, 1, 255, 256, 257, 1000, 1024, 1025, 1026):
        reader = DagReader(store)
        pieces = [p async for p in reader.iter_file(MULTIBLOCK, offset=offset)]
        assert b"".join(pieces) == whole[offset:]
        # whole leaves before the offset are skipped, not fetched (resume by block)
        assert reader.blocks_fetched == 1 + (5 - offset // 256 if offset < 1026 else 0)
    with pytest.raises(ValueError, match="past the end"):
        [p async for p in iter_file(MULTIBLOCK, store, offset=1027)]


@pytest.mark.parametrize(
    ("car", "root", "files"),
    [
        (
            "subdir-with-mixed-block-files.car",
            "bafybeidh6k2vzukelqtrjsmd4p52cpmltd2ufqrdtdg6yigi73in672fwu",
            {
                "subdir/ascii.txt": ASCII,
                "subdir/hello.txt": HELLO,
                "subdir/multiblock.txt": MULTIBLOCK,
            },
        ),
        (
            "subdir-with-two-single-block-files.car",
            "bafybeietjm63oynimmv5yyqay33nui4y4wx6u3peezwetxgiwvfmelutzu",
            {"subdir/ascii.txt": ASCII, "subdir/hello.txt": HELLO},
        ),
    ],
)
async def test_nested_subdirectories(car: str, root: str, files: dict[str, str]) -> None:
    store = _store(TRUSTLESS / car)
    assert [str(r) for r in store.roots] == [root]
    d = DirectoryBuilder(cid_version=1)
    for path, cid in files.items():
        data = await read_file(root, store, path=path)
        prof = TINY_CHUNKS if cid == MULTIBLOCK else CIDV1_DEFAULTS
        node = file_node(data, prof)
        assert str(node.cid) == cid
        d.add(path, node)
    assert d.finish() == root
    assert store.unused() == []


async def test_gateway_raw_block_car() -> None:
    store = _store(CONFORMANCE / "fixtures" / "gateway-raw-block.car")
    data = await read_file(store.roots[0], store, path="dir/ascii.txt")
    assert data == b"hello application/vnd.ipld.raw\n"
    entry = await stat(store.roots[0], store, path="dir/ascii.txt")
    assert str(entry.cid) == "bafkreihhpc5y2pqvl5rbe5uuyhqjouybfs3rvlmisccgzue2kkt5zq6upq"
    with pytest.raises(NoSuchFile, match="no entry"):
        await read_file(store.roots[0], store, path="dir/missing.txt")
    with pytest.raises(NoSuchFile, match="not a directory"):
        await read_file(store.roots[0], store, path="dir/ascii.txt/deeper")


async def test_missing_block_fails_cleanly_naming_it() -> None:
    car = (TRUSTLESS / "file-3k-and-3-blocks-missing-block.car").read_bytes()
    store = MemoryBlockStore.from_car(car)
    root = "QmYhmPjhFjYFyaoiuNzYv8WGavpSRDwdHWe5B4M5du5Rtk"
    got = bytearray()
    with pytest.raises(BadBlock, match="QmSNLTo6Wv9dfroVaw7MFYjLqf9ho7PKrgsjdzYDtv8h1W"):
        async for piece in iter_file(root, store):
            got += piece
    assert len(got) == 1024  # the first leaf was verified and released, then the gap stopped it
    with pytest.raises(BadBlock, match="missing"):
        await read_car_file(car)
    # resuming past the missing leaf never asks for it
    tail = b"".join([p async for p in iter_file(root, store, offset=2048)])
    assert len(tail) == 1024
    top = await DagReader(store).node(Cid.parse(root))
    assert not isinstance(top, bytes)
    assert file_node(bytes(got), Profile("1k", 0, False, 1024, 174)).cid == top[0].links[0].cid


async def test_symlink_is_rejected_never_followed() -> None:
    store = _store(UNIXFS / "symlink.car")
    root = store.roots[0]
    assert await read_file(root, store, path="foo") == b"content\n"
    with pytest.raises(BadBlock, match="symlink"):
        await read_file(root, store, path="bar")
    with pytest.raises(BadBlock, match="symlink"):
        await read_file(root, store, path="bar/anything")
    assert (await stat(root, store, path="bar")).kind == "symlink"
    # kubo's encoding of the symlink and the directory, rebuilt
    d = DirectoryBuilder(UNIXFS_V0_2015)
    d.add("foo", file_node(b"content\n"))
    d.add("bar", symlink_node("foo"))
    assert d.finish_node().cid == root


async def test_percent_encoded_filename_is_a_literal_name() -> None:
    store = _store(UNIXFS / "dir-with-percent-encoded-filename.car")
    name = "Portugal%2C+España=Peninsula Ibérica.txt"
    data = await read_file(store.roots[0], store, path=name)
    assert data == b"hello from a percent encoded filename\n"
    with pytest.raises(NoSuchFile):
        await read_file(store.roots[0], store, path="Portugal, España=Peninsula Ibérica.txt")
    d = DirectoryBuilder(cid_version=1)
    d.add(name, file_node(data, cid_version=1))
    assert d.finish_node().cid == store.roots[0]


async def test_hamt_sharded_directory() -> None:
    store = _store(TRUSTLESS / "single-layer-hamt-with-multi-block-files.car")
    root = store.roots[0]
    top = await DagReader(store).node(root)
    assert not isinstance(top, bytes) and top[1].type == NodeType.HAMT_SHARD
    for i in (1, 2, 77, 500, 1000):
        entry = await stat(root, store, path=f"{i}.txt")
        assert (str(entry.cid), entry.size) == (MULTIBLOCK, 1026)
    assert (await stat(root, store)).kind == "hamt-directory"
    with pytest.raises(NoSuchFile, match=r"1001\.txt"):
        await stat(root, store, path="1001.txt")


async def test_hamt_lookup_fetches_only_the_path() -> None:
    store = _store(TRUSTLESS / "single-layer-hamt-with-multi-block-files.car")
    reader = DagReader(store)
    await reader.resolve(store.roots[0], "123.txt")
    assert reader.blocks_fetched <= 3  # root shard, maybe one sub-shard: never a scan


async def test_dag_car_from_ipfs_car_matches_our_directory_cids() -> None:
    car = (TOOLING / "dag.car").read_bytes()
    store = MemoryBlockStore.from_car(car)
    root = "bafybeidlbwbu73tbjr3atntjz4lq5ego5w2uyof35vvwcnheaftzi3rndu"
    assert [str(r) for r in store.roots] == [root]
    source = TOOLING / "dir"
    # ipfs-car: CIDv1, raw leaves, 1 MiB chunks; these files are one chunk either way, so
    # unixfs-v1-2025 and kubo's --cid-version=1 agree here (the link width is not exercised)
    assert cid_of_path(source, profile="unixfs-v1-2025") == root
    assert cid_of_path(source, cid_version=1) == root
    for rel in ("a-file.txt", "b-file.txt", "subdir/leaf.txt"):
        assert await read_file(root, store, path=rel) == (source / rel).read_bytes()
    assert store.unused() == []
    # and the blocks we would write are exactly the CAR's
    ours = MemoryBlockStore()
    d = DirectoryBuilder("unixfs-v1-2025", on_block=ours.put)
    for rel in ("a-file.txt", "b-file.txt", "subdir/leaf.txt"):
        b = UnixFSFileBuilder("unixfs-v1-2025", on_block=ours.put)
        b.update((source / rel).read_bytes())
        d.add(rel, b.finish_node())
    assert str(d.finish_node().cid) == root
    assert ours.blocks == store.blocks


def test_dagnode_reports_cumulative_size_like_the_fixture() -> None:
    store = _store(UNIXFS / "dir-with-files.car")
    total = sum(len(b) for b in store.blocks.values()) + 31  # ascii.txt is linked twice
    d = DirectoryBuilder(cid_version=1)
    for name, cid in (("ascii.txt", ASCII), ("ascii-copy.txt", ASCII), ("hello.txt", HELLO)):
        d.add(name, DagNode(Cid.parse(cid), len(store.blocks[Cid.parse(cid)])))
    sub = [b for c, b in store.blocks.items() if str(c) == MULTIBLOCK]
    leaves = 1026
    d.add("multiblock.txt", (MULTIBLOCK, len(sub[0]) + leaves))
    node = d.finish_node()
    assert node.cid == store.roots[0]
    assert node.size == total


# -- pulled through a loopback trustless gateway serving the fixture CARs ---------------------

HAMT_CAR = TRUSTLESS / "single-layer-hamt-with-multi-block-files.car"
HAMT_ROOT = "bafybeidbclfqleg2uojchspzd4bob56dqetqjsj27gy2cq3klkkgxtpn4i"
DIR_ROOT = "bafybeihchr7vmgjaasntayyatmp5sv6xza57iy2h4xj7g46bpjij6yhrmy"


def _pull_settings(home: Path, gateways: list[str], cid: str, files: list[str]) -> Settings:
    base = fast_settings(home, "http://127.0.0.1:9", gateways)
    spec = ModelSpec(name="fx", dir="org/fx", files=tuple(files), ipfs=IPFSRef(cid))
    return replace(base, order=("cache", "ipfs"), models={"fx": spec})


async def _pull(settings: Settings) -> ModelResult:
    async with Fetcher(settings) as fetcher:
        return await fetcher.pull_model("fx")


async def test_256_byte_chunks_pull_through_a_trustless_gateway_and_verify(
    tmp_path: Path,
) -> None:
    # multiblock.txt was cut in 256-byte chunks: no profile we know recomputes its CID, so
    # only the DAG can verify it (a CID recomputed with kubo's chunking rejected it before)
    backend = MemoryBackend.from_car((UNIXFS / "dir-with-files.car").read_bytes())
    files = ["multiblock.txt", "hello.txt", "ascii.txt"]
    with TrustlessGatewayServer(backend) as gateway:
        settings = _pull_settings(tmp_path / "m", [gateway.url], DIR_ROOT, files)
        result = await _pull(settings)
    assert result.ok, result.errors
    store = MemoryBlockStore.from_car((UNIXFS / "dir-with-files.car").read_bytes())
    model = settings.models["fx"]
    disk = Store(settings.models_dir)
    for rel in files:
        got = disk.final_path(model, rel).read_bytes()
        assert got == await read_file(DIR_ROOT, store, path=rel)
    assert len(disk.final_path(model, "multiblock.txt").read_bytes()) == 1026
    # the DAG that verified it is kept: every block can be produced again from the file
    index = disk.load_block_index(model, "multiblock.txt", MULTIBLOCK)
    assert index is not None and [leaf.length for leaf in index.leaves] == [256] * 4 + [2]
    final = disk.final_path(model, "multiblock.txt")
    for cid in index.cids():
        assert index.read_block_from(cid, final) == store.blocks[cid]
    assert leftovers(settings.models_dir) == []


async def test_files_behind_a_hamt_directory_pull_and_verify(tmp_path: Path) -> None:
    backend = MemoryBackend.from_car(HAMT_CAR.read_bytes())
    files = ["1.txt", "500.txt", "1000.txt"]
    with TrustlessGatewayServer(backend) as gateway:
        settings = _pull_settings(tmp_path / "m", [gateway.url], HAMT_ROOT, files)
        result = await _pull(settings)
        served = len(gateway.served_blocks)
    assert result.ok, result.errors
    expected = await read_file(MULTIBLOCK, MemoryBlockStore.from_car(HAMT_CAR.read_bytes()))
    for rel in files:
        assert (tmp_path / "m" / "org" / "fx" / rel).read_bytes() == expected
    assert served < 60, "resolving a name fetches the shards on its path, not all 237"


async def test_a_wrong_block_is_rejected_and_the_honest_gateway_used(tmp_path: Path) -> None:
    car = (UNIXFS / "dir-with-files.car").read_bytes()
    with (
        TrustlessGatewayServer(MemoryBackend.from_car(car)) as liar,
        TrustlessGatewayServer(MemoryBackend.from_car(car)) as honest,
    ):
        liar.inject(tfaults.flip_block_byte())
        settings = _pull_settings(
            tmp_path / "m", [liar.url, honest.url], DIR_ROOT, ["multiblock.txt"]
        )
        result = await _pull(replace(settings, concurrency=1))
        urls = liar.url, honest.url
    assert result.ok, result.errors
    assert {f.gateway for f in result.files} == {urls[1]}
    with Records(settings.records_path) as records:
        lies = [r for r in records.attempts() if r["gateway"] == urls[0]]
    assert [r["error_type"] for r in lies] == ["BadBlock"]


async def test_a_wrong_block_from_the_only_gateway_fails_cleanly(tmp_path: Path) -> None:
    car = (UNIXFS / "dir-with-files.car").read_bytes()
    with TrustlessGatewayServer(MemoryBackend.from_car(car)) as liar:
        liar.inject(tfaults.flip_block_byte())
        settings = _pull_settings(tmp_path / "m", [liar.url], DIR_ROOT, ["multiblock.txt"])
        result = await _pull(settings)
    assert not result.ok
    assert not (tmp_path / "m" / "org" / "fx" / "multiblock.txt").exists()
    assert "BadBlock" in str(result.errors)


async def test_path_gateway_bytes_are_checked_against_the_dag(tmp_path: Path) -> None:
    car = (UNIXFS / "dir-with-files.car").read_bytes()
    store = MemoryBlockStore.from_car(car)
    good = await read_file(DIR_ROOT, store, path="multiblock.txt")
    bad = bytearray(good)
    bad[300] ^= 1  # the second 256-byte leaf
    with (
        GatewayServer() as liar,
        GatewayServer() as plain,
        TrustlessGatewayServer(MemoryBackend.from_car(car)) as meta,
    ):
        liar.add_directory(DIR_ROOT, {"multiblock.txt": bytes(bad)})
        plain.add_directory(DIR_ROOT, {"multiblock.txt": good})
        gateways = [liar.url, plain.url, meta.url]
        settings = _pull_settings(tmp_path / "m", gateways, DIR_ROOT, ["multiblock.txt"])
        result = await _pull(replace(settings, concurrency=1))
        liar_url = liar.url
    assert result.ok, result.errors
    assert (tmp_path / "m" / "org" / "fx" / "multiblock.txt").read_bytes() == good
    with Records(settings.records_path) as records:
        rows = [r for r in records.attempts() if r["gateway"] == liar_url]
    lies = [r for r in rows if r["status"] == "error"]
    assert lies and lies[0]["error_type"] == "HashMismatch", rows
    assert "256-512" in lies[0]["error_message"] and "DAG" in lies[0]["error_message"]


async def test_a_cid_with_only_path_gateways_is_reported_as_unverifiable(
    tmp_path: Path,
) -> None:
    store = MemoryBlockStore.from_car((UNIXFS / "dir-with-files.car").read_bytes())
    good = await read_file(DIR_ROOT, store, path="multiblock.txt")
    with GatewayServer() as plain:
        plain.add_directory(DIR_ROOT, {"multiblock.txt": good})
        settings = _pull_settings(tmp_path / "m", [plain.url], DIR_ROOT, ["multiblock.txt"])
        result = await _pull(settings)
        asked, url = plain.request_count(), plain.url
    assert not result.ok
    (error,) = result.errors
    text = str(error)
    assert "no trustless gateway is configured" in text and url in text
    assert "give the model" not in text and DIR_ROOT in text
    assert not (tmp_path / "m" / "org" / "fx" / "multiblock.txt").exists()
    assert asked <= 1  # the probe only: no bytes fetched that could not be checked


def test_the_cli_names_the_skipped_ipfs_layer_and_why(tmp_path: Path) -> None:
    with GatewayServer() as plain:
        plain.add_directory(DIR_ROOT, {"hello.txt": b"hello world\n"})
        config = tmp_path / "c.toml"
        config.write_text(
            f'[ipfs]\ngateways = ["{plain.url}"]\ntimeout = 2\nretries = 1\npause = 0.05\n'
            '[models.fx]\ndir = "org/fx"\nfiles = ["hello.txt"]\n'
            f'ipfs = {{ cid = "{DIR_ROOT}" }}\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFETCH", "HF_"))}
        env.update(MODELFETCH_CONFIG=str(config), HF_HOME=str(tmp_path / "hf"))
        args = [sys.executable, "-m", "modelfetch", "--dir", str(tmp_path / "m"), "pull", "fx"]
        text = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        js = subprocess.run([*args, "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert text.returncode == 1 and "Traceback" not in text.stderr
    assert "ipfs: skipped:" in text.stderr and "no trustless gateway is configured" in text.stderr
    assert "give the model" not in text.stderr
    (error,) = json.loads(js.stdout)["errors"]
    skipped = [a for a in error["attempts"] if a["layer"] == "ipfs"]
    assert [a["error_type"] for a in skipped] == ["Skipped"]
    assert "no trustless gateway is configured" in skipped[0]["message"]


async def test_a_kubo_v0_dag_is_indexed_without_its_leaves() -> None:
    # kubo's CIDv0 file of three 1 KiB dag-pb leaves, the middle one missing from the CAR:
    # indexing needs the root only (the leaves are known by their links' Tsize)
    car = (TRUSTLESS / "file-3k-and-3-blocks-missing-block.car").read_bytes()
    store = MemoryBlockStore.from_car(car)
    root = "QmYhmPjhFjYFyaoiuNzYv8WGavpSRDwdHWe5B4M5du5Rtk"
    index = await fetch_index(store, root)
    assert [(leaf.offset, leaf.length, leaf.kind) for leaf in index.leaves] == [
        (0, 1024, "pb"),
        (1024, 1024, "pb"),
        (2048, 1024, "pb"),
    ]
    assert str(index.leaves[1].cid) == "QmSNLTo6Wv9dfroVaw7MFYjLqf9ho7PKrgsjdzYDtv8h1W"
    first = await anext(aiter(iter_file(root, store)))
    assert len(first) == 1024 and leaf_check(index, 0, first) == []
    last = b"".join([p async for p in iter_file(root, store, offset=2048)])
    assert leaf_check(index, 2048, last) == []
    assert leaf_check(index, 2048, last[:-1] + b"?") == [(2048, 3072)]
    assert index.tsize == sum(len(b) for b in store.blocks.values()) + 1035  # + the missing


async def test_the_dag_names_the_leaf_a_lying_origin_sent(tmp_path: Path) -> None:
    # A 3 MiB file known only by its CID, its ranges spread over two path gateways and the
    # trustless one; one path gateway flips a byte in the first body it sends. The file's
    # DAG says which 256 KiB leaf is wrong: only that leaf is fetched again to name the liar.
    import random

    from modelfetch.config import TransferSettings
    from modelfetch.testing import faults

    data = random.Random(12).randbytes(3 << 20)
    backend = MemoryBackend()
    root = str(backend.add_files({"w.bin": data}, CIDV1_DEFAULTS))
    with (
        GatewayServer() as liar,
        GatewayServer() as honest,
        TrustlessGatewayServer(backend) as meta,
    ):
        for gw in (liar, honest):
            gw.add_directory(root, {"w.bin": data})
        liar.inject(faults.wrong_bytes(), times=1)
        settings = _pull_settings(tmp_path / "m", [liar.url, honest.url, meta.url], root, ["w.bin"])
        many = TransferSettings(connections=6, min_segment=512 << 10, min_steal=256 << 10)
        result = await _pull(replace(settings, transfer=many))
        liar_url, lied = liar.url, liar.request_count()
    assert result.ok, result.errors
    assert (tmp_path / "m" / "org" / "fx" / "w.bin").read_bytes() == data
    with Records(settings.records_path) as records:
        rows = [r for r in records.attempts() if r["gateway"] == liar_url]
    named = [r["error_message"] for r in rows if r["status"] == "error"]
    assert lied and named, "the liar sent bytes and was named"

    assert "DAG" in named[0] and "the wrong bytes were at" in named[0]
    found = re.search(r"the wrong bytes were at ([\d,]+)-([\d,]+)", named[0])
    assert found is not None
    start, end = (int(g.replace(",", "")) for g in found.groups())
    assert 0 < end - start <= 256 << 10, named[0]  # within one leaf, not the liar's whole range
