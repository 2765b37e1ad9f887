"""What every source offers the engine: origins to try for a file, and their byte streams."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from ..catalog import ModelSpec
from ..errors import SourceError
from ..events import Layer
from ..hashes import Identity


class ByteStream(Protocol):
    """An open response body: bytes of the file from `offset` on."""

    url: str
    offset: int  # position in the file of the first byte (0 when a Range was ignored)
    length: int | None  # bytes announced by the origin, if it said
    content_type: str  # lower case, "" when not given

    def chunks(self) -> AsyncIterator[bytes]: ...
    def close(self) -> None: ...


class Origin(Protocol):
    """One place one file can come from (a gateway, a hub), with its retry policy."""

    @property
    def layer(self) -> Layer: ...
    @property
    def base_url(self) -> str:
        """What records and reports name: the gateway or hub base URL."""
        ...

    @property
    def tries(self) -> int: ...

    async def open(self, session: aiohttp.ClientSession, offset: int) -> ByteStream:
        """Start sending the file from byte `offset` (a Range request when offset > 0)."""
        ...

    def delay(self, attempt: int, error: SourceError) -> float:
        """Seconds to wait before try `attempt + 1` after `error`."""
        ...

    async def identity(self, session: aiohttp.ClientSession) -> Identity | None:
        """Evidence of what the file must be (size, hashes, CID), or None if it has none."""
        ...


@dataclass(frozen=True)
class FileRequest:
    """The file the engine wants, as a source sees it."""

    model: ModelSpec
    path: str
    ipfs_cid: str | None = None  # the model's directory CID, wherever the engine learned it


class Source(Protocol):
    """A layer of the chain. Knows the network, nothing of the store."""

    @property
    def layer(self) -> Layer: ...

    def origins(self, request: FileRequest) -> Sequence[Origin]:
        """Where to try, in order; empty when this source does not have the model."""
        ...

    def distrust(self, base_url: str) -> None:
        """`base_url` sent bytes that failed verification: do not offer it again this run."""
        ...
