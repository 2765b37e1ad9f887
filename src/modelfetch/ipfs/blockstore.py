"""Where verified DAG reads get blocks from: the getter protocol, CAR and in-memory stores."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping
from typing import BinaryIO, Final

from modelfetch.errors import BadBlock, Truncated
from modelfetch.ipfs.car import AsyncCarReader, read_car
from modelfetch.ipfs.cid import Cid

#: A block source: async callable returning the bytes of a block (e.g. a gateway
#: `GET /ipfs/{cid}?format=raw`). It may return wrong bytes: readers re-hash everything. It
#: should raise BadBlock (or a SourceError) when the block cannot be had; KeyError and
#: LookupError are reported as a missing block.
BlockGetter = Callable[[Cid], Awaitable[bytes]]

#: Bytes of out-of-order blocks a streaming CAR getter keeps before giving up.
MAX_BUFFERED: Final = 64 * 1024 * 1024
#: Bytes of already-delivered blocks a streaming CAR getter keeps for repeated links (a file of
#: zeros links the same leaf many times; a CAR sends it once).
RECENT_BYTES: Final = 16 * 1024 * 1024


class MemoryBlockStore:
    """Blocks held in memory (e.g. a whole CAR), usable as a BlockGetter; records which were read.

    `unused()` lists blocks never asked for: a CAR answering one request should hold none.
    """

    def __init__(
        self,
        blocks: Mapping[Cid, bytes] | Iterable[tuple[Cid, bytes]] = (),
        *,
        roots: Iterable[Cid] = (),
    ) -> None:
        items = blocks.items() if isinstance(blocks, Mapping) else blocks
        self.blocks: dict[Cid, bytes] = {Cid.parse(c): bytes(d) for c, d in items}
        self.roots: tuple[Cid, ...] = tuple(roots)
        self.used: set[Cid] = set()

    @classmethod
    def from_car(
        cls, source: bytes | bytearray | memoryview | BinaryIO, *, verify: bool = True
    ) -> MemoryBlockStore:
        """All blocks of a CAR (each hashed against its CID unless `verify=False`)."""
        reader = read_car(source, verify=verify)
        return cls(list(reader), roots=reader.roots)

    def put(self, cid: Cid | str, data: bytes) -> None:
        """Add one block."""
        self.blocks[Cid.parse(cid)] = bytes(data)

    async def __call__(self, cid: Cid) -> bytes:
        try:
            data = self.blocks[cid]
        except KeyError:
            raise BadBlock(f"block {cid} is missing (not in the CAR or store)") from None
        self.used.add(cid)
        return data

    def unused(self) -> list[Cid]:
        """Blocks present but never requested, in insertion order."""
        return [c for c in self.blocks if c not in self.used]


class CarStreamBlocks:
    """A BlockGetter reading a CAR stream as it arrives (a trustless gateway `?format=car`).

    Blocks are expected in the order a DAG walk asks for them (what gateways send); others are
    kept (up to MAX_BUFFERED bytes) until asked for, and recently delivered ones (RECENT_BYTES)
    for links repeated in the DAG, which a CAR carries once. `check_complete()` afterwards
    reports leftover blocks (extra data the request did not need).
    """

    def __init__(
        self,
        chunks: AsyncIterable[bytes],
        *,
        max_buffered: int = MAX_BUFFERED,
        recent_bytes: int = RECENT_BYTES,
    ) -> None:
        self._reader = AsyncCarReader(chunks, verify=False)  # the DAG reader re-hashes
        self._waiting: dict[Cid, bytes] = {}
        self._buffered = 0
        self._max = max_buffered
        self._recent: OrderedDict[Cid, bytes] = OrderedDict()
        self._recent_size = 0
        self._recent_max = recent_bytes
        self._delivered: set[Cid] = set()
        self.roots: tuple[Cid, ...] = ()

    def _deliver(self, cid: Cid, data: bytes) -> bytes:
        self._delivered.add(cid)
        if len(data) <= self._recent_max and cid not in self._recent:
            self._recent[cid] = data
            self._recent_size += len(data)
            while self._recent_size > self._recent_max:
                _, old = self._recent.popitem(last=False)
                self._recent_size -= len(old)
        return data

    async def read_header(self) -> tuple[Cid, ...]:
        """Read the CAR header; returns its roots."""
        self.roots = (await self._reader.read_header()).roots
        return self.roots

    async def __call__(self, cid: Cid) -> bytes:
        if not self.roots:
            await self.read_header()
        data = self._waiting.pop(cid, None)
        if data is not None:
            self._buffered -= len(data)
            return self._deliver(cid, data)
        data = self._recent.get(cid)
        if data is not None:
            self._recent.move_to_end(cid)
            return data
        if cid in self._delivered:
            raise BadBlock(
                f"block {cid} was sent earlier in the CAR and is no longer held: "
                "ask again from this offset"
            )
        while (block := await self._reader.next_block()) is not None:
            if block.cid == cid:
                return self._deliver(cid, block.data)
            if block.cid in self._delivered:
                continue  # a duplicate of a block already used
            if block.cid not in self._waiting:
                self._waiting[block.cid] = block.data
                self._buffered += len(block.data)
                if self._buffered > self._max:
                    raise BadBlock(
                        f"CAR stream: over {self._max} bytes of blocks arrived before {cid} "
                        "was sent (wrong order or unrelated data)"
                    )
        raise Truncated(f"block {cid} is missing: the CAR stream ended without it")

    async def check_complete(self) -> None:
        """Read to the end; BadBlock if blocks were sent that the walk never used."""
        extra = list(self._waiting)
        while (block := await self._reader.next_block()) is not None:
            extra.append(block.cid)
        if extra:
            names = ", ".join(str(c) for c in extra[:5])
            more = f" (and {len(extra) - 5} more)" if len(extra) > 5 else ""
            raise BadBlock(
                f"CAR holds {len(extra)} block(s) outside the requested DAG: {names}{more}"
            )
