"""Where each block of a file's UnixFS DAG lies in the file: serve and check blocks, no copy.

A `BlockIndex` is one file's DAG as `ipfs add` (or whoever made the CID) cut it: the leaves
as (cid, offset, length) in the file, and the internal nodes' encoded bytes (small: about
one 8 KiB node per 174 leaves). With the file's bytes it produces any block of the DAG; the
leaves' CIDs check any byte range of the file from any origin (`leaf_check`, `LeafCheck`).

It is made two ways: while the CID is computed from the bytes (`IndexRecorder`, fed by the
importer's `on_leaf`/`on_node`), or by walking a fetched DAG (`fetch_index`: every internal
node fetched and hash-checked against its CID from the root down, leaves not fetched). Either
way every node was verified, so bytes that pass `LeafCheck` are the file the root CID names,
whatever chunker made it: the verification of record for a file known only by its CID.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from modelfetch.errors import BadBlock
from modelfetch.ipfs.blockstore import BlockGetter
from modelfetch.ipfs.cid import DAG_PB, RAW, Cid, verify_block
from modelfetch.ipfs.importer import DagNode, Profile, UnixFSFileBuilder
from modelfetch.ipfs.unixfs import (
    NodeType,
    PBNode,
    UnixFSData,
    decode_pbnode,
    decode_unixfs,
    file_leaf_affixes,
)

FORMAT_VERSION: Final = 1
#: Internal nodes fetched at once while walking a DAG (`fetch_index`).
FETCH_CONCURRENCY: Final = 16

LeafKind = Literal["raw", "pb", "inline"]


@dataclass(frozen=True, slots=True)
class Leaf:
    """Bytes [offset, offset + length) of the file, and the block that holds them.

    kind `raw`: the block is the bytes (codec raw); `pb`: a dag-pb UnixFS File leaf, the
    bytes between kubo's fixed prefix and suffix; `inline`: the bytes are the Data of the
    internal node `cid` (stored in the index), never a block of their own.
    """

    cid: Cid
    offset: int
    length: int
    kind: LeafKind = "raw"

    @property
    def end(self) -> int:
        return self.offset + self.length

    def block(self, data: bytes | memoryview) -> bytes:
        """The block these file bytes make (raw: the bytes; pb: wrapped in the leaf node)."""
        if self.kind == "pb":
            prefix, suffix = file_leaf_affixes(len(data))
            return b"".join((prefix, data, suffix))
        return bytes(data)


@dataclass
class BlockIndex:
    """One file's DAG: leaves in file order and internal nodes (cid -> encoded block)."""

    root: Cid
    size: int
    leaves: tuple[Leaf, ...]
    nodes: Mapping[Cid, bytes]
    _by_cid: dict[Cid, Leaf] = field(default_factory=dict, init=False, repr=False)
    _starts: list[int] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        pos = 0
        for leaf in self.leaves:
            if leaf.offset != pos or leaf.length < 0:
                raise ValueError(f"index of {self.root}: leaves leave a gap or overlap at {pos}")
            pos = leaf.end
            if leaf.kind != "inline":
                self._by_cid.setdefault(leaf.cid, leaf)
        if pos != self.size:
            raise ValueError(f"index of {self.root}: leaves cover {pos} bytes, not {self.size}")
        self._starts = [leaf.offset for leaf in self.leaves]

    # -- looking blocks up ------------------------------------------------------------------

    def __contains__(self, cid: object) -> bool:
        return cid in self.nodes or cid in self._by_cid

    def cids(self) -> Iterator[Cid]:
        """Every block of the DAG once (nodes, then distinct leaves)."""
        yield from self.nodes
        yield from (c for c in self._by_cid if c not in self.nodes)

    def block(self, cid: Cid | str) -> Leaf | bytes:
        """An internal node's bytes, or where a leaf's bytes are in the file. KeyError if the
        block is not part of this file's DAG."""
        c = Cid.parse(cid)
        node = self.nodes.get(c)
        if node is not None:
            return node
        return self._by_cid[c]

    def read_block(self, cid: Cid | str, read: Callable[[int, int], bytes]) -> bytes:
        """The block `cid`, its leaf bytes read with `read(offset, length)` and checked:
        BadBlock if the file's bytes no longer hash to the leaf's CID."""
        found = self.block(cid)
        if isinstance(found, bytes):
            return found
        data = read(found.offset, found.length)
        block = found.block(data)
        verify_block(found.cid, block)
        return block

    def read_block_from(self, cid: Cid | str, path: str | os.PathLike[str]) -> bytes:
        """`read_block` from the file at `path` (blocking)."""
        with open(path, "rb", buffering=0) as f:

            def read(offset: int, length: int) -> bytes:
                f.seek(offset)
                return f.read(length)

            return self.read_block(cid, read)

    def leaves_in(self, start: int, end: int) -> list[Leaf]:
        """The leaves holding any of the bytes [start, end)."""
        if end <= start:
            return []
        first = max(0, bisect.bisect_right(self._starts, start) - 1)
        out = []
        for leaf in self.leaves[first:]:
            if leaf.offset >= end:
                break
            if leaf.end > start or (leaf.length == 0 and leaf.offset == start):
                out.append(leaf)
        return out

    def dag_order(self, offset: int = 0, end: int | None = None) -> Iterator[Cid]:
        """The blocks a reader of bytes [offset, end) walks, root first, depth first: what a
        trustless gateway's CAR (`dag-scope=entity`, `entity-bytes`) carries, in order.
        Repeated blocks (a file of zeros) are listed each time they are walked."""
        stop = self.size if end is None else min(end, self.size)
        yield from self._order(self.root, 0, offset, stop)

    def _order(self, cid: Cid, base: int, offset: int, end: int) -> Iterator[Cid]:
        yield cid
        block = self.nodes.get(cid)
        if block is None:
            return  # a leaf
        pb, fs = _decode_file_node(cid, block)
        pos = base + len(fs.data or b"")
        for link, size in zip(pb.links, fs.blocksizes, strict=True):
            if pos >= end:
                return
            if offset < pos + size:
                yield from self._order(link.cid, pos, offset, end)
            pos += size

    @property
    def tsize(self) -> int:
        """The DAG's cumulative size (the Tsize a directory link to the file carries)."""
        total = 0
        for cid in self.dag_order():
            found = self.block(cid)
            if isinstance(found, bytes):
                total += len(found)
            else:
                total += _pb_leaf_size(found.length) if found.kind == "pb" else found.length
        return total

    def dag_node(self) -> DagNode:
        """The file as a directory entry: (root CID, cumulative size, file size)."""
        return DagNode(self.root, self.tsize, self.size)

    # -- saving -----------------------------------------------------------------------------

    def to_dict(self, signature: Sequence[int] | None = None) -> dict[str, object]:
        return {
            "version": FORMAT_VERSION,
            "root": str(self.root),
            "size": self.size,
            "signature": list(signature) if signature is not None else None,
            "leaves": [[str(x.cid), x.offset, x.length, x.kind] for x in self.leaves],
            "nodes": {str(c): base64.b64encode(b).decode("ascii") for c, b in self.nodes.items()},
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> BlockIndex:
        """An index read back; the internal nodes are re-hashed against their CIDs."""
        if raw.get("version") != FORMAT_VERSION:
            raise ValueError(f"block index format {raw.get('version')!r} is not {FORMAT_VERSION}")
        leaves_raw = raw["leaves"]
        nodes_raw = raw["nodes"]
        if not isinstance(leaves_raw, list) or not isinstance(nodes_raw, dict):
            raise ValueError("block index without leaves or nodes")
        nodes: dict[Cid, bytes] = {}
        for text, b64 in nodes_raw.items():
            cid, block = Cid.parse(str(text)), base64.b64decode(str(b64))
            verify_block(cid, block)
            nodes[cid] = block
        leaves = []
        for item in leaves_raw:
            cid_text, offset, length, kind = item
            if kind not in ("raw", "pb", "inline"):
                raise ValueError(f"unknown leaf kind {kind!r}")
            leaves.append(Leaf(Cid.parse(str(cid_text)), int(offset), int(length), kind))
        return cls(Cid.parse(str(raw["root"])), int(str(raw["size"])), tuple(leaves), nodes)

    def save(self, path: Path, signature: Sequence[int] | None = None) -> None:
        """Write the index atomically (beside the file's stamp: `Store.save_block_index`)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(signature), separators=(",", ":")))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, signature: Sequence[int] | None = None) -> BlockIndex | None:
        """The index saved at `path`, or None if absent, unreadable, or saved for another
        version of the file (its `signature` differs from the one given)."""
        try:
            raw = json.loads(path.read_text())
            if signature is not None and raw.get("signature") != list(signature):
                return None
            return cls.from_dict(raw)
        except (OSError, ValueError, KeyError, TypeError, BadBlock):
            return None


# -- building ---------------------------------------------------------------------------------


class IndexRecorder:
    """Collects an index while the importer computes a file's CID (no copy of the data).

    >>> from modelfetch.ipfs.importer import UnixFSFileBuilder
    >>> rec = IndexRecorder()
    >>> b = UnixFSFileBuilder(cid_version=1, on_leaf=rec.on_leaf, on_node=rec.on_node)
    >>> b.update(b"hello world\\n")
    >>> index = rec.finish(b.finish_node().cid)
    >>> (str(index.root), index.size, len(index.leaves))
    ('bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4', 12, 1)
    """

    def __init__(self) -> None:
        self.leaves: list[Leaf] = []
        self.nodes: dict[Cid, bytes] = {}

    def on_leaf(self, cid: Cid, offset: int, length: int) -> None:
        self.leaves.append(Leaf(cid, offset, length, "raw" if cid.codec == RAW else "pb"))

    def on_node(self, cid: Cid, block: bytes) -> None:
        self.nodes[cid] = bytes(block)

    def finish(self, root: Cid) -> BlockIndex:
        size = self.leaves[-1].end if self.leaves else 0
        return BlockIndex(root, size, tuple(self.leaves), dict(self.nodes))


def index_file(
    path: str | os.PathLike[str], profile: Profile | str | None = None, *, cid_version: int = 0
) -> tuple[DagNode, BlockIndex]:
    """Compute a file's UnixFS node with `profile` (see importer.get_profile) and index its
    DAG, in one read of the file (blocking)."""
    rec = IndexRecorder()
    builder = UnixFSFileBuilder(
        profile, cid_version=cid_version, on_leaf=rec.on_leaf, on_node=rec.on_node
    )
    with open(path, "rb", buffering=0) as f:
        view = memoryview(bytearray(max(1, min(4 << 20, os.fstat(f.fileno()).st_size))))
        while n := f.readinto(view):
            builder.update(view[:n])
    node = builder.finish_node()
    return node, rec.finish(node.cid)


async def fetch_index(
    get_block: BlockGetter, root: Cid | str, *, concurrency: int = FETCH_CONCURRENCY
) -> BlockIndex:
    """Index the file DAG under `root` by fetching its internal nodes (each hash-checked).

    A raw child is a leaf. A dag-pb child whose link Tsize is exactly that of a kubo leaf
    holding its blocksize is taken as one without being fetched (a wrong guess can only make
    the bytes fail their check later, never pass it); any other child is fetched and read.
    BadBlock for a missing or corrupt node, or sizes that do not add up.
    """
    top = Cid.parse(root)
    nodes: dict[Cid, bytes] = {}
    order: list[tuple[int, int, Leaf]] = []
    sem = asyncio.Semaphore(concurrency)

    async def get(cid: Cid) -> bytes:
        async with sem:
            try:
                data = await get_block(cid)
            except LookupError:
                raise BadBlock(f"block {cid} is missing") from None
        verify_block(cid, data)
        return data

    async def visit(cid: Cid, offset: int, expected: int | None) -> None:
        if cid.codec == RAW:
            data = await get(cid) if expected is None else None  # a raw root: need its size
            length = len(data) if data is not None else int(expected or 0)
            order.append((offset, len(order), Leaf(cid, offset, length, "raw")))
            return
        if cid.codec != DAG_PB:
            raise BadBlock(f"block {cid}: codec {cid.codec_name} is not UnixFS (dag-pb or raw)")
        block = await get(cid)
        pb, fs = _decode_file_node(cid, block)
        inline = fs.data or b""
        total = len(inline) + sum(fs.blocksizes)
        if expected is not None and total != expected:
            raise BadBlock(f"file node {cid} holds {total} bytes but its parent says {expected}")
        if not pb.links:
            kind: LeafKind = "pb" if _is_kubo_leaf(block, inline) else "inline"
            if kind == "inline":
                nodes[cid] = block
            order.append((offset, len(order), Leaf(cid, offset, len(inline), kind)))
            return
        nodes[cid] = block
        if inline:
            order.append((offset, len(order), Leaf(cid, offset, len(inline), "inline")))
        pos = offset + len(inline)
        jobs = []
        for link, size in zip(pb.links, fs.blocksizes, strict=True):
            if link.cid.codec == DAG_PB and link.tsize == _pb_leaf_size(size) and size > 0:
                order.append((pos, len(order), Leaf(link.cid, pos, size, "pb")))
            elif link.cid.codec == RAW:
                order.append((pos, len(order), Leaf(link.cid, pos, size, "raw")))
            else:
                jobs.append(visit(link.cid, pos, size))
            pos += size
        await asyncio.gather(*jobs)

    await visit(top, 0, None)
    order.sort(key=lambda item: (item[0], item[1]))
    leaves = tuple(leaf for _, _, leaf in order)
    size = leaves[-1].end if leaves else 0
    try:
        return BlockIndex(top, size, leaves, nodes)
    except ValueError as exc:
        raise BadBlock(f"file {top}: {exc}") from None


def _pb_leaf_size(size: int) -> int:
    prefix, suffix = file_leaf_affixes(size)
    return len(prefix) + size + len(suffix)


def _is_kubo_leaf(block: bytes, inline: bytes) -> bool:
    prefix, suffix = file_leaf_affixes(len(inline))
    return block == b"".join((prefix, inline, suffix))


def _decode_file_node(cid: Cid, block: bytes) -> tuple[PBNode, UnixFSData]:
    try:
        pb = decode_pbnode(block)
        if pb.data is None:
            raise ValueError("dag-pb node without UnixFS Data")
        fs = decode_unixfs(pb.data)
    except ValueError as exc:
        raise BadBlock(f"block {cid}: not a valid UnixFS node: {exc}") from None
    if fs.type not in (NodeType.FILE, NodeType.RAW):
        raise BadBlock(f"block {cid}: a UnixFS {fs.type.name.lower()}, not a file")
    if len(fs.blocksizes) != len(pb.links):
        raise BadBlock(f"file node {cid}: {len(pb.links)} links but {len(fs.blocksizes)} sizes")
    total = len(fs.data or b"") + sum(fs.blocksizes)
    if fs.filesize is not None and fs.filesize != total:
        raise BadBlock(f"file node {cid}: filesize {fs.filesize} but its parts add up to {total}")
    return pb, fs


# -- the model's directory ----------------------------------------------------------------------


@dataclass
class DirectoryIndex:
    """A model directory's own blocks (directory nodes and HAMT shards) and its files' CIDs."""

    root: Cid
    nodes: dict[Cid, bytes]
    files: dict[str, Cid]
    size: int = 0  # the root's cumulative DAG size (its Tsize)

    def to_dict(self) -> dict[str, object]:
        return {
            "version": FORMAT_VERSION,
            "root": str(self.root),
            "size": self.size,
            "files": {p: str(c) for p, c in self.files.items()},
            "nodes": {str(c): base64.b64encode(b).decode("ascii") for c, b in self.nodes.items()},
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> DirectoryIndex:
        if raw.get("version") != FORMAT_VERSION:
            raise ValueError(f"directory index format {raw.get('version')!r} unknown")
        nodes_raw, files_raw = raw["nodes"], raw["files"]
        if not isinstance(nodes_raw, dict) or not isinstance(files_raw, dict):
            raise ValueError("directory index without nodes or files")
        nodes = {}
        for text, b64 in nodes_raw.items():
            cid, block = Cid.parse(str(text)), base64.b64decode(str(b64))
            verify_block(cid, block)
            nodes[cid] = block
        files = {str(p): Cid.parse(str(c)) for p, c in files_raw.items()}
        return cls(Cid.parse(str(raw["root"])), nodes, files, int(str(raw.get("size", 0))))

    @classmethod
    def build(
        cls, files: Mapping[str, BlockIndex | DagNode], profile: Profile | str | None = None
    ) -> DirectoryIndex:
        """The directory `ipfs add -r` makes of these files with `profile` (HAMT-sharded when
        big): e.g. from the block indexes of a model's files, to serve the model's CID."""
        from modelfetch.ipfs.directory import DirectoryBuilder

        blocks: dict[Cid, bytes] = {}
        builder = DirectoryBuilder(profile, on_block=blocks.__setitem__)
        for rel, item in files.items():
            builder.add(rel, item.dag_node() if isinstance(item, BlockIndex) else item)
        root = builder.finish_node()
        cids = {rel: (i.root if isinstance(i, BlockIndex) else i.cid) for rel, i in files.items()}
        return cls(root.cid, blocks, cids, root.size)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), separators=(",", ":")))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> DirectoryIndex | None:
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError, BadBlock):
            return None


# The checks over an index live in their own module; re-exported here for one import path.
from modelfetch.ipfs.leafcheck import LeafCheck as LeafCheck  # noqa: E402
from modelfetch.ipfs.leafcheck import leaf_check as leaf_check  # noqa: E402
