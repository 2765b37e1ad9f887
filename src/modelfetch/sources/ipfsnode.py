"""An IPFS node's RPC as an origin: the machine's own node, a trustless block source.

The file's CID is resolved from the model's directory CID through verified directory blocks
(`block/get`), and its bytes rebuilt from verified leaves, `window` blocks in flight: the
node (and the peers it fetches from over bitswap) is trusted with nothing. Configured with
`[ipfs] rpc = ["http://127.0.0.1:5001"]`; tried before the gateways.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from ..config import IPFSSettings
from ..errors import BadBlock, SourceError, Stalled
from ..events import Layer
from ..hashes import Identity
from ..httpclient import Client
from ..ipfs.blockindex import fetch_index
from ..ipfs.cid import Cid
from ..ipfs.dagfile import DagReader
from ..ipfs.rpc import RpcBlocks, rpc_base
from .base import ByteStream, Proof


@dataclass
class NodeOrigin:
    """One node's RPC for one file (`root`: the model's directory CID, `path` inside it)."""

    settings: IPFSSettings
    rpc: str
    root: str
    path: str
    layer: Layer = "ipfs"
    _resolved: dict[str, Cid] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return rpc_base(self.rpc)

    @property
    def tries(self) -> int:
        return self.settings.retries

    @property
    def proof(self) -> Proof:
        return "blocks"  # every block is hash-checked against its CID on arrival

    @property
    def distrustable(self) -> bool:
        return True

    def blocks(self, client: Client) -> RpcBlocks:
        return RpcBlocks(
            client,
            self.rpc,
            timeout=self.settings.timeout,
            connect_timeout=self.settings.connect_timeout,
        )

    async def file_cid(self, client: Client) -> Cid:
        """The file's CID, walked from the directory CID through verified blocks (cached)."""
        if "cid" not in self._resolved:
            try:
                cid = await DagReader(self.blocks(client)).resolve(self.root, self.path)
            except KeyError as exc:
                raise Stalled(
                    f"{self.base_url}: the node found no peer with block {exc.args[0]} within "
                    f"{self.settings.timeout:g} s"
                ) from None
            self._resolved["cid"] = cid
        return self._resolved["cid"]

    async def open(self, client: Client, start: int, end: int | None) -> ByteStream:
        cid = await self.file_cid(client)
        return NodeByteStream(self, client, cid, start, end)

    def delay(self, attempt: int, error: SourceError) -> float:
        return self.settings.pause

    async def identity(self, client: Client) -> Identity | None:
        """The file's CID, size and DAG (its block index: every internal node fetched from
        the node and checked against its CID; the leaves then check the bytes)."""
        cid = await self.file_cid(client)
        try:
            dag = await fetch_index(self.blocks(client), cid)
        except KeyError as exc:
            raise Stalled(f"{self.base_url}: block {exc.args[0]} not found in time") from None
        return Identity(size=dag.size, cid=str(cid), evidence="ipfs", dag=dag)


class NodeByteStream:
    """Bytes [start, end) of a file rebuilt from a node's verified blocks."""

    content_type = "application/vnd.ipld.raw"
    checks_at_end = True

    def __init__(
        self, origin: NodeOrigin, client: Client, cid: Cid, start: int, end: int | None
    ) -> None:
        self._blocks = origin.blocks(client)
        self._cid = cid
        self.url = f"{origin.base_url}/api/v0/block/get?arg={cid}"
        self.offset = start
        self.end = end
        self.length: int | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for piece in self._blocks.iter_file(self._cid, offset=self.offset, end=self.end):
                yield piece
        except KeyError as exc:
            raise Stalled(f"{self.url}: block {exc.args[0]} not found in time") from None
        except ValueError as exc:  # an offset past the end: the file is not the one expected
            raise BadBlock(f"{self._cid}: {exc}") from None

    def close(self) -> None:
        pass  # each block is its own request, finished when it is read


__all__ = ["NodeByteStream", "NodeOrigin"]
