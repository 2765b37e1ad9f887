"""Tests for modelfetch.ipfs.importer: UnixFS CIDs equal to `ipfs add --only-hash`."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from modelfetch.ipfs import (
    UNIXFS_V0_2015,
    UNIXFS_V1_2025,
    Cid,
    DagReader,
    DirectoryBuilder,
    MemoryBlockStore,
    Profile,
    UnixFSFileBuilder,
    cid_of_path,
    directory_cid,
    file_cid,
    file_node,
    file_nodes,
    get_profile,
    symlink_node,
)
from modelfetch.ipfs.cid import DAG_PB, RAW, SHA2_256
from modelfetch.ipfs.unixfs import NodeType, PBLink, encode_pbnode, encode_unixfs

KIB = 1024

# Values printed by kubo (its test/cli/add_test.go and the UnixFS spec examples).
KUBO_VECTORS = [
    (b"hello world", 0, "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD"),
    (b"hello world", 1, "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"),
    (b"hello world\n", 0, "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"),
    (b"hello world\n", 1, "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"),
    (b"", 0, "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"),
    # kubo's balanced builder makes a raw leaf for 0 bytes when leaves are raw (js-ipfs agrees).
    (b"", 1, "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"),
]


@pytest.mark.parametrize(("data", "version", "expected"), KUBO_VECTORS)
def test_kubo_vectors(data: bytes, version: int, expected: str) -> None:
    assert file_cid(data, cid_version=version) == expected


def test_cidv1_without_raw_leaves_matches_kubo() -> None:
    prof = Profile("v1-pb-leaves", 1, False, 262144, 174)
    assert file_cid(b"hello world", prof) == (
        "bafybeihykld7uyxzogax6vgyvag42y7464eywpf55gxi5qpoisibh3c5wa"
    )
    assert file_cid(b"", prof) == "bafybeif7ztnhq65lumvvtr4ekcwd2ifwgm3awq4zfr3srh462rwyinlb4y"


def test_profiles() -> None:
    assert get_profile(0) == UNIXFS_V0_2015
    assert get_profile(1).raw_leaves and get_profile(1).chunk_size == 256 * KIB
    assert get_profile(0, "unixfs-v1-2025") == UNIXFS_V1_2025
    assert (UNIXFS_V1_2025.chunk_size, UNIXFS_V1_2025.max_links) == (1024 * KIB, 1024)
    with pytest.raises(ValueError, match="unknown CID profile"):
        get_profile(0, "nope")
    with pytest.raises(ValueError):
        get_profile(2)
    with pytest.raises(ValueError, match="raw leaves need CIDv1"):
        Profile("bad", 0, True, 1024, 174)


# -- an independent port of kubo's balanced layout (boxo importer/balanced/builder.go) ----------


def _kubo_balanced(data: bytes, prof: Profile) -> str:
    """Recursive Layout/fillNodeRec as kubo writes it, with the generic encoders."""
    chunks = [data[i : i + prof.chunk_size] for i in range(0, len(data), prof.chunk_size)]
    state = {"next": 0}

    def done() -> bool:
        return state["next"] >= len(chunks)

    def cid_of(codec: int, block: bytes, version: int) -> Cid:
        return Cid(version, codec, SHA2_256, hashlib.sha256(block).digest())

    def leaf() -> tuple[Cid, int, int]:
        chunk = chunks[state["next"]]
        state["next"] += 1
        if prof.raw_leaves:
            return cid_of(RAW, chunk, 1), len(chunk), len(chunk)
        block = encode_pbnode((), encode_unixfs(NodeType.FILE, data=chunk, filesize=len(chunk)))
        return cid_of(DAG_PB, block, prof.cid_version), len(block), len(chunk)

    def parent(children: list[tuple[Cid, int, int]]) -> tuple[Cid, int, int]:
        sizes = [c[2] for c in children]
        block = encode_pbnode(
            [PBLink(c[0], "", c[1]) for c in children],
            encode_unixfs(NodeType.FILE, filesize=sum(sizes), blocksizes=sizes),
        )
        tsize = len(block) + sum(c[1] for c in children)
        return cid_of(DAG_PB, block, prof.cid_version), tsize, sum(sizes)

    def fill(children: list[tuple[Cid, int, int]], depth: int) -> tuple[Cid, int, int]:
        while len(children) < prof.max_links and not done():
            children.append(leaf() if depth == 1 else fill([], depth - 1))
        return parent(children)

    if done():
        return file_cid(b"", prof)
    root = leaf()
    depth = 1
    while not done():
        root = fill([root], depth)
        depth += 1
    return str(root[0])


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("width", [2, 3, 5])
def test_layout_equals_kubos_balanced_builder(version: int, width: int) -> None:
    prof = Profile("tiny", version, version == 1, 4, width)
    rng = random.Random(width * 10 + version)
    data = rng.randbytes(4 * (width**3 + 2))
    for n in sorted(
        {
            *range(0, 4 * (width + 3)),
            *(4 * width**k + d for k in (2, 3) for d in (-1, 0, 1)),
            len(data),
        }
    ):
        assert file_cid(data[:n], prof) == _kubo_balanced(data[:n], prof), n


def test_feeding_pattern_does_not_matter() -> None:
    rng = random.Random(7)
    data = rng.randbytes(3 * 262144 + 12345)
    expected = file_cid(data)
    for trial in range(5):
        builder = UnixFSFileBuilder()
        pos = 0
        while pos < len(data):
            step = rng.choice([1, 7, 4096, 65536, 262143, 262144, 262145, 1 << 20])
            builder.update(memoryview(data)[pos : pos + step])
            pos += step
        assert builder.size == len(data)
        assert builder.finish() == expected, trial
    builder = UnixFSFileBuilder()
    builder.update(b"")
    assert builder.finish() == file_cid(b"")


def test_update_after_finish_is_an_error() -> None:
    builder = UnixFSFileBuilder()
    builder.update(b"x")
    builder.finish()
    assert builder.finish() == file_cid(b"x")  # idempotent
    with pytest.raises(RuntimeError):
        builder.update(b"y")


def _structure(data: bytes, prof: Profile) -> tuple[str, MemoryBlockStore]:
    store = MemoryBlockStore()
    builder = UnixFSFileBuilder(prof, on_block=store.put)
    builder.update(data)
    return builder.finish(), store


@pytest.mark.parametrize("version", [0, 1])
async def test_chunk_boundaries_and_second_level(version: int) -> None:
    prof = get_profile(version)
    chunk = prof.chunk_size
    rng = random.Random(version)
    big = rng.randbytes(174 * chunk + 1)
    for n in (1, chunk - 1, chunk, chunk + 1, 174 * chunk, 174 * chunk + 1):
        cid, store = _structure(big[:n], prof)
        assert cid == file_cid(big[:n], prof)
        reader = DagReader(store)
        got = b"".join([p async for p in reader.iter_file(cid)])
        assert got == big[:n]
        root = Cid.parse(cid)
        if n <= chunk:  # one chunk: the root is the leaf itself
            assert root.codec == (RAW if version else DAG_PB)
            assert len(store.blocks) == 1
        else:
            node = await reader.node(root)
            assert not isinstance(node, bytes)
            links = node[0].links
            if n <= 174 * chunk:
                assert len(links) == -(-n // chunk)
            else:  # 175 leaves: a full 174-leaf node plus a node holding the last leaf
                assert len(links) == 2
                first = await reader.node(links[0].cid)
                second = await reader.node(links[1].cid)
                assert not isinstance(first, bytes) and not isinstance(second, bytes)
                assert len(first[0].links) == 174
                assert len(second[0].links) == 1
            assert sum(link.tsize or 0 for link in links) + len(store.blocks[root]) == sum(
                len(b) for b in store.blocks.values()
            )


async def test_unixfs_v1_2025_uses_1024_links() -> None:
    zeros = bytes(1 << 20)
    for chunks, root_links in ((1024, 1024), (1025, 2)):
        store = MemoryBlockStore()
        builder = UnixFSFileBuilder("unixfs-v1-2025", on_block=store.put)
        for _ in range(chunks):
            builder.update(zeros)
        cid = builder.finish_node().cid
        node = await DagReader(store).node(cid)
        assert not isinstance(node, bytes)
        assert len(node[0].links) == root_links
        assert node[1].filesize == chunks << 20


def test_directory_cid_nested_and_sorted() -> None:
    files = {
        "b.txt": file_node(b"b"),
        "a/z.bin": file_node(b"z" * 300000),
        "a/y/x.txt": file_node(b"x"),
        "B.txt": file_node(b"B"),
    }
    one = directory_cid(files)
    two = directory_cid(dict(reversed(list(files.items()))))
    assert one == two
    as_pairs = {p: (str(n.cid), n.size) for p, n in files.items()}
    assert directory_cid(as_pairs) == one
    # the same tree built by hand, level by level
    inner = DirectoryBuilder()
    inner.add("x.txt", files["a/y/x.txt"])
    a = DirectoryBuilder()
    a.add("z.bin", files["a/z.bin"])
    a.add("y", inner.finish_node())
    root = DirectoryBuilder()
    root.add("b.txt", files["b.txt"])
    root.add("B.txt", files["B.txt"])
    root.add("a", a.finish_node())
    assert root.finish() == one
    assert one.startswith("Qm")
    assert directory_cid(files, cid_version=1).startswith("bafybei")


def test_empty_directory_matches_kubo() -> None:
    assert DirectoryBuilder().finish() == "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
    assert DirectoryBuilder(cid_version=1).finish() == (
        "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"
    )


@pytest.mark.parametrize("bad", ["", "/abs", "a//b", "../x", "a/./b", "a\\b", "nul\0", "a/"])
def test_directory_rejects_unsafe_paths(bad: str) -> None:
    with pytest.raises(ValueError):
        DirectoryBuilder().add(bad, file_node(b""))


def test_directory_rejects_file_dir_conflicts_and_duplicates() -> None:
    d = DirectoryBuilder()
    d.add("a", file_node(b"1"))
    with pytest.raises(ValueError):
        d.add("a/b", file_node(b"2"))
    with pytest.raises(ValueError):
        d.add("a", file_node(b"3"))


def test_cid_of_path_file_dir_hidden_and_symlink(tmp_path: Path) -> None:
    root = tmp_path / "model"
    (root / "onnx").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "config.json").write_bytes(b"{}")
    weights = random.Random(1).randbytes(600000)
    (root / "onnx" / "model.onnx").write_bytes(weights)
    (root / ".manifests.json").write_bytes(b"hidden")
    os.symlink("config.json", root / "link.json")

    assert cid_of_path(root / "onnx" / "model.onnx") == file_cid(weights)
    assert cid_of_path(root / "onnx" / "model.onnx", cid_version=1) == file_cid(
        weights, cid_version=1
    )
    expected = DirectoryBuilder()
    expected.add("config.json", file_node(b"{}"))
    expected.add("onnx/model.onnx", file_node(weights))
    expected.add_dir("empty")
    expected.add("link.json", symlink_node("config.json"))
    assert cid_of_path(root) == expected.finish()

    with_hidden = DirectoryBuilder()
    with_hidden.add("config.json", file_node(b"{}"))
    with_hidden.add("onnx/model.onnx", file_node(weights))
    with_hidden.add_dir("empty")
    with_hidden.add("link.json", symlink_node("config.json"))
    with_hidden.add(".manifests.json", file_node(b"hidden"))
    assert cid_of_path(root, include_hidden=True) == with_hidden.finish()

    nodes = file_nodes(root)
    assert set(nodes) == {"config.json", "onnx/model.onnx"}
    assert nodes["onnx/model.onnx"].filesize == len(weights)
    assert nodes["onnx/model.onnx"] == file_node(weights)

    v2025 = cid_of_path(root, profile="unixfs-v1-2025")
    assert v2025.startswith("bafybei")
    assert v2025 != cid_of_path(root, cid_version=1)  # 600 kB: one 1 MiB chunk vs three


def test_cid_of_path_refuses_special_files(tmp_path: Path) -> None:
    fifo = tmp_path / "d" / "pipe"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        cid_of_path(tmp_path / "d")
