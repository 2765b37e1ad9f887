"""UnixFS file CIDs the way `ipfs add` computes them: profiles and the streaming file builder."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from modelfetch.ipfs.cid import DAG_PB, RAW, SHA2_256, Cid, encode_varint
from modelfetch.ipfs.hamt import Estimation
from modelfetch.ipfs.unixfs import (
    NodeType,
    encode_pbnode,
    encode_unixfs,
    file_leaf_affixes,
)


@dataclass(frozen=True, slots=True)
class Profile:
    """How a file is cut into blocks and linked: what decides its UnixFS CID.

    `chunk_size` (fixed-size chunker), `max_links` (balanced DAG width), `cid_version`, and
    `raw_leaves` (leaves are raw blocks, codec 0x55, instead of dag-pb UnixFS File nodes), and
    how a directory's size is estimated to decide when it is HAMT-sharded (`hamt_estimation`:
    kubo's `Import.UnixFSHAMTDirectorySizeEstimation`, "links" or "block").
    """

    name: str
    cid_version: int
    raw_leaves: bool
    chunk_size: int
    max_links: int
    hamt_estimation: Estimation = "links"

    def __post_init__(self) -> None:
        if self.cid_version not in (0, 1):
            raise ValueError(f"cid_version must be 0 or 1, not {self.cid_version}")
        if self.cid_version == 0 and self.raw_leaves:
            raise ValueError("raw leaves need CIDv1 (a CIDv0 is always dag-pb)")
        if not 1 <= self.chunk_size <= 1024 * 1024:
            raise ValueError("chunk_size must be between 1 byte and 1 MiB (the IPFS block limit)")
        if self.max_links < 2:
            raise ValueError("max_links must be at least 2")
        if self.hamt_estimation not in ("links", "block"):
            raise ValueError(f"hamt_estimation must be links or block, not {self.hamt_estimation}")


#: kubo's defaults (`ipfs add`): CIDv0, 256 KiB chunks, 174 links, dag-pb leaves.
UNIXFS_V0_2015: Final = Profile("unixfs-v0-2015", 0, False, 262144, 174)
#: kubo's `ipfs add --cid-version=1`: raw leaves, otherwise the defaults.
CIDV1_DEFAULTS: Final = Profile("cid-version-1", 1, True, 262144, 174)
#: kubo's `unixfs-v1-2025` profile: CIDv1, raw leaves, 1 MiB chunks, 1024 links, directories
#: sharded by their block size (IPIP-499).
UNIXFS_V1_2025: Final = Profile("unixfs-v1-2025", 1, True, 1048576, 1024, "block")

PROFILES: Final[Mapping[str, Profile]] = {
    p.name: p for p in (UNIXFS_V0_2015, CIDV1_DEFAULTS, UNIXFS_V1_2025)
}


def get_profile(cid_version: int = 0, profile: str | Profile | None = None) -> Profile:
    """The profile named (wins) or the one `ipfs add --cid-version=N` uses.

    >>> get_profile(1).chunk_size, get_profile(profile="unixfs-v1-2025").max_links
    (262144, 1024)
    """
    if isinstance(profile, Profile):
        return profile
    if profile is not None:
        try:
            return PROFILES[profile]
        except KeyError:
            raise ValueError(
                f"unknown CID profile {profile!r}: expected one of {', '.join(PROFILES)}"
            ) from None
    if cid_version == 0:
        return UNIXFS_V0_2015
    if cid_version == 1:
        return CIDV1_DEFAULTS
    raise ValueError(f"cid_version must be 0 or 1, not {cid_version}")


@dataclass(frozen=True, slots=True)
class DagNode:
    """A finished UnixFS node: its CID, cumulative DAG size (the link Tsize `ipfs add` reports
    as Size) and, for files, the content length."""

    cid: Cid
    size: int
    filesize: int = 0

    def __str__(self) -> str:
        return str(self.cid)


class _Level:
    """Links waiting for their parent, at one height of the balanced tree."""

    __slots__ = ("filesizes", "links", "tsizes")

    def __init__(self) -> None:
        self.links: list[bytes] = []
        self.tsizes: list[int] = []
        self.filesizes: list[int] = []


class UnixFSFileBuilder:
    """Streams a file's bytes into its UnixFS CID, exactly as `ipfs add --only-hash` computes it.

    Feed any chunk sizes with `update()`; `finish()` returns the CID text. Memory stays at one
    chunk plus `max_links` links per tree level; every block is sha2-256 hashed once, without
    copying full chunks (the cost is close to hashing the file once with hashlib).
    `on_block(cid, block)`, if given, receives every block made (leaves first, root last): to
    write a CAR or feed a node; it costs a copy of each leaf. `on_leaf(cid, offset, length)`
    and `on_node(cid, block)` instead say where each leaf's bytes are in the file and hand over
    the (small) parent blocks: what a block index keeps (no copy of the data).

    >>> b = UnixFSFileBuilder()
    >>> b.update(b"hello world\\n")
    >>> b.finish()
    'QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o'
    """

    def __init__(
        self,
        profile: Profile | str | None = None,
        *,
        cid_version: int = 0,
        on_block: Callable[[Cid, bytes], None] | None = None,
        on_leaf: Callable[[Cid, int, int], None] | None = None,
        on_node: Callable[[Cid, bytes], None] | None = None,
    ) -> None:
        self.profile = get_profile(cid_version, profile)
        self._on_block = on_block
        self._on_leaf = on_leaf
        self._on_node = on_node
        self._leaf_offset = 0
        self._chunk = self.profile.chunk_size
        self._buf = bytearray()
        self._levels: list[_Level] = [_Level()]
        self._leaf_count = 0
        self._size = 0
        self._result: DagNode | None = None
        full_prefix, full_suffix = file_leaf_affixes(self._chunk)
        self._full_affixes = (full_prefix, full_suffix)
        pb_version = self.profile.cid_version
        self._parent_prefix = b"" if pb_version == 0 else b"\x01\x70"
        self._leaf_prefix = b"\x01\x55" if self.profile.raw_leaves else self._parent_prefix

    @property
    def size(self) -> int:
        """Bytes fed so far."""
        return self._size

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Add the next bytes of the file (any length, including 0)."""
        if self._result is not None:
            raise RuntimeError("UnixFSFileBuilder.update() after finish()")
        mv = memoryview(data).cast("B")
        n = len(mv)
        if not n:
            return
        self._size += n
        chunk = self._chunk
        pos = 0
        buf = self._buf
        if buf:
            take = min(chunk - len(buf), n)
            buf += mv[:take]
            pos = take
            if len(buf) == chunk:
                self._add_leaf(buf)
                buf.clear()
        while n - pos >= chunk:
            self._add_leaf(mv[pos : pos + chunk])
            pos += chunk
        if pos < n:
            buf += mv[pos:]

    def _add_leaf(self, data: bytes | bytearray | memoryview) -> None:
        size = len(data)
        if self._on_block is not None:
            self._emit_leaf(data)
            return
        if self.profile.raw_leaves:
            digest = hashlib.sha256(data).digest()
            tsize = size
        else:
            prefix, suffix = self._full_affixes if size == self._chunk else file_leaf_affixes(size)
            h = hashlib.sha256(prefix)
            h.update(data)
            h.update(suffix)
            digest = h.digest()
            tsize = len(prefix) + size + len(suffix)
        self._leaf_count += 1
        cid_bytes = self._leaf_prefix + b"\x12\x20" + digest
        if self._on_leaf is not None:
            self._on_leaf(Cid.parse(cid_bytes), self._leaf_offset, size)
        self._leaf_offset += size
        self._push(0, cid_bytes, tsize, size)

    def _emit_leaf(self, data: bytes | bytearray | memoryview) -> None:
        size = len(data)
        if self.profile.raw_leaves:
            block = bytes(data)
        else:
            prefix, suffix = file_leaf_affixes(size)
            block = b"".join((prefix, data, suffix))
        cid_bytes = self._leaf_prefix + b"\x12\x20" + hashlib.sha256(block).digest()
        assert self._on_block is not None
        self._on_block(Cid.parse(cid_bytes), block)
        if self._on_leaf is not None:
            self._on_leaf(Cid.parse(cid_bytes), self._leaf_offset, size)
        self._leaf_offset += size
        self._leaf_count += 1
        self._push(0, cid_bytes, len(block), size)

    def _push(self, height: int, cid_bytes: bytes, tsize: int, filesize: int) -> None:
        if height == len(self._levels):
            self._levels.append(_Level())
        level = self._levels[height]
        level.links.append(cid_bytes)
        level.tsizes.append(tsize)
        level.filesizes.append(filesize)
        # A full level can only become a parent once more data arrives (kubo checks "not done"
        # before adding a level): folding it eagerly gives the same tree, since finish() folds
        # the remaining partial levels bottom-up and a lone top node is the root.
        if len(level.links) == self.profile.max_links:
            self._fold(height)

    def _fold(self, height: int) -> None:
        level = self._levels[height]
        cid_bytes, tsize, filesize = self._parent(level)
        self._levels[height] = _Level()
        self._push(height + 1, cid_bytes, tsize, filesize)

    def _parent(self, level: _Level) -> tuple[bytes, int, int]:
        filesize = sum(level.filesizes)
        data = encode_unixfs(NodeType.FILE, filesize=filesize, blocksizes=level.filesizes)
        parts = []
        for cid_bytes, tsize in zip(level.links, level.tsizes, strict=True):
            parts.append(b"\x12" + _link_bytes(cid_bytes, tsize))
        parts.append(b"\x0a" + encode_varint(len(data)) + data)
        block = b"".join(parts)
        digest = hashlib.sha256(block).digest()
        cid_bytes = self._parent_prefix + b"\x12\x20" + digest
        if self._on_block is not None:
            self._on_block(Cid.parse(cid_bytes), block)
        if self._on_node is not None:
            self._on_node(Cid.parse(cid_bytes), block)
        return cid_bytes, len(block) + sum(level.tsizes), filesize

    def finish_node(self) -> DagNode:
        """Finish and return the root's CID, cumulative DAG size and file size."""
        if self._result is not None:
            return self._result
        if self._buf:
            self._add_leaf(self._buf)
            self._buf = bytearray()
        if self._leaf_count == 0:
            self._result = _empty_file(self.profile)
            if self._on_block is not None:
                self._on_block(self._result.cid, _empty_file_block(self.profile))
            if self._on_leaf is not None:  # an empty file is one (empty) leaf
                self._on_leaf(self._result.cid, 0, 0)
            return self._result
        levels = self._levels
        height = 0
        while True:
            level = levels[height]
            above = any(lv.links for lv in levels[height + 1 :])
            if not above and len(level.links) == 1:
                cid = Cid.parse(level.links[0])
                self._result = DagNode(cid, level.tsizes[0], self._size)
                return self._result
            if level.links:
                self._fold(height)
            height += 1

    def finish(self) -> str:
        """Finish and return the file's CID text (`Qm…` for CIDv0, `bafy…`/`bafk…` for v1)."""
        return str(self.finish_node().cid)


