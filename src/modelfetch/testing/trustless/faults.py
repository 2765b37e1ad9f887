"""Faults in a trustless gateway's blocks (flipped bytes, cut CARs, extra blocks, wrong roots)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Final, Literal

from modelfetch.ipfs.cid import DAG_PB, RAW, Cid, make_cid
from modelfetch.ipfs.unixfs import decode_pbnode

UNRELATED_BLOCK: Final = b"modelfetch trustless test double: a valid block from no requested DAG\n"
"""The block `extra_block()` and `wrong_root()` use by default (a raw CIDv1 block)."""
UNRELATED_CID: Final = make_cid(1, RAW, UNRELATED_BLOCK)
"""The CID of UNRELATED_BLOCK."""
TrustlessFaultKind = Literal["flip_block_byte", "car_cut_short", "extra_block", "wrong_root"]
"""Every fault specific to trustless answers."""

Blocks = AsyncGenerator[tuple[Cid, bytes], None]
"""The (CID, bytes) of the blocks of an answer, in the order they are sent."""


@dataclass(frozen=True, slots=True)
class TrustlessFault:
    """A fault in a trustless answer's blocks; build it with `flip_block_byte()` and friends."""

    kind: TrustlessFaultKind
    cid: Cid | None = None
    at: int | None = None
    after_blocks: int = 0
    mid_block: bool = False
    data: bytes = b""

    def applies_to(self, fmt: Literal["raw", "car"]) -> bool:
        """Whether the fault changes answers of this format (cuts and extras are CAR only)."""
        return fmt == "car" or self.kind in ("flip_block_byte", "wrong_root")


def _non_negative(name: str, value: int) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def flip_block_byte(cid: Cid | str | None = None, *, at: int | None = None) -> TrustlessFault:
    """Flip one byte (offset `at` in the block, default its middle) of one block, CID unchanged.

    `cid` None: the first leaf sent (a raw block or a link-less dag-pb node), else the first
    block; a raw answer's only block. An empty block gets one byte instead.
    """
    if at is not None:
        _non_negative("at", at)
    return TrustlessFault("flip_block_byte", Cid.parse(cid) if cid is not None else None, at=at)


def car_cut_short(after_blocks: int = 1, *, mid_block: bool = False) -> TrustlessFault:
    """End the CAR cleanly (HTTP-wise) after its header and `after_blocks` blocks.

    With `mid_block`, half of the next block's section follows (a CAR cut inside a section).
    """
    _non_negative("after_blocks", after_blocks)
    return TrustlessFault("car_cut_short", after_blocks=after_blocks, mid_block=mid_block)


def extra_block(data: bytes = UNRELATED_BLOCK, *, at: int | None = 1) -> TrustlessFault:
    """Insert a valid but unrelated raw block (CIDv1 of `data`) after `at` blocks (None: last)."""
    if at is not None:
        _non_negative("at", at)
    return TrustlessFault("extra_block", make_cid(1, RAW, data), at=at, data=bytes(data))


def wrong_root(cid: Cid | str | None = None) -> TrustlessFault:
    """A CAR whose header names `cid` (default UNRELATED_CID) as its root; a raw answer of the
    bytes of another block (`cid`'s if the backend has it, else UNRELATED_BLOCK)."""
    return TrustlessFault("wrong_root", Cid.parse(cid) if cid is not None else None)


async def apply_to_blocks(blocks: Blocks, fault: TrustlessFault) -> Blocks:
    """The blocks with a flipped byte or an extra block (other kinds act in the writer)."""
    if fault.kind == "extra_block":
        extra = (make_cid(1, RAW, fault.data), fault.data)
        count = 0
        async for item in blocks:
            if fault.at is not None and count == fault.at:
                yield extra
            yield item
            count += 1
        if fault.at is None or count <= fault.at:  # fewer blocks than `at`: append it
            yield extra
        return
    if fault.kind != "flip_block_byte":
        async for item in blocks:
            yield item
        return
    if fault.cid is not None:
        want = fault.cid.to_v1()
        done = False
        async for cid, data in blocks:
            if not done and cid.to_v1() == want:
                data = flip_byte(data, fault.at)
                done = True
            yield cid, data
        return
    held: list[tuple[Cid, bytes]] = []  # blocks before the first leaf (internal nodes)
    flipped = False
    async for cid, data in blocks:
        if flipped:
            yield cid, data
        elif _is_leaf(cid, data):
            for item in held:
                yield item
            held.clear()
            flipped = True
            yield cid, flip_byte(data, fault.at)
        else:
            held.append((cid, data))
    if held:  # no leaf at all: flip the first block
        first_cid, first_data = held[0]
        yield first_cid, flip_byte(first_data, fault.at)
        for item in held[1:]:
            yield item


def _is_leaf(cid: Cid, data: bytes) -> bool:
    if cid.codec == RAW:
        return True
    if cid.codec != DAG_PB:
        return False
    try:
        return not decode_pbnode(data).links
    except ValueError:
        return False


def flip_byte(data: bytes, at: int | None) -> bytes:
    """`data` with the byte at `at` (default: the middle) flipped; one byte if it is empty."""
    if not data:
        return b"\xff"
    pos = min(len(data) // 2 if at is None else at, len(data) - 1)
    mutable = bytearray(data)
    mutable[pos] ^= 0xFF
    return bytes(mutable)


__all__ = [
    "UNRELATED_BLOCK",
    "UNRELATED_CID",
    "Blocks",
    "TrustlessFault",
    "TrustlessFaultKind",
    "apply_to_blocks",
    "car_cut_short",
    "extra_block",
    "flip_block_byte",
    "flip_byte",
    "wrong_root",
]
