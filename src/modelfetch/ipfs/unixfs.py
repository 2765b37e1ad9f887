"""dag-pb and UnixFS protobuf encoding and decoding (the small subset IPFS files and dirs use)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from modelfetch.ipfs.cid import Cid, decode_varint, encode_varint

#: Data of a plain (basic, unsharded) UnixFS directory node: `{Type: Directory}`.
DIRECTORY_DATA = b"\x08\x01"


class NodeType(IntEnum):
    """The UnixFS `Data.Type` values."""

    RAW = 0
    DIRECTORY = 1
    FILE = 2
    METADATA = 3
    SYMLINK = 4
    HAMT_SHARD = 5


@dataclass(frozen=True, slots=True)
class PBLink:
    """A dag-pb link: target CID, name (None if absent) and cumulative size (None if absent)."""

    cid: Cid
    name: str | None = ""
    tsize: int | None = None


@dataclass(frozen=True, slots=True)
class PBNode:
    """A decoded dag-pb node: its links (in block order) and its Data bytes (None if absent)."""

    links: tuple[PBLink, ...]
    data: bytes | None


@dataclass(frozen=True, slots=True)
class UnixFSData:
    """A decoded UnixFS `Data` message (mode and mtime are read but not interpreted)."""

    type: NodeType
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: tuple[int, ...] = field(default=())
    hash_type: int | None = None
    fanout: int | None = None


def _read_fields(
    buf: bytes | memoryview,
) -> list[tuple[int, int, int | memoryview]]:
    """Split a protobuf message into (field number, wire type, value) in order."""
    mv = memoryview(buf)
    out: list[tuple[int, int, int | memoryview]] = []
    pos, end = 0, len(mv)
    while pos < end:
        tag, pos = decode_varint(mv, pos)
        num, wt = tag >> 3, tag & 7
        if num == 0:
            raise ValueError("protobuf field number 0")
        if wt == 0:
            value, pos = decode_varint(mv, pos)
            out.append((num, wt, value))
        elif wt == 2:
            size, pos = decode_varint(mv, pos)
            if pos + size > end:
                raise ValueError("protobuf field runs past the end of the message")
            out.append((num, wt, mv[pos : pos + size]))
            pos += size
        elif wt == 1:
            pos += 8
            out.append((num, wt, 0))
        elif wt == 5:
            pos += 4
            out.append((num, wt, 0))
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        if pos > end:
            raise ValueError("truncated protobuf field")
    return out


def _field(num: int, payload: bytes) -> bytes:
    return encode_varint(num << 3 | 2) + encode_varint(len(payload)) + payload


def _uint(num: int, value: int) -> bytes:
    return encode_varint(num << 3) + encode_varint(value)


# -- dag-pb ---------------------------------------------------------------------------------


def encode_link(link: PBLink) -> bytes:
    """One PBLink message (Hash, Name, Tsize in field order)."""
    body = _field(1, bytes(link.cid))
    if link.name is not None:
        body += _field(2, link.name.encode("utf-8"))
    if link.tsize is not None:
        body += _uint(3, link.tsize)
    return body


def encode_pbnode(links: Sequence[PBLink], data: bytes | None) -> bytes:
    """A dag-pb block: Links first, then Data (the canonical order every IPFS tool writes).

    Links are written in the order given: sort directory links by name before calling.
    """
    parts = [_field(2, encode_link(link)) for link in links]
    if data is not None:
        parts.append(_field(1, data))
    return b"".join(parts)


def decode_pbnode(block: bytes | memoryview) -> PBNode:
    """Parse a dag-pb block strictly (only Links and Data; ValueError on anything else)."""
    links: list[PBLink] = []
    data: bytes | None = None
    for num, wt, value in _read_fields(block):
        if num == 2 and wt == 2 and isinstance(value, memoryview):
            if data is not None:
                raise ValueError("dag-pb Links after Data")
            links.append(_decode_link(value))
        elif num == 1 and wt == 2 and isinstance(value, memoryview):
            if data is not None:
                raise ValueError("dag-pb node with two Data fields")
            data = bytes(value)
        else:
            raise ValueError(f"unexpected dag-pb field {num} (wire type {wt})")
    return PBNode(tuple(links), data)


def _decode_link(buf: memoryview) -> PBLink:
    cid: Cid | None = None
    name: str | None = None
    tsize: int | None = None
    for num, wt, value in _read_fields(buf):
        if num == 1 and wt == 2 and isinstance(value, memoryview) and cid is None:
            cid = Cid.parse(value)
        elif num == 2 and wt == 2 and isinstance(value, memoryview) and name is None:
            name = bytes(value).decode("utf-8")
        elif num == 3 and wt == 0 and isinstance(value, int) and tsize is None:
            tsize = value
        else:
            raise ValueError(f"unexpected or repeated dag-pb link field {num}")
    if cid is None:
        raise ValueError("dag-pb link without a Hash")
    return PBLink(cid, name, tsize)


# -- UnixFS ------------------------------------------------------------------------------


def encode_unixfs(
    type_: NodeType,
    *,
    data: bytes | None = None,
    filesize: int | None = None,
    blocksizes: Sequence[int] = (),
    hash_type: int | None = None,
    fanout: int | None = None,
) -> bytes:
    """A UnixFS Data message, fields in number order, blocksizes unpacked (as go and js write)."""
    out = [_uint(1, int(type_))]
    if data is not None:
        out.append(_field(2, data))
    if filesize is not None:
        out.append(_uint(3, filesize))
    out.extend(_uint(4, b) for b in blocksizes)
    if hash_type is not None:
        out.append(_uint(5, hash_type))
    if fanout is not None:
        out.append(_uint(6, fanout))
    return b"".join(out)


def decode_unixfs(buf: bytes | memoryview) -> UnixFSData:
    """Parse a UnixFS Data message (packed or unpacked blocksizes; unknown fields skipped)."""
    type_: int | None = None
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: list[int] = []
    hash_type: int | None = None
    fanout: int | None = None
    for num, wt, value in _read_fields(buf):
        if num == 1 and isinstance(value, int) and wt == 0:
            type_ = value
        elif num == 2 and isinstance(value, memoryview):
            data = bytes(value)
        elif num == 3 and isinstance(value, int) and wt == 0:
            filesize = value
        elif num == 4 and isinstance(value, int) and wt == 0:
            blocksizes.append(value)
        elif num == 4 and isinstance(value, memoryview):  # packed repeated
            pos = 0
            while pos < len(value):
                size, pos = decode_varint(value, pos)
                blocksizes.append(size)
        elif num == 5 and isinstance(value, int) and wt == 0:
            hash_type = value
        elif num == 6 and isinstance(value, int) and wt == 0:
            fanout = value
    if type_ is None:
        raise ValueError("UnixFS data without a Type")
    try:
        node_type = NodeType(type_)
    except ValueError:
        raise ValueError(f"unknown UnixFS node type {type_}") from None
    return UnixFSData(node_type, data, filesize, tuple(blocksizes), hash_type, fanout)


def file_leaf_affixes(size: int) -> tuple[bytes, bytes]:
    """The bytes before and after a chunk of `size` bytes in a dag-pb UnixFS File leaf.

    A CIDv0 (non-raw) leaf block is `prefix + chunk + suffix`; hashing the three pieces in turn
    gives its digest without copying the chunk.
    """
    size_varint = encode_varint(size)
    inner_len = 1 + 1 + 1 + len(size_varint) + size + 1 + len(size_varint)
    if size == 0:  # no Data field at all: {Type: File, filesize: 0}
        return b"\x0a\x04\x08\x02\x18\x00", b""
    prefix = b"\x0a" + encode_varint(inner_len) + b"\x08\x02\x12" + size_varint
    return prefix, b"\x18" + size_varint
