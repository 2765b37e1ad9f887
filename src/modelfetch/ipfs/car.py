"""CAR files (v1, and the v1 payload of v2): streaming reader and writer."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final, NamedTuple

from modelfetch.errors import BadBlock, Truncated
from modelfetch.ipfs.cid import Cid, decode_varint, encode_varint, verify_block

#: Largest section (CID + block) accepted: blocks are at most 2 MiB in practice (bitswap limit).
MAX_SECTION: Final = 4 * 1024 * 1024 + 256
#: Largest CAR header accepted.
MAX_HEADER: Final = 64 * 1024
_V2_PRAGMA: Final = bytes.fromhex("0aa16776657273696f6e02")
_READ_SIZE: Final = 1024 * 1024


class CarBlock(NamedTuple):
    """One block of a CAR: its CID and bytes."""

    cid: Cid
    data: bytes


@dataclass(frozen=True, slots=True)
class CarHeader:
    """A CAR's header: format version (1, or 2 for a v2 wrapper) and root CIDs."""

    version: int
    roots: tuple[Cid, ...]


# -- a minimal DAG-CBOR decoder (enough for CAR headers) --------------------------------------


def _cbor_decode(buf: bytes, pos: int = 0) -> tuple[object, int]:
    if pos >= len(buf):
        raise ValueError("truncated CBOR")
    ib = buf[pos]
    major, info = ib >> 5, ib & 0x1F
    pos += 1
    if info < 24:
        arg = info
    elif info <= 27:
        n = 1 << (info - 24)
        if pos + n > len(buf):
            raise ValueError("truncated CBOR")
        arg = int.from_bytes(buf[pos : pos + n], "big")
        pos += n
    else:
        raise ValueError("indefinite-length CBOR is not DAG-CBOR")
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major in (2, 3):
        if pos + arg > len(buf):
            raise ValueError("truncated CBOR string")
        raw = buf[pos : pos + arg]
        return (raw if major == 2 else raw.decode("utf-8")), pos + arg
    if major == 4:
        items = []
        for _ in range(arg):
            item, pos = _cbor_decode(buf, pos)
            items.append(item)
        return items, pos
    if major == 5:
        mapping: dict[object, object] = {}
        for _ in range(arg):
            key, pos = _cbor_decode(buf, pos)
            value, pos = _cbor_decode(buf, pos)
            if not isinstance(key, str):
                raise ValueError("DAG-CBOR map key is not a string")
            mapping[key] = value
        return mapping, pos
    if major == 6:
        value, pos = _cbor_decode(buf, pos)
        if arg != 42 or not isinstance(value, bytes) or not value.startswith(b"\0"):
            raise ValueError(f"unexpected CBOR tag {arg}")
        return Cid.parse(value[1:]), pos
    if info == 20:
        return False, pos
    if info == 21:
        return True, pos
    if info == 22:
        return None, pos
    raise ValueError("unsupported CBOR simple value or float")


def _cbor_head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes((major << 5 | n,))
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes((major << 5 | info,)) + n.to_bytes(size, "big")
    raise ValueError("CBOR length too large")


def encode_header(roots: Iterable[Cid | str]) -> bytes:
    """A CARv1 header (varint length + DAG-CBOR `{roots, version: 1}`)."""
    cids = [bytes(Cid.parse(r)) for r in roots]
    body = _cbor_head(5, 2) + _cbor_head(3, 5) + b"roots" + _cbor_head(4, len(cids))
    for raw in cids:
        body += b"\xd8\x2a" + _cbor_head(2, len(raw) + 1) + b"\0" + raw
    body += _cbor_head(3, 7) + b"version" + b"\x01"
    return encode_varint(len(body)) + body


