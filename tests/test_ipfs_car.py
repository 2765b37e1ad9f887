"""Tests for CAR reading/writing and for DAG reads that must fail: bad, missing, extra, cut-off."""

from __future__ import annotations

import io
import random
from collections.abc import AsyncIterator

import pytest

from modelfetch.errors import BadBlock, Truncated
from modelfetch.ipfs import (
    Cid,
    DagReader,
    DirectoryBuilder,
    MemoryBlockStore,
    Profile,
    UnixFSFileBuilder,
    iter_car_stream_file,
    iter_file,
    read_car,
    read_car_file,
    read_file,
    write_car,
)
from modelfetch.ipfs.car import CarParser, encode_header
from modelfetch.ipfs.cid import DAG_PB, RAW, SHA2_256, make_cid
from modelfetch.ipfs.unixfs import (
    NodeType,
    PBLink,
    decode_pbnode,
    decode_unixfs,
    encode_pbnode,
    encode_unixfs,
)

SMALL = Profile("small", 1, True, 1000, 3)


def _file_dag(data: bytes, prof: Profile = SMALL) -> tuple[Cid, MemoryBlockStore, list[Cid]]:
    store = MemoryBlockStore()
    order: list[Cid] = []

    def put(cid: Cid, block: bytes) -> None:
        store.put(cid, block)
        order.append(cid)

    builder = UnixFSFileBuilder(prof, on_block=put)
    builder.update(data)
    return builder.finish_node().cid, store, order


def _dfs_car(root: Cid, store: MemoryBlockStore) -> bytes:
    """A CAR in the order a trustless gateway sends it (depth-first, parents first)."""
    blocks: list[tuple[Cid, bytes]] = []
    seen: set[Cid] = set()

    def visit(cid: Cid) -> None:
        if cid in seen:
            return
        seen.add(cid)
        data = store.blocks[cid]
        blocks.append((cid, data))
        if cid.codec == DAG_PB:
            for link in decode_pbnode(data).links:
                visit(link.cid)

    visit(root)
    return write_car([root], blocks)


DATA = random.Random(3).randbytes(12345)


def test_write_then_read_round_trip() -> None:
    root, store, _ = _file_dag(DATA)
    car = _dfs_car(root, store)
    reader = read_car(io.BytesIO(car))
    assert reader.roots == (root,)
    assert reader.header.version == 1
    assert {b.cid: b.data for b in reader} == store.blocks


def test_parser_accepts_any_feed_size() -> None:
    root, store, _ = _file_dag(DATA)
    car = _dfs_car(root, store)
    for step in (1, 2, 7, 100, 4096):
        parser = CarParser()
        got = []
        for i in range(0, len(car), step):
            got.extend(parser.feed(car[i : i + step]))
        parser.close()
        assert parser.roots == (root,)
        assert {b.cid: b.data for b in got} == store.blocks


def test_truncated_car_is_an_error() -> None:
    root, store, _ = _file_dag(DATA)
    car = _dfs_car(root, store)
    with pytest.raises(BadBlock, match="cut short"):
        list(read_car(car[:-10]))
    with pytest.raises(BadBlock, match="header"):
        list(read_car(car[:5]))
    with pytest.raises(BadBlock):
        list(read_car(b""))


def test_corrupt_block_in_car_is_an_error() -> None:
    root, store, _ = _file_dag(DATA)
    car = bytearray(_dfs_car(root, store))
    car[-1] ^= 0xFF
    with pytest.raises(BadBlock, match="hash to"):
        list(read_car(bytes(car)))
    assert len(list(read_car(bytes(car), verify=False))) == len(store.blocks)


def test_bad_headers() -> None:
    with pytest.raises(BadBlock, match="version"):
        list(read_car(bytes([0x0A]) + bytes.fromhex("a16776657273696f6e03")))
    with pytest.raises(BadBlock, match="DAG-CBOR"):
        list(read_car(b"\x02\xff\xff"))


