"""Block indexes: every block of a file's DAG produced from the file, checked leaf by leaf."""

from __future__ import annotations

import base64
import random
from pathlib import Path

import pytest

from modelfetch.catalog import ModelSpec
from modelfetch.errors import BadBlock, HashMismatch
from modelfetch.ipfs import (
    CIDV1_DEFAULTS,
    UNIXFS_V0_2015,
    BlockIndex,
    Cid,
    DagReader,
    DirectoryIndex,
    IndexRecorder,
    LeafCheck,
    MemoryBlockStore,
    Profile,
    UnixFSFileBuilder,
    directory_node,
    fetch_index,
    index_file,
    leaf_check,
    read_file,
)
from modelfetch.ipfs.cid import verify_block
from modelfetch.store import Store

#: small chunks and narrow nodes: a few KiB make a DAG three levels deep
TINY_V0 = Profile("tiny-v0", 0, False, 256, 4)
TINY_V1 = Profile("tiny-v1", 1, True, 256, 4)
PROFILES = [TINY_V0, TINY_V1, UNIXFS_V0_2015, CIDV1_DEFAULTS]
SIZES = [0, 1, 256, 257, 4 * 256, 17 * 256 + 3]


def _build(data: bytes, profile: Profile) -> tuple[BlockIndex, MemoryBlockStore]:
    """The index the importer records, and (for comparison) every block it makes."""
    rec = IndexRecorder()
    store = MemoryBlockStore()
    b = UnixFSFileBuilder(profile, on_block=store.put, on_leaf=rec.on_leaf, on_node=rec.on_node)
    b.update(data)
    return rec.finish(b.finish_node().cid), store


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
@pytest.mark.parametrize("size", SIZES)
async def test_index_produces_every_block_from_the_file(profile: Profile, size: int) -> None:
    data = random.Random(size).randbytes(size)
    index, blocks = _build(data, profile)
    assert index.size == size
    assert set(index.cids()) == set(blocks.blocks)
    for cid, block in blocks.blocks.items():
        produced = index.read_block(cid, lambda off, n: data[off : off + n])
        assert produced == block
        verify_block(cid, produced)
    # the blocks in dag_order are the ones a verified read walks, in that order
    served = MemoryBlockStore(
        (c, index.read_block(c, lambda off, n: data[off : off + n])) for c in index.dag_order()
    )
    assert await read_file(index.root, served) == data
    log: list[Cid] = []

    async def get(cid: Cid) -> bytes:
        log.append(cid)
        return await served(cid)

    reader = DagReader(get)
    assert b"".join([p async for p in reader.iter_file(index.root)]) == data
    assert log == [c for c in index.dag_order() if not c.is_identity][: len(log)]


@pytest.mark.parametrize("profile", [TINY_V0, TINY_V1], ids=lambda p: p.name)
async def test_dag_order_of_a_range_is_what_a_ranged_read_needs(profile: Profile) -> None:
    data = random.Random(3).randbytes(40 * 256 + 9)
    index, blocks = _build(data, profile)
    for start, end in [(0, 1), (255, 257), (1000, 5000), (len(data) - 1, len(data))]:
        log: list[Cid] = []

        async def get(cid: Cid, log: list[Cid] = log) -> bytes:
            log.append(cid)
            return await blocks(cid)

        reader = DagReader(get)
        got = b"".join([p async for p in reader.iter_file(index.root, offset=start, end=end)])
        assert got == data[start:end]
        assert list(index.dag_order(start, end)) == log
        leaves = index.leaves_in(start, end)
        assert leaves[0].offset <= start < leaves[0].end
        assert leaves[-1].offset < end <= leaves[-1].end


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
async def test_walking_a_fetched_dag_gives_the_same_index_without_the_leaves(
    profile: Profile,
) -> None:
    data = random.Random(9).randbytes(30 * 256 + 1)
    index, blocks = _build(data, profile)
    asked: list[Cid] = []

    async def get(cid: Cid) -> bytes:
        asked.append(cid)
        return await blocks(cid)

    fetched = await fetch_index(get, index.root)
    assert fetched.leaves == index.leaves
    assert dict(fetched.nodes) == dict(index.nodes)
    assert set(asked) == (set(index.nodes) or {index.root})  # internal nodes only


async def test_a_corrupt_node_in_a_fetched_dag_is_refused() -> None:
    data = random.Random(1).randbytes(20 * 256)
    index, blocks = _build(data, TINY_V1)
    victim = next(c for c in index.nodes if c != index.root)
    blocks.blocks[victim] = blocks.blocks[victim][:-1] + b"\x00"
    with pytest.raises(BadBlock, match=str(victim)):
        await fetch_index(blocks, index.root)
    del blocks.blocks[victim]
    with pytest.raises(BadBlock, match="missing"):
        await fetch_index(blocks, index.root)


