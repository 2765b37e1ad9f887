"""UnixFS HAMT-sharded directories: resolve a name through shards, and build them as kubo does.

A sharded directory is a tree of dag-pb nodes with UnixFS `Type: HAMTShard`, `hashType`
murmur3-x64-64 (0x22), `fanout` (256 in kubo and js) and `Data` = a bitfield of the used
slots. The slot of a name at depth d is the d-th group of log2(fanout) bits of the 64-bit
murmur3 hash of the name, most significant first. A link named by the slot in upper-case hex
(`"1F"`) is a sub-shard; a link named by the slot followed by the entry name (`"1Fmodel.bin"`)
is the entry itself. Kubo shards a directory once its estimated size passes 256 KiB
(boxo's `HAMTShardingSize`; strictly above: a directory exactly at it stays basic, as
boxo's ipld/unixfs/io/directory.go says; older boxo used `>=`), estimated from
link names + CID lengths (`links`, the default) or, in the `unixfs-v1-2025` profile, from
the serialized block size (`block`). js-ipfs 0.66 (ipfs-unixfs-importer 12) decides by entry
count instead (`shard-split-threshold`, off unless its sharding experiment is on); the shards
it makes are the same blocks. modelfetch follows kubo.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Literal

from modelfetch.errors import BadBlock, NoSuchFile
from modelfetch.ipfs.cid import DAG_PB, Cid, make_cid
from modelfetch.ipfs.unixfs import (
    DIRECTORY_DATA,
    NodeType,
    PBLink,
    PBNode,
    UnixFSData,
    encode_pbnode,
    encode_unixfs,
)

#: The HAMT hash function every UnixFS implementation uses (multicodec murmur3-x64-64).
MURMUR3_X64_64: Final = 0x22
#: boxo's `HAMTShardingSize` (and js-ipfs's `shardSplitThresholdBytes`): shard above this.
HAMT_SHARDING_SIZE: Final = 256 * 1024
#: boxo's `DefaultShardWidth`: the fanout kubo and js-ipfs write.
DEFAULT_FANOUT: Final = 256

Estimation = Literal["links", "block"]
_M64: Final = (1 << 64) - 1

NodeGetter = Callable[[Cid], Awaitable[tuple[PBNode, UnixFSData] | bytes]]


def murmur3_x64_64(data: bytes) -> bytes:
    """The first 64 bits of MurmurHash3 x64 128 (seed 0), big-endian: UnixFS HAMT's hash.

    >>> murmur3_x64_64(b"").hex()
    '0000000000000000'
    """
    c1, c2 = 0x87C37B91114253D5, 0x4CF5AD432745937F

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (64 - r))) & _M64

    def fmix(k: int) -> int:
        k ^= k >> 33
        k = (k * 0xFF51AFD7ED558CCD) & _M64
        k ^= k >> 33
        k = (k * 0xC4CEB9FE1A85EC53) & _M64
        return k ^ (k >> 33)

    h1 = h2 = 0
    n = len(data)
    end = n - n % 16
    for i in range(0, end, 16):
        k1 = int.from_bytes(data[i : i + 8], "little")
        k2 = int.from_bytes(data[i + 8 : i + 16], "little")
        h1 ^= (rotl((k1 * c1) & _M64, 31) * c2) & _M64
        h1 = (rotl(h1, 27) + h2) & _M64
        h1 = (h1 * 5 + 0x52DCE729) & _M64
        h2 ^= (rotl((k2 * c2) & _M64, 33) * c1) & _M64
        h2 = (rotl(h2, 31) + h1) & _M64
        h2 = (h2 * 5 + 0x38495AB5) & _M64
    tail = data[end:]
    if len(tail) > 8:
        h2 ^= (rotl((int.from_bytes(tail[8:], "little") * c2) & _M64, 33) * c1) & _M64
    if tail:
        h1 ^= (rotl((int.from_bytes(tail[:8], "little") * c1) & _M64, 31) * c2) & _M64
    h1 ^= n
    h2 ^= n
    h1 = (h1 + h2) & _M64
    h2 = (h2 + h1) & _M64
    h1, h2 = fmix(h1), fmix(h2)
    h1 = (h1 + h2) & _M64
    return h1.to_bytes(8, "big")


def _bits(fanout: int) -> int:
    if fanout < 8 or fanout & (fanout - 1) or fanout > 1 << 16:
        raise ValueError(f"HAMT fanout must be a power of two from 8 to 65536, not {fanout}")
    return fanout.bit_length() - 1


def slot(key_hash: int, depth: int, fanout: int) -> int:
    """The slot of a name (its 64-bit hash as an int) in a shard at `depth` (root: 0)."""
    bits = _bits(fanout)
    if (depth + 1) * bits > 64:
        raise ValueError("HAMT deeper than its 64-bit hash allows")
    return (key_hash >> (64 - (depth + 1) * bits)) & (fanout - 1)


def slot_prefix(index: int, fanout: int) -> str:
    """A slot's link-name prefix: upper-case hex, padded to the width of `fanout - 1`."""
    return f"{index:0{len(f'{fanout - 1:X}')}X}"


# -- reading ----------------------------------------------------------------------------------