def test_carv2_payload_is_read() -> None:
    root, store, _ = _file_dag(DATA)
    v1 = _dfs_car(root, store)
    pragma = bytes.fromhex("0aa16776657273696f6e02")
    offset = len(pragma) + 40 + 5  # a little padding before the payload
    header = bytes(16) + offset.to_bytes(8, "little") + len(v1).to_bytes(8, "little") + bytes(8)
    v2 = pragma + header + bytes(5) + v1 + b"index bytes we do not read"
    reader = read_car(v2)
    assert reader.roots == (root,)
    assert {b.cid: b.data for b in reader} == store.blocks
    for step in (1, 13):
        parser = CarParser()
        got = []
        for i in range(0, len(v2), step):
            got.extend(parser.feed(v2[i : i + step]))
        parser.close()
        assert len(got) == len(store.blocks)


async def test_read_car_file_checks_root_and_extra_blocks() -> None:
    root, store, _ = _file_dag(DATA)
    car = _dfs_car(root, store)
    assert await read_car_file(car) == DATA
    assert await read_car_file(car, root) == DATA
    assert await read_car_file(car, str(root)) == DATA
    other = make_cid(1, RAW, b"other")
    with pytest.raises(BadBlock, match="wrong root"):
        await read_car_file(car, other)
    extra = write_car([root], [*read_car(car), (other, b"other")])
    with pytest.raises(BadBlock, match="outside the requested DAG"):
        await read_car_file(extra)
    assert await read_car_file(extra, strict=False) == DATA
    # a CAR whose header names a root its blocks do not hold
    lying = write_car([other], list(read_car(car)))
    with pytest.raises(BadBlock, match="missing"):
        await read_car_file(lying)


async def _chunks(data: bytes, step: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), step):
        yield data[i : i + step]


@pytest.mark.parametrize("step", [1, 333, 1 << 20])
async def test_car_stream(step: int) -> None:
    root, store, _ = _file_dag(DATA)
    car = _dfs_car(root, store)
    got = b"".join([p async for p in iter_car_stream_file(_chunks(car, step), root)])
    assert got == DATA
    extra = write_car([root], [*read_car(car), (make_cid(1, RAW, b"x"), b"x")])
    with pytest.raises(BadBlock, match="outside"):
        [p async for p in iter_car_stream_file(_chunks(extra, step), root)]
    with pytest.raises(BadBlock, match="wrong root"):
        [p async for p in iter_car_stream_file(_chunks(car, step), make_cid(1, RAW, b"x"))]
    with pytest.raises(Truncated):  # resumable: the blocks that came were good
        [p async for p in iter_car_stream_file(_chunks(car[:-3], step), root)]


async def test_car_stream_out_of_order_and_repeated_leaves() -> None:
    zeros = bytes(10 * 1000)  # ten identical leaves: one block, linked ten times
    root, store, order = _file_dag(zeros)
    assert len(store.blocks) < 10
    car = write_car([root], [(c, store.blocks[c]) for c in order])  # leaves first
    got = b"".join([p async for p in iter_car_stream_file(_chunks(car, 64), root)])
    assert got == zeros


async def test_corrupt_block_from_a_getter_is_never_released() -> None:
    root, store, order = _file_dag(DATA)
    victim = order[1]
    store.blocks[victim] = b"x" * len(store.blocks[victim])
    got = bytearray()
    with pytest.raises(BadBlock, match=str(victim)):
        async for piece in iter_file(root, store):
            got += piece
    assert bytes(got) == DATA[:1000]  # only the leaf before it


async def test_getter_key_error_means_missing() -> None:
    root, store, _ = _file_dag(DATA)

    async def getter(cid: Cid) -> bytes:
        return dict(store.blocks)[cid] if cid == root else {}[cid]  # type: ignore[index]

    with pytest.raises(BadBlock, match="missing"):
        await read_file(root, getter)


def _pb_file(
    links: list[tuple[Cid, int]],
    sizes: list[int],
    filesize: int | None,
    inline: bytes | None = None,
) -> tuple[Cid, bytes]:
    block = encode_pbnode(
        [PBLink(c, "", t) for c, t in links],
        encode_unixfs(NodeType.FILE, data=inline, filesize=filesize, blocksizes=sizes),
    )
    return Cid(1, DAG_PB, SHA2_256, make_cid(1, DAG_PB, block).digest), block