@pytest.mark.parametrize("profile", [TINY_V0, TINY_V1], ids=lambda p: p.name)
def test_leaf_check_finds_the_wrong_leaf_in_any_range(profile: Profile) -> None:
    data = random.Random(5).randbytes(12 * 256)
    index, _ = _build(data, profile)
    assert leaf_check(index, 0, data) == []
    assert leaf_check(index, 512, data[512:1536]) == []
    bad = bytearray(data)
    bad[700] ^= 1
    assert leaf_check(index, 0, bad) == [(512, 768)]
    assert leaf_check(index, 600, bad[600:2000]) == []  # its leaf starts before the range
    assert leaf_check(index, 512, bad[512:2048]) == [(512, 768)]
    assert leaf_check(index, 513, bad[513:2048]) == []  # the bad leaf is not wholly inside


@pytest.mark.parametrize("profile", [TINY_V0, TINY_V1, UNIXFS_V0_2015], ids=lambda p: p.name)
def test_leaf_check_stream_accepts_the_file_and_rejects_any_change(profile: Profile) -> None:
    data = random.Random(6).randbytes(9 * 256 + 100)
    index, _ = _build(data, profile)
    check = LeafCheck(index, name="f")
    for i in range(0, len(data), 77):
        check.update(data[i : i + 77])
    check.finish()
    bad = bytearray(data)
    bad[-1] ^= 0x80
    bad[3] ^= 0x01
    check = LeafCheck(index, name="f")
    check.update(bad)  # objects only at the end, naming where
    first, last = index.leaves[0], index.leaves[-1]
    expected = [(0, first.end), (last.offset, last.end)] if first != last else [(0, last.end)]
    assert check.bad == expected
    with pytest.raises(HashMismatch, match=f"bytes 0-{first.end:,}.* do not hash"):
        check.finish()
    short = LeafCheck(index, name="f")
    short.update(data[:512])
    with pytest.raises(HashMismatch, match="holds"):
        short.finish()
    long = LeafCheck(index)
    long.update(data + b"x")
    with pytest.raises(HashMismatch, match=f"{len(data) + 1:,} bytes"):
        long.finish()


def test_index_saved_and_loaded_only_for_the_same_file(tmp_path: Path) -> None:
    data = random.Random(2).randbytes(10 * 256)
    index, _ = _build(data, TINY_V0)
    where = tmp_path / "i.json"
    index.save(where, (1, 2, 3))
    back = BlockIndex.load(where, (1, 2, 3))
    assert back is not None and back.leaves == index.leaves and back.nodes == index.nodes
    assert BlockIndex.load(where, (1, 2, 4)) is None  # the file changed since
    text = where.read_text()
    node = next(iter(index.nodes))
    good = base64.b64encode(index.nodes[node]).decode()
    forged = base64.b64encode(index.nodes[node][:-1] + b"\x01").decode()
    where.write_text(text.replace(good, forged))
    assert BlockIndex.load(where) is None  # a tampered node is never loaded


def test_store_keeps_indexes_beside_the_stamps(tmp_path: Path) -> None:
    store = Store(tmp_path)
    model = ModelSpec(name="m", dir="m", files=("w.bin",))
    final = store.final_path(model, "w.bin")
    final.parent.mkdir(parents=True)
    data = random.Random(4).randbytes(5000)
    final.write_bytes(data)
    node, index = index_file(final, CIDV1_DEFAULTS)
    assert node.cid == index.root and node.filesize == 5000
    store.save_block_index(model, "w.bin", index)
    assert (
        store.block_index_path(model, "w.bin", index.root).parent
        == tmp_path / ".modelfetch" / "blockindex"
    )
    assert store.block_index_roots(model, "w.bin") == [str(index.root)]
    loaded = store.load_block_index(model, "w.bin", index.root)
    assert loaded is not None
    assert loaded.read_block_from(index.root, final) == data
    final.write_bytes(data[:-1] + b"!")  # rewritten: its old index is not used any more
    assert store.load_block_index(model, "w.bin", index.root) is None


def test_a_block_read_from_a_changed_file_is_refused(tmp_path: Path) -> None:
    data = random.Random(8).randbytes(3 * 256)
    index, _ = _build(data, TINY_V1)
    leaf = index.leaves[1]
    changed = bytearray(data)
    changed[leaf.offset] ^= 1
    with pytest.raises(BadBlock):
        index.read_block(leaf.cid, lambda off, n: bytes(changed[off : off + n]))


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_indexes_rebuild_the_directory_that_holds_them(profile: Profile) -> None:
    rng = random.Random(11)
    datas = {"a.bin": rng.randbytes(3000), "sub/b.bin": b"", "sub/c.txt": b"hello\n"}
    nodes, indexes = {}, {}
    for rel, data in datas.items():
        rec = IndexRecorder()
        b = UnixFSFileBuilder(profile, on_leaf=rec.on_leaf, on_node=rec.on_node)
        b.update(data)
        nodes[rel] = b.finish_node()
        indexes[rel] = rec.finish(nodes[rel].cid)
        assert indexes[rel].dag_node() == nodes[rel]  # same CID, cumulative size, file size
    tree = DirectoryIndex.build(indexes, profile)
    assert tree.root == directory_node(nodes, profile).cid
    assert tree.files == {rel: n.cid for rel, n in nodes.items()}
    assert len(tree.nodes) == 2  # the root and sub/
