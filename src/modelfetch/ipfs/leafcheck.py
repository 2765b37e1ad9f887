"""Checking a file's bytes against the leaves of its block index: ranges, or a whole stream."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from modelfetch.errors import BadBlock, HashMismatch
from modelfetch.ipfs.unixfs import decode_pbnode, decode_unixfs, file_leaf_affixes

if TYPE_CHECKING:
    from modelfetch.ipfs.blockindex import BlockIndex, Leaf


def _leaf_digest(index: BlockIndex, leaf: Leaf) -> tuple[str, bytes]:
    """What a leaf's bytes must hash to: (hashlib name, digest) of its block (or its data)."""
    if leaf.kind == "inline":
        pb = decode_pbnode(index.nodes[leaf.cid])
        data = decode_unixfs(pb.data or b"").data or b""
        return "sha256", hashlib.sha256(data).digest()
    if leaf.cid.hash_code != 0x12:
        raise BadBlock(f"leaf {leaf.cid}: only sha2-256 leaves can be checked in a stream")
    return "sha256", leaf.cid.digest


def _hasher(leaf: Leaf) -> hashlib._Hash:
    h = hashlib.sha256()
    if leaf.kind == "pb":
        h.update(file_leaf_affixes(leaf.length)[0])
    return h


def _leaf_ok(index: BlockIndex, leaf: Leaf, h: hashlib._Hash) -> bool:
    if leaf.kind == "pb":
        h.update(file_leaf_affixes(leaf.length)[1])
    return h.digest() == _leaf_digest(index, leaf)[1]


def leaf_check(index: BlockIndex, offset: int, data: bytes | memoryview) -> list[tuple[int, int]]:
    """Check bytes of the file starting at `offset` against the leaves they wholly cover.

    Returns the [start, end) file ranges of the leaves whose bytes are wrong (empty: all good).
    Leaves only partly inside the range are not judged (a range check from any origin: the
    transfer engine can tell which origin sent wrong bytes, leaf by leaf).
    """
    mv = memoryview(data).cast("B")
    end = offset + len(mv)
    bad = []
    for leaf in index.leaves_in(offset, end):
        if leaf.offset < offset or leaf.end > end:
            continue
        h = _hasher(leaf)
        h.update(mv[leaf.offset - offset : leaf.end - offset])
        if not _leaf_ok(index, leaf, h):
            bad.append((leaf.offset, leaf.end))
    return bad


class LeafCheck:
    """A StreamCheck: the file's bytes, fed in order from 0, each leaf hash-checked as it
    completes against the verified index; `finish` raises HashMismatch naming the wrong
    leaves' ranges (`bad`), or if the bytes are not exactly `index.size` long.

    Like every stream check it objects only at the end, so that the transfer engine can
    look for the origin that sent the wrong bytes (`bad` says where they are).
    """

    def __init__(self, index: BlockIndex, *, name: str = "file") -> None:
        self.index = index
        self.name = name
        self.bad: list[tuple[int, int]] = []
        self._pos = 0
        self._i = 0
        self._h: hashlib._Hash | None = None
        self._overflow = 0
        self._skip_empty()

    def _skip_empty(self) -> None:
        leaves = self.index.leaves
        while self._i < len(leaves) and leaves[self._i].length == 0:
            self._close(leaves[self._i], _hasher(leaves[self._i]))
            self._i += 1

    def _close(self, leaf: Leaf, h: hashlib._Hash) -> None:
        if not _leaf_ok(self.index, leaf, h):
            if self.bad and self.bad[-1][1] == leaf.offset:
                self.bad[-1] = (self.bad[-1][0], leaf.end)
            else:
                self.bad.append((leaf.offset, leaf.end))

    def update(self, data: bytes | memoryview) -> None:
        mv = memoryview(data).cast("B")
        leaves = self.index.leaves
        while len(mv):
            if self._i >= len(leaves):
                self._overflow += len(mv)
                return
            leaf = leaves[self._i]
            if self._h is None:
                self._h = _hasher(leaf)
            take = min(len(mv), leaf.end - self._pos)
            self._h.update(mv[:take])
            self._pos += take
            mv = mv[take:]
            if self._pos == leaf.end:
                self._close(leaf, self._h)
                self._h = None
                self._i += 1
                self._skip_empty()

    def finish(self) -> None:
        if self._overflow or self._pos != self.index.size:
            raise HashMismatch(
                f"{self.name}: {self._pos + self._overflow:,} bytes, but the DAG of "
                f"{self.index.root} holds {self.index.size:,}; the bytes were discarded"
            )
        if self.bad:
            where = ", ".join(f"{s:,}-{e:,}" for s, e in self.bad[:3])
            more = f" and {len(self.bad) - 3} more range(s)" if len(self.bad) > 3 else ""
            raise HashMismatch(
                f"{self.name}: bytes {where}{more} do not hash to the CIDs of their blocks in "
                f"the DAG of {self.index.root}; the bytes were discarded"
            )