async def test_cut_off_and_inconsistent_sizes_are_detected() -> None:
    a, b = b"a" * 100, b"b" * 50
    ca, cb = make_cid(1, RAW, a), make_cid(1, RAW, b)
    store = MemoryBlockStore([(ca, a), (cb, b)])
    good, block = _pb_file([(ca, 100), (cb, 50)], [100, 50], 150)
    store.put(good, block)
    assert await read_file(good, store) == a + b

    cases = {
        "parent says 60": _pb_file([(ca, 100), (cb, 50)], [100, 60], 160),
        "filesize 200": _pb_file([(ca, 100), (cb, 50)], [100, 50], 200),
        "2 links but 1 blocksizes": _pb_file([(ca, 100), (cb, 50)], [100], 100),
        "inline": _pb_file([], [], 10, inline=b"12345"),
    }
    for why, (cid, blk) in cases.items():
        store.put(cid, blk)
        with pytest.raises(BadBlock):
            await read_file(cid, store)
        assert why
    # a file node inside a file claiming a different size than its parent's blocksize
    inner, inner_block = _pb_file([(ca, 100)], [100], 100)
    store.put(inner, inner_block)
    outer, outer_block = _pb_file([(inner, 100 + len(inner_block))], [99], 99)
    store.put(outer, outer_block)
    with pytest.raises(BadBlock, match="parent says 99"):
        await read_file(outer, store)


async def test_inline_data_and_identity_cids() -> None:
    inline_cid = Cid(1, RAW, 0x00, b"inline!")
    d = DirectoryBuilder(cid_version=1)
    d.add("i.txt", (inline_cid, 7))
    store = MemoryBlockStore()
    dir_builder = DirectoryBuilder(cid_version=1, on_block=store.put)
    dir_builder.add("i.txt", (inline_cid, 7))
    root = dir_builder.finish_node().cid
    assert root == d.finish_node().cid
    assert await read_file(root, store, path="i.txt") == b"inline!"
    assert await read_file("bafkqaaa", store) == b""
    with_data, block = _pb_file([], [], 5, inline=b"hello")
    store.put(with_data, block)
    assert await read_file(with_data, store) == b"hello"
    assert b"".join([p async for p in iter_file(with_data, store, offset=3)]) == b"lo"


async def test_not_unixfs_and_not_a_file() -> None:
    store = MemoryBlockStore()
    cbor = Cid(1, 0x71, SHA2_256, make_cid(1, 0x71, b"\xa0").digest)
    store.put(cbor, b"\xa0")
    with pytest.raises(BadBlock, match="dag-cbor"):
        await read_file(cbor, store)
    junk = make_cid(1, DAG_PB, b"\xff\xff")
    store.put(junk, b"\xff\xff")
    with pytest.raises(BadBlock, match="not a valid UnixFS node"):
        await read_file(junk, store)
    d = DirectoryBuilder(cid_version=1, on_block=store.put)
    d.add_dir("sub")
    root = d.finish_node().cid
    with pytest.raises(BadBlock, match="directory, not a file"):
        await read_file(root, store, path="sub")


def test_unixfs_decoding_details() -> None:
    packed = encode_unixfs(NodeType.FILE, filesize=3) + b"\x22\x02\x01\x02"
    assert decode_unixfs(packed).blocksizes == (1, 2)
    with pytest.raises(ValueError):
        decode_unixfs(b"\x08\x09")  # unknown type
    with pytest.raises(ValueError):
        decode_pbnode(b"\x0a\x00\x0a\x00")  # two Data fields


async def test_reader_caches_repeated_blocks() -> None:
    zeros = bytes(30 * 1000)
    root, store, _ = _file_dag(zeros)
    calls = []

    async def getter(cid: Cid) -> bytes:
        calls.append(cid)
        return await store(cid)

    reader = DagReader(getter)
    assert b"".join([p async for p in reader.iter_file(root)]) == zeros
    assert len(calls) == len(set(calls))


def test_encode_header_is_dag_cbor() -> None:
    header = encode_header(["bafkqaaa"])
    assert read_car(header).roots == (Cid.parse("bafkqaaa"),)