async def lookup(
    get_node: NodeGetter, cid: Cid, pb: PBNode, fs: UnixFSData, name: str, where: str
) -> Cid:
    """The CID of entry `name` in the sharded directory whose root node is (cid, pb, fs).

    Only the shards on the name's path are fetched. NoSuchFile if absent; BadBlock for a
    shard with an unsupported hash or fanout, or a slot link that is not a sub-shard.
    """
    key = int.from_bytes(murmur3_x64_64(name.encode("utf-8")), "big")
    depth = 0
    while True:
        fanout = fs.fanout or 0
        if fs.hash_type != MURMUR3_X64_64:
            raise BadBlock(f"HAMT shard {cid}: unsupported hash function {fs.hash_type}")
        try:
            index = slot(key, depth, fanout)
        except ValueError as exc:
            raise BadBlock(f"HAMT shard {cid}: {exc}") from None
        prefix = slot_prefix(index, fanout)
        child: Cid | None = None
        for link in pb.links:
            link_name = link.name or ""
            if link_name == prefix:
                child = link.cid
                break
            if link_name == prefix + name:
                return link.cid
        if child is None:
            raise NoSuchFile(f"{where} has no entry {name!r}")
        decoded = await get_node(child)
        if isinstance(decoded, bytes) or decoded[1].type != NodeType.HAMT_SHARD:
            raise BadBlock(f"HAMT shard {cid}: link {prefix} is not a sub-shard")
        cid, (pb, fs) = child, decoded
        depth += 1


# -- building ---------------------------------------------------------------------------------


def estimated_size(links: Sequence[PBLink], estimation: Estimation = "links") -> int:
    """What boxo compares with HAMT_SHARDING_SIZE for a basic directory holding `links`.

    `links`: sum of name bytes + binary CID bytes (boxo's default, and js-ipfs's for ASCII
    names); `block`: the exact size of the encoded directory block (IPIP-499, kubo's
    `unixfs-v1-2025` profile).
    """
    if estimation == "block":
        return len(encode_pbnode(links, DIRECTORY_DATA))
    return sum(len((link.name or "").encode("utf-8")) + len(bytes(link.cid)) for link in links)


def needs_sharding(links: Sequence[PBLink], estimation: Estimation = "links") -> bool:
    """Whether kubo (current boxo) stores a directory of these links as a HAMT."""
    return estimated_size(links, estimation) > HAMT_SHARDING_SIZE


def shard_data(used_slots: int, fanout: int) -> bytes:
    """The UnixFS Data of a shard: bitfield (go-bitfield bytes, leading zeros dropped), hash,
    fanout."""
    bitfield = used_slots.to_bytes((used_slots.bit_length() + 7) // 8, "big")
    return encode_unixfs(
        NodeType.HAMT_SHARD, data=bitfield, hash_type=MURMUR3_X64_64, fanout=fanout
    )


def build_shard(
    links: Sequence[PBLink],
    *,
    cid_version: int,
    fanout: int = DEFAULT_FANOUT,
    on_block: Callable[[Cid, bytes], None] | None = None,
) -> tuple[Cid, int]:
    """The root (CID, cumulative size) of the HAMT `ipfs add` makes of a directory's links.

    A slot holding one entry links it by `<slot><name>`; two or more go into a sub-shard at
    the next depth (what boxo's inserts produce for a directory only ever added to).
    `on_block(cid, block)` receives every shard block, deepest first.
    """
    names = [link.name or "" for link in links]
    if len(set(names)) != len(names):
        raise ValueError("a directory lists the same name twice")
    hashed = [
        (int.from_bytes(murmur3_x64_64(n.encode("utf-8")), "big"), link)
        for n, link in zip(names, links, strict=True)
    ]
    return _shard(hashed, 0, cid_version, fanout, on_block)


def _shard(
    entries: list[tuple[int, PBLink]],
    depth: int,
    cid_version: int,
    fanout: int,
    on_block: Callable[[Cid, bytes], None] | None,
) -> tuple[Cid, int]:
    buckets: dict[int, list[tuple[int, PBLink]]] = {}
    for key, link in entries:
        buckets.setdefault(slot(key, depth, fanout), []).append((key, link))
    out: list[PBLink] = []
    used = 0
    for index in sorted(buckets):
        used |= 1 << index
        group = buckets[index]
        prefix = slot_prefix(index, fanout)
        if len(group) == 1:
            link = group[0][1]
            out.append(PBLink(link.cid, prefix + (link.name or ""), link.tsize))
        else:
            cid, size = _shard(group, depth + 1, cid_version, fanout, on_block)
            out.append(PBLink(cid, prefix, size))
    block = encode_pbnode(out, shard_data(used, fanout))
    cid = make_cid(cid_version, DAG_PB, block)
    if on_block is not None:
        on_block(cid, block)
    return cid, len(block) + sum(link.tsize or 0 for link in out)


async def iter_entries(get_node: NodeGetter, cid: Cid, pb: PBNode, fs: UnixFSData) -> list[PBLink]:
    """Every entry of a sharded directory (fetching all its shards), names without prefixes."""
    found: list[PBLink] = []
    stack = [(cid, pb, fs)]
    while stack:
        here, node, data = stack.pop()
        width = len(slot_prefix((data.fanout or DEFAULT_FANOUT) - 1, data.fanout or DEFAULT_FANOUT))
        for link in node.links:
            name = link.name or ""
            if len(name) == width:
                decoded = await get_node(link.cid)
                if isinstance(decoded, bytes) or decoded[1].type != NodeType.HAMT_SHARD:
                    raise BadBlock(f"HAMT shard {here}: link {name} is not a sub-shard")
                stack.append((link.cid, *decoded))
            elif len(name) > width:
                found.append(PBLink(link.cid, name[width:], link.tsize))
            else:
                raise BadBlock(f"HAMT shard {here}: link name {name!r} is too short")
    return found
