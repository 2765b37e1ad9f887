"""Rebuild a UnixFS file from blocks, every block hash-checked before its bytes are released."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final, Literal

from modelfetch.errors import BadBlock, NoSuchFile
from modelfetch.ipfs import hamt
from modelfetch.ipfs.blockstore import BlockGetter, CarStreamBlocks, MemoryBlockStore
from modelfetch.ipfs.cid import DAG_PB, RAW, Cid, verify_block
from modelfetch.ipfs.hamt import MURMUR3_X64_64 as MURMUR3_X64_64  # re-exported
from modelfetch.ipfs.hamt import murmur3_x64_64 as murmur3_x64_64  # re-exported
from modelfetch.ipfs.unixfs import NodeType, PBNode, UnixFSData, decode_pbnode, decode_unixfs

_CACHE_BLOCKS: Final = 8

Kind = Literal["file", "directory", "symlink", "hamt-directory"]


@dataclass(frozen=True, slots=True)
class Entry:
    """What a CID (or `<cid>/<path>`) names: its CID, kind, and file size (files only)."""

    cid: Cid
    kind: Kind
    size: int | None


class DagReader:
    """Reads UnixFS DAGs through a BlockGetter, re-hashing every block against its CID.

    Identity CIDs (`bafkqaaa…`) are decoded without asking the getter; the last few blocks
    are kept so repeated links (files of zeros) are fetched once.
    """

    def __init__(self, get_block: BlockGetter) -> None:
        self._get_block = get_block
        self._cache: OrderedDict[Cid, bytes] = OrderedDict()
        self.blocks_fetched = 0

    async def block(self, cid: Cid) -> bytes:
        """The verified bytes of one block."""
        if cid.is_identity:
            verify_block(cid, cid.digest)
            return cid.digest
        cached = self._cache.get(cid)
        if cached is not None:
            self._cache.move_to_end(cid)
            return cached
        try:
            data = await self._get_block(cid)
        except LookupError:
            raise BadBlock(f"block {cid} is missing") from None
        verify_block(cid, data)
        self.blocks_fetched += 1
        self._cache[cid] = data
        if len(self._cache) > _CACHE_BLOCKS:
            self._cache.popitem(last=False)
        return data

    async def node(self, cid: Cid) -> tuple[PBNode, UnixFSData] | bytes:
        """A block decoded: (dag-pb node, UnixFS data), or the bytes of a raw block."""
        data = await self.block(cid)
        if cid.codec == RAW:
            return data
        if cid.codec != DAG_PB:
            raise BadBlock(f"block {cid}: codec {cid.codec_name} is not UnixFS (dag-pb or raw)")
        try:
            pb = decode_pbnode(data)
            if pb.data is None:
                raise ValueError("dag-pb node without UnixFS Data")
            return pb, decode_unixfs(pb.data)
        except ValueError as exc:
            raise BadBlock(f"block {cid}: not a valid UnixFS node: {exc}") from None

    async def resolve(self, root: Cid | str, path: str = "") -> Cid:
        """The CID at `<root>/<path>`, following dag-pb directory (and HAMT shard) links.

        Symlinks are refused, never followed; a missing name raises NoSuchFile.
        """
        cid = Cid.parse(root)
        parts = [p for p in path.strip("/").split("/")] if path.strip("/") else []
        for i, name in enumerate(parts):
            if name in ("", ".", ".."):
                raise NoSuchFile(f"{path!r}: not a plain relative path inside {root}")
            here = "/".join(parts[:i]) or "."
            decoded = await self.node(cid)
            if isinstance(decoded, bytes):
                raise NoSuchFile(f"{root}/{here} is a file, not a directory (looking for {name})")
            pb, fs = decoded
            if fs.type == NodeType.DIRECTORY:
                found = [link.cid for link in pb.links if link.name == name]
                if not found:
                    raise NoSuchFile(f"{root}/{here} has no entry {name!r}")
                if len(found) > 1:
                    raise BadBlock(f"directory {cid} lists {name!r} twice")
                cid = found[0]
            elif fs.type == NodeType.HAMT_SHARD:
                cid = await hamt.lookup(self.node, cid, pb, fs, name, f"{root}/{here}")
            elif fs.type == NodeType.SYMLINK:
                raise BadBlock(
                    f"{root}/{here} is a symlink (to {fs.data!r}): refused, modelfetch never "
                    "follows symlinks inside a DAG"
                )
            else:
                raise NoSuchFile(f"{root}/{here} is a file, not a directory (looking for {name})")
        return cid

    async def stat(self, root: Cid | str, path: str = "") -> Entry:
        """What `<root>/<path>` is (fetches the blocks on the path and the target's root block)."""
        cid = await self.resolve(root, path)
        decoded = await self.node(cid)
        if isinstance(decoded, bytes):
            return Entry(cid, "file", len(decoded))
        pb, fs = decoded
        if fs.type in (NodeType.FILE, NodeType.RAW):
            return Entry(cid, "file", _check_file_node(cid, pb, fs, None))
        if fs.type == NodeType.DIRECTORY:
            return Entry(cid, "directory", None)
        if fs.type == NodeType.HAMT_SHARD:
            return Entry(cid, "hamt-directory", None)
        if fs.type == NodeType.SYMLINK:
            return Entry(cid, "symlink", None)
        raise BadBlock(f"block {cid}: UnixFS {fs.type.name} node is not a file or directory")

    async def iter_file(
        self, root: Cid | str, path: str = "", *, offset: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """The bytes [offset, end) of the file at `<root>/<path>`, as verified pieces.

        Subtrees wholly outside the range are skipped by their blocksizes, never fetched
        (resume and ranges by block). Raises BadBlock for a missing or corrupt block, a
        symlink or directory, or sizes that disagree (a cut-off file); a complete run yielded
        exactly the file's bytes in the range.
        """
        if offset < 0 or (end is not None and end < offset):
            raise ValueError("need 0 <= offset <= end")
        cid = await self.resolve(root, path)
        decoded = await self.node(cid)
        if isinstance(decoded, bytes):
            total = len(decoded)
        else:
            pb, fs = decoded
            if fs.type == NodeType.SYMLINK:
                raise BadBlock(
                    f"{root}/{path} is a symlink (to {fs.data!r}): refused, never followed"
                )
            if fs.type not in (NodeType.FILE, NodeType.RAW):
                raise BadBlock(f"{root}/{path} is a {fs.type.name.lower()}, not a file")
            total = _check_file_node(cid, pb, fs, None)
        if offset > total:
            raise ValueError(f"offset {offset} is past the end of the {total}-byte file")
        stop = total if end is None else min(end, total)
        sent = 0
        async for piece in self._walk(cid, None, offset, stop):
            sent += len(piece)
            yield piece
        if sent != stop - offset:  # pragma: no cover - the per-node checks make this unreachable
            raise BadBlock(f"file {cid}: rebuilt {sent} bytes, expected {stop - offset}")

    async def _walk(
        self, cid: Cid, expected: int | None, offset: int, end: int
    ) -> AsyncIterator[bytes]:
        """The bytes [offset, end) of the node `cid` (offsets relative to the node)."""
        decoded = await self.node(cid)
        if isinstance(decoded, bytes):
            if expected is not None and len(decoded) != expected:
                raise BadBlock(
                    f"raw leaf {cid} holds {len(decoded)} bytes but its parent says {expected}"
                )
            if offset < min(end, len(decoded)):
                whole = offset == 0 and end >= len(decoded)
                yield decoded if whole else decoded[offset:end]
            return
        pb, fs = decoded
        if fs.type not in (NodeType.FILE, NodeType.RAW):
            raise BadBlock(f"block {cid}: a {fs.type.name} node inside a file")
        _check_file_node(cid, pb, fs, expected)
        inline = fs.data or b""
        if offset < min(end, len(inline)):
            yield inline[offset:end]
        pos = len(inline)
        for link, size in zip(pb.links, fs.blocksizes, strict=True):
            if pos >= end:
                return
            if offset >= pos + size:
                pos += size
                continue
            async for piece in self._walk(link.cid, size, max(0, offset - pos), end - pos):
                yield piece
            pos += size


def _check_file_node(cid: Cid, pb: PBNode, fs: UnixFSData, expected: int | None) -> int:
    """The content length a UnixFS file node claims, after checking it is self-consistent."""
    inline = len(fs.data or b"")
    if len(fs.blocksizes) != len(pb.links):
        raise BadBlock(
            f"file node {cid}: {len(pb.links)} links but {len(fs.blocksizes)} blocksizes"
        )
    total = inline + sum(fs.blocksizes)
    if fs.filesize is not None and fs.filesize != total:
        raise BadBlock(
            f"file node {cid}: filesize {fs.filesize} but its data and blocksizes add up to "
            f"{total} (cut-off or inconsistent DAG)"
        )
    if expected is not None and total != expected:
        raise BadBlock(f"file node {cid} holds {total} bytes but its parent says {expected}")
    return total


# -- convenience entry points -----------------------------------------------------------------


def iter_file(
    root: Cid | str, get_block: BlockGetter, *, path: str = "", offset: int = 0
) -> AsyncIterator[bytes]:
    """Verified pieces of the file at `<root>/<path>`, from `offset` (see DagReader.iter_file)."""
    return DagReader(get_block).iter_file(root, path, offset=offset)


async def read_file(root: Cid | str, get_block: BlockGetter, *, path: str = "") -> bytes:
    """The whole verified file at `<root>/<path>` in memory (small files, tests)."""
    return b"".join([piece async for piece in iter_file(root, get_block, path=path)])


async def stat(root: Cid | str, get_block: BlockGetter, *, path: str = "") -> Entry:
    """What `<root>/<path>` is: CID, kind and (files) size."""
    return await DagReader(get_block).stat(root, path)


async def read_car_file(
    car: bytes | bytearray | memoryview,
    root: Cid | str | None = None,
    *,
    path: str = "",
    strict: bool = True,
) -> bytes:
    """The verified file a CAR carries for `<root>/<path>` (root: the CAR's only root if None).

    BadBlock if the CAR's header names other roots, a block is missing or corrupt, or (with
    `strict`) the CAR carries blocks the file does not need.
    """
    store = MemoryBlockStore.from_car(car)
    want = _check_roots(store.roots, root)
    data = await read_file(want, store, path=path)
    if strict and (extra := store.unused()):
        names = ", ".join(str(c) for c in extra[:5])
        raise BadBlock(f"CAR holds {len(extra)} block(s) outside the requested DAG: {names}")
    return data


async def iter_car_stream_file(
    chunks: AsyncIterator[bytes] | AsyncIterator[bytes | bytearray | memoryview],
    root: Cid | str,
    *,
    path: str = "",
    offset: int = 0,
    end: int | None = None,
    strict: bool = True,
) -> AsyncIterator[bytes]:
    """Verified pieces of bytes [offset, end) of `<root>/<path>` from a CAR arriving as a
    stream (a gateway response).

    The CAR's roots must include `root`; with `strict`, blocks beyond what the range needs
    are an error once it is complete.
    """
    source = CarStreamBlocks(_as_bytes(chunks))
    want = _check_roots(await source.read_header(), root)
    async for piece in DagReader(source).iter_file(want, path, offset=offset, end=end):
        yield piece
    if strict:
        await source.check_complete()


async def _as_bytes(
    chunks: AsyncIterator[bytes] | AsyncIterator[bytes | bytearray | memoryview],
) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        yield bytes(chunk)


def _check_roots(roots: tuple[Cid, ...], root: Cid | str | None) -> Cid:
    if root is None:
        if len(roots) != 1:
            raise BadBlock(f"CAR has {len(roots)} roots: say which one to read")
        return roots[0]
    want = Cid.parse(root)
    for r in roots:
        if r.to_v1() == want.to_v1():
            return r  # the form the CAR's blocks are keyed by
    names = ", ".join(str(r) for r in roots) or "none"
    raise BadBlock(f"CAR is for root(s) {names}, not the requested {want} (wrong root)")