def _link_bytes(cid_bytes: bytes, tsize: int) -> bytes:
    body = (
        b"\x0a" + encode_varint(len(cid_bytes)) + cid_bytes + b"\x12\x00\x18" + encode_varint(tsize)
    )
    return encode_varint(len(body)) + body


def _empty_file_block(profile: Profile) -> bytes:
    if profile.raw_leaves:
        return b""
    return encode_pbnode((), encode_unixfs(NodeType.FILE, filesize=0))


def _empty_file(profile: Profile) -> DagNode:
    """The node `ipfs add` makes for 0 bytes: an empty raw leaf, or `{Type: File, filesize: 0}`."""
    block = _empty_file_block(profile)
    if profile.raw_leaves:
        return DagNode(Cid(1, RAW, SHA2_256, hashlib.sha256(block).digest()), 0, 0)
    return DagNode(_pb_cid(profile, block), len(block), 0)


def _pb_cid(profile: Profile, block: bytes) -> Cid:
    return Cid(profile.cid_version, DAG_PB, SHA2_256, hashlib.sha256(block).digest())


def file_node(
    data: bytes | bytearray | memoryview,
    profile: Profile | str | None = None,
    *,
    cid_version: int = 0,
) -> DagNode:
    """The UnixFS node of an in-memory file (CID, cumulative size, file size)."""
    builder = UnixFSFileBuilder(profile, cid_version=cid_version)
    builder.update(data)
    return builder.finish_node()


def file_cid(
    data: bytes | bytearray | memoryview,
    profile: Profile | str | None = None,
    *,
    cid_version: int = 0,
) -> str:
    """The CID `ipfs add --only-hash` gives for these bytes.

    >>> file_cid(b"hello world\\n", cid_version=1)
    'bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4'
    """
    return str(file_node(data, profile, cid_version=cid_version).cid)


def symlink_node(
    target: str, profile: Profile | str | None = None, *, cid_version: int = 0
) -> DagNode:
    """The node `ipfs add -r` stores for a symlink (UnixFS Symlink; the target is not followed)."""
    prof = get_profile(cid_version, profile)
    block = encode_pbnode((), encode_unixfs(NodeType.SYMLINK, data=os.fsencode(target)))
    return DagNode(_pb_cid(prof, block), len(block), 0)


__all__ = [
    "CIDV1_DEFAULTS",
    "PROFILES",
    "UNIXFS_V0_2015",
    "UNIXFS_V1_2025",
    "DagNode",
    "Profile",
    "UnixFSFileBuilder",
    "file_cid",
    "file_node",
    "get_profile",
    "symlink_node",
]