def _parse_header(raw: bytes) -> CarHeader:
    try:
        value, end = _cbor_decode(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadBlock(f"CAR header is not valid DAG-CBOR: {exc}") from None
    if end != len(raw) or not isinstance(value, dict):
        raise BadBlock("CAR header is not a single DAG-CBOR map")
    version = value.get("version")
    if version == 2 and raw == _V2_PRAGMA[1:]:
        return CarHeader(2, ())
    if version != 1:
        raise BadBlock(f"unsupported CAR version {version!r}")
    roots = value.get("roots")
    if not isinstance(roots, list) or not all(isinstance(r, Cid) for r in roots):
        raise BadBlock("CAR header roots is not a list of CIDs")
    return CarHeader(1, tuple(r for r in roots if isinstance(r, Cid)))


# -- streaming parser ------------------------------------------------------------------------


class CarParser:
    """A push parser: `feed()` bytes as they arrive, get back the complete blocks.

    Handles CARv1 and the data payload of CARv2. With `verify` (default), every block is hashed
    against its CID before it is returned (BadBlock otherwise). `close()` raises BadBlock if the
    stream ended inside a section (a CAR cut short).
    """

    def __init__(self, *, verify: bool = True) -> None:
        self.verify = verify
        self.header: CarHeader | None = None
        self._buf = bytearray()
        self._consumed = 0  # absolute stream offset of self._buf[0]
        self._skip_to = 0  # CARv2: absolute offset where the v1 payload starts
        self._payload_end: int | None = None  # CARv2: where it ends
        self._v2_pending = False
        self._done = False

    @property
    def roots(self) -> tuple[Cid, ...]:
        """The root CIDs (empty until the header has been read)."""
        return self.header.roots if self.header else ()

    def feed(self, data: bytes | bytearray | memoryview) -> list[CarBlock]:
        """Add bytes; return every block now complete, in stream order."""
        if self._done:
            return []
        self._buf += data
        out: list[CarBlock] = []
        buf = self._buf
        pos = 0
        while True:
            start = self._consumed + pos
            if start < self._skip_to:  # CARv2 padding before the payload
                step = min(self._skip_to - start, len(buf) - pos)
                pos += step
                if self._consumed + pos < self._skip_to:
                    break
                continue
            if self._payload_end is not None and start >= self._payload_end:
                self._done = True
                break
            if self._v2_pending:
                if len(buf) - pos < 40:
                    break
                data_offset = int.from_bytes(buf[pos + 16 : pos + 24], "little")
                data_size = int.from_bytes(buf[pos + 24 : pos + 32], "little")
                pos += 40
                if data_offset < self._consumed + pos:
                    raise BadBlock("CARv2 data offset points inside its header")
                self._skip_to = data_offset
                self._payload_end = data_offset + data_size
                self._v2_pending = False
                self.header = None
                continue
            try:
                size, body = decode_varint(buf, pos)
            except ValueError as exc:
                if len(buf) - pos < 10 and all(b & 0x80 for b in buf[pos:]):
                    break  # the length varint is still arriving
                raise BadBlock(f"CAR: bad section length at byte {start}: {exc}") from None
            limit = MAX_HEADER if self.header is None else MAX_SECTION
            if size > limit:
                raise BadBlock(f"CAR: section of {size} bytes at byte {start} is too large")
            if len(buf) - body < size:
                break
            section = bytes(buf[body : body + size])
            if self._payload_end is not None and self._consumed + body + size > self._payload_end:
                raise BadBlock("CARv2: a section runs past the end of the data payload")
            pos = body + size
            if self.header is None:
                self.header = _parse_header(section)
                if self.header.version == 2:
                    if start != 0:
                        raise BadBlock("CARv2 header inside a CARv2 payload")
                    self._v2_pending = True
                continue
            if size == 0:
                raise BadBlock(f"CAR: empty section at byte {start}")
            try:
                cid, off = Cid.read(section, 0)
            except ValueError as exc:
                raise BadBlock(f"CAR: bad CID in the section at byte {start}: {exc}") from None
            block = section[off:]
            if self.verify:
                verify_block(cid, block)
            out.append(CarBlock(cid, block))
        del buf[:pos]
        self._consumed += pos
        return out

    def close(self) -> None:
        """Declare the end of the stream: BadBlock if it ended inside the header or a section."""
        if self.header is None or self._v2_pending:
            raise BadBlock("CAR: the stream ended before its header was complete")
        if self._done:
            return
        if self._payload_end is not None and self._consumed + len(self._buf) < self._payload_end:
            raise BadBlock("CARv2: the stream ended before the end of its data payload")
        if self._buf:
            raise BadBlock(
                f"CAR: the stream ended inside a section ({len(self._buf)} bytes left over at "
                f"byte {self._consumed}): it was cut short"
            )


class CarReader:
    """Blocks of a CAR held in memory or read from a binary file, in order.

    >>> reader = read_car(write_car(["bafkqaaa"], []))
    >>> [str(r) for r in reader.roots], list(reader)
    (['bafkqaaa'], [])
    """

    def __init__(
        self, source: bytes | bytearray | memoryview | BinaryIO, *, verify: bool = True
    ) -> None:
        self._source = source
        self._parser = CarParser(verify=verify)
        self._pending: list[CarBlock] = []
        self._chunks = self._read_chunks()
        while self._parser.header is None or self._parser._v2_pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._parser.close()
                break
            self._pending.extend(self._parser.feed(chunk))

    @property
    def header(self) -> CarHeader:
        """The CAR's header (for CARv2: that of its v1 payload)."""
        assert self._parser.header is not None
        return self._parser.header

    @property
    def roots(self) -> tuple[Cid, ...]:
        """The root CIDs named in the header."""
        return self.header.roots

    def _read_chunks(self) -> Iterator[bytes | memoryview]:
        src = self._source
        if isinstance(src, bytes | bytearray | memoryview):
            mv = memoryview(src)
            for i in range(0, len(mv), _READ_SIZE):
                yield mv[i : i + _READ_SIZE]
            return
        while chunk := src.read(_READ_SIZE):
            yield chunk

    def __iter__(self) -> Iterator[CarBlock]:
        yield from self._pending
        self._pending = []
        for chunk in self._chunks:
            yield from self._parser.feed(chunk)
        self._parser.close()


def read_car(
    source: bytes | bytearray | memoryview | BinaryIO, *, verify: bool = True
) -> CarReader:
    """Open a CAR (bytes or a binary file): `.roots`, then iterate `(cid, data)` blocks.

    Every block is hashed against its CID as it is read unless `verify=False`; a bad block, a
    malformed or truncated CAR raise BadBlock.
    """
    return CarReader(source, verify=verify)


class AsyncCarReader:
    """Blocks of a CAR arriving as an async stream of byte chunks (e.g. an HTTP body).

    `await reader.read_header()` gives the header; `async for block in reader` the blocks.
    """

    def __init__(self, chunks: AsyncIterable[bytes], *, verify: bool = True) -> None:
        self._chunks = chunks.__aiter__()
        self._parser = CarParser(verify=verify)
        self._pending: deque[CarBlock] = deque()
        self._ended = False

    async def _more(self) -> bool:
        if self._ended:
            return False
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self._ended = True
            try:
                self._parser.close()
            except BadBlock as exc:  # a stream cut short: what came is good, ask for the rest
                raise Truncated(str(exc)) from None
            return False
        self._pending.extend(self._parser.feed(chunk))
        return True

    async def read_header(self) -> CarHeader:
        """Read up to the end of the header and return it."""
        while self._parser.header is None or self._parser._v2_pending:
            if not await self._more():
                break
        assert self._parser.header is not None
        return self._parser.header

    async def next_block(self) -> CarBlock | None:
        """The next block, or None at the end of a complete CAR."""
        while not self._pending:
            if not await self._more():
                return None
        return self._pending.popleft()

    def __aiter__(self) -> AsyncIterator[CarBlock]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[CarBlock]:
        while (block := await self.next_block()) is not None:
            yield block


# -- writer ----------------------------------------------------------------------------------


def iter_car(
    roots: Iterable[Cid | str], blocks: Iterable[tuple[Cid | str, bytes]]
) -> Iterator[bytes]:
    """A CARv1 as byte pieces (header, then one piece per block), for streaming out."""
    yield encode_header(roots)
    for cid, data in blocks:
        raw = bytes(Cid.parse(cid))
        yield encode_varint(len(raw) + len(data)) + raw
        yield data


def write_car(roots: Iterable[Cid | str], blocks: Iterable[tuple[Cid | str, bytes]]) -> bytes:
    """A CARv1 holding `blocks` (in the given order) under header `roots`."""
    return b"".join(iter_car(roots, blocks))
