"""What every source offers the engine: origins to try for a file, and their byte streams."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from ..catalog import ModelSpec
from ..errors import SourceError
from ..events import Layer
from ..hashes import Identity

if TYPE_CHECKING:
    from ..httpclient import Client

Proof = Literal["bytes", "blocks"]
"""What an origin's bytes prove by themselves: nothing ("bytes": they are checked against the
file's hashes) or their own correctness ("blocks": rebuilt from blocks checked against the
file's CID, as a trustless gateway's)."""


class ByteStream(Protocol):
    """An open response body: bytes of the file from `offset` on."""

    url: str
    offset: int  # position in the file of the first byte (0 when a Range was ignored)
    length: int | None  # bytes announced by the origin, if it said
    content_type: str  # lower case, "" when not given

    def chunks(self) -> AsyncIterator[bytes | memoryview]: ...
    def close(self) -> None: ...


class Origin(Protocol):
    """One place one file can come from (a gateway, a hub, a mirror), with its retry policy."""

    @property
    def layer(self) -> Layer: ...
    @property
    def base_url(self) -> str:
        """What records, scores and reports name: the gateway, hub or mirror base URL."""
        ...

    @property
    def tries(self) -> int: ...

    @property
    def proof(self) -> Proof: ...

    async def open(self, client: Client, start: int, end: int | None) -> ByteStream:
        """Start sending bytes [start, end) of the file (to its end when `end` is None)."""
        ...

    def delay(self, attempt: int, error: SourceError) -> float:
        """Seconds to wait before try `attempt + 1` after `error`."""
        ...

    async def identity(self, client: Client) -> Identity | None:
        """Evidence of what the file must be (size, hashes, CID), or None if it has none."""
        ...


@dataclass(frozen=True)
class FileRequest:
    """The file the engine wants, as a source sees it."""

    model: ModelSpec
    path: str
    ipfs_cid: str | None = None  # the model's directory CID, wherever the engine learned it
    identity: Identity = field(default_factory=Identity)  # what is already known of the file


@dataclass(frozen=True)
class Skip:
    """Why a source offers no origin for a file (named in the failure report)."""

    layer: Layer
    reason: str


class Source(Protocol):
    """A layer of the chain. Knows the network, nothing of the store."""

    @property
    def layer(self) -> Layer: ...

    def origins(self, request: FileRequest) -> Sequence[Origin]:
        """Every origin that may have the file; empty when this source does not have it."""
        ...

    def why_none(self, request: FileRequest) -> str:
        """Why `origins(request)` is empty, as the failure report says it."""
        ...
