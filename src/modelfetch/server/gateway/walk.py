"""Which blocks a CAR answer carries: the path's, then the DAG by dag-scope and entity-bytes."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Final

from modelfetch.errors import BadBlock
from modelfetch.ipfs.blockstore import BlockGetter
from modelfetch.ipfs.cid import DAG_PB, RAW, Cid, verify_block
from modelfetch.ipfs.dagfile import DagReader
from modelfetch.ipfs.unixfs import NodeType, PBNode, UnixFSData, decode_pbnode, decode_unixfs

Blocks = AsyncGenerator[tuple[Cid, bytes], None]

SCOPES: Final = ("block", "entity", "all")
"""The dag-scope values a CAR request may give."""


def file_info(cid: Cid, data: bytes) -> tuple[str, PBNode | None, UnixFSData | None]:
    """Classify a block: ("file"|"hamt"|"other", node, unixfs)."""
    if cid.codec == RAW:
        return "file", None, None
    if cid.codec != DAG_PB:
        return "other", None, None
    try:
        pb = decode_pbnode(data)
        fs = decode_unixfs(pb.data) if pb.data is not None else None
    except ValueError:
        return "other", None, None
    if fs is None:
        return "other", pb, None
    if fs.type in (NodeType.FILE, NodeType.RAW):
        return "file", pb, fs
    if fs.type == NodeType.HAMT_SHARD:
        return "hamt", pb, fs
    return "other", pb, fs


def file_size(data: bytes, fs: UnixFSData | None) -> int:
    if fs is None:
        return len(data)
    return len(fs.data or b"") + sum(fs.blocksizes)


class Recorder:
    """A BlockGetter that logs the blocks fetched (the path blocks) and a corrupt one."""

    def __init__(self, backend: BlockGetter) -> None:
        self.backend = backend
        self.log: list[tuple[Cid, bytes]] = []
        self.corrupt: Cid | None = None

    async def __call__(self, cid: Cid) -> bytes:
        data = await self.backend(cid)  # KeyError: DagReader reports the block missing
        try:
            verify_block(cid, data)
        except BadBlock:
            self.corrupt = cid
            raise
        self.log.append((cid, data))
        return data


@dataclass(slots=True)
class Walk:
    reader: DagReader
    dups: bool
    seen: set[Cid] = field(default_factory=set)


def unique(blocks: list[tuple[Cid, bytes]]) -> list[tuple[Cid, bytes]]:
    seen: set[Cid] = set()
    out = []
    for cid, data in blocks:
        if cid not in seen:
            seen.add(cid)
            out.append((cid, data))
    return out


def _fresh(walk: Walk, cid: Cid) -> bool:
    """Whether to send `cid` now: never an identity CID, a repeat only with dups=y."""
    if cid.is_identity:
        return False
    if walk.dups:
        return True
    if cid in walk.seen:
        return False
    walk.seen.add(cid)
    return True


async def _walk_dag(walk: Walk, cid: Cid, mode: str, rng: tuple[int, int] | None) -> Blocks:
    """DFS, parents first: a file's blocks (those covering `rng` [lo, hi) if given), a HAMT's
    shards, or (mode "all") every block reachable through dag-pb links."""
    if not cid.is_identity and not walk.dups:
        if cid in walk.seen:
            return
        walk.seen.add(cid)
    data = await walk.reader.block(cid)
    if not cid.is_identity:
        yield cid, data
    if cid.codec != DAG_PB:
        return
    try:
        pb = decode_pbnode(data)
        fs = decode_unixfs(pb.data) if pb.data is not None and mode != "all" else None
    except ValueError:
        return
    if mode == "all":
        for link in pb.links:
            async for item in _walk_dag(walk, link.cid, mode, None):
                yield item
    elif mode == "hamt" and fs is not None and fs.type == NodeType.HAMT_SHARD:
        width = len(f"{(fs.fanout or 256) - 1:X}")
        for link in pb.links:
            if len(link.name or "") == width:  # a sub-shard; longer names are entries
                async for item in _walk_dag(walk, link.cid, mode, None):
                    yield item
    elif mode == "file" and fs is not None and fs.type in (NodeType.FILE, NodeType.RAW):
        pos = len(fs.data or b"")
        for link, size in zip(pb.links, fs.blocksizes, strict=False):
            if rng is None:
                async for item in _walk_dag(walk, link.cid, mode, None):
                    yield item
            elif pos < rng[1] and pos + size > rng[0]:
                sub = (max(0, rng[0] - pos), min(size, rng[1] - pos))
                async for item in _walk_dag(walk, link.cid, mode, sub):
                    yield item
            pos += size


async def car_blocks(
    walk: Walk,
    path_blocks: list[tuple[Cid, bytes]],
    terminal: Cid,
    terminal_block: bytes,
    scope: str,
    rng: tuple[int, int] | None,
) -> Blocks:
    """The blocks of a CAR answer: the path's, then the terminal's by `scope` (and `rng`)."""
    for cid, data in path_blocks:
        if _fresh(walk, cid):
            yield cid, data
    if scope == "block":
        if _fresh(walk, terminal):
            yield terminal, terminal_block
        return
    if scope == "all":
        mode = "all"
    else:
        kind, _, _ = file_info(terminal, terminal_block)
        mode = kind if kind in ("file", "hamt") else "block"
    if mode == "block":
        if _fresh(walk, terminal):
            yield terminal, terminal_block
        return
    async for item in _walk_dag(walk, terminal, mode, rng):
        yield item


__all__ = ["SCOPES", "Recorder", "Walk", "car_blocks", "file_info", "file_size", "unique"]
