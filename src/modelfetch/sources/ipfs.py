"""IPFS gateways as a source: verified blocks and CARs where offered, else plain paths.

A gateway that answers `?format=raw` for the probe CID is used as a trustless gateway: the
file's CID is resolved from the model's directory CID block by block, and the bytes come
from a CAR (`?format=car&dag-scope=entity&entity-bytes=<offset>:*`) whose every block is
re-hashed against its CID before it is written. Other gateways are path gateways
(`<gateway>/ipfs/<cid>/<path>`): their bytes prove nothing and are checked against the
file's identity like any other source's: its SHA-256, or, for a file known only by its CID,
the leaves of the DAG a trustless gateway gave (never a CID recomputed with assumed chunking).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

from ..config import IPFSSettings
from ..errors import HTTPStatus, SourceError
from ..events import Layer
from ..hashes import Identity
from ..httpclient import Client
from ..ipfs.blockindex import fetch_index
from ..ipfs.cid import Cid
from ..ipfs.dagfile import DagReader, iter_car_stream_file
from .base import ByteStream, FileRequest, Proof
from .http import HTTPByteStream, open_range, request

if TYPE_CHECKING:
    from .ipfsnode import NodeOrigin

PROBE_CID = "bafkqaaa"  # the empty identity CID: every gateway can answer it without a lookup
RAW = "application/vnd.ipld.raw"
CAR = "application/vnd.ipld.car"
Mode = Literal["trustless", "path"]
REFUSES_PLAIN = (400, 406, 415, 501)  # how trustless-only gateways answer a plain request


@dataclass
class GatewayOrigin:
    """One gateway for one file: `retries` tries with a fixed pause between them."""

    source: IPFSGatewaySource
    base_url: str
    root: str  # the model's directory CID
    path: str
    layer: Layer = "ipfs"

    @property
    def settings(self) -> IPFSSettings:
        return self.source.settings

    @property
    def tries(self) -> int:
        return self.settings.retries

    @property
    def url(self) -> str:
        return f"{self.base_url}/ipfs/{self.root}/{quote(self.path)}"

    @property
    def proof(self) -> Proof:
        """A gateway known to be trustless sends verified blocks; any other, plain bytes."""
        return "blocks" if self.source.known_mode(self.base_url) == "trustless" else "bytes"

    @property
    def distrustable(self) -> bool:
        return True

    async def open(self, client: Client, start: int, end: int | None) -> ByteStream:
        # A gateway is asked for plain bytes unless it is already known to be trustless; only
        # one that refuses them (trustless-only) costs a probe. The bytes are checked either
        # way: plain ones against the file's identity, a CAR's block by block.
        if self.source.known_mode(self.base_url) != "trustless":
            try:
                return await open_range(
                    client,
                    self.url,
                    start,
                    end,
                    connect_timeout=self.settings.connect_timeout,
                    stall_timeout=self.settings.timeout,
                )
            except HTTPStatus as exc:
                refused_plain = exc.status in REFUSES_PLAIN
                if not refused_plain or await self.source.mode(client, self.base_url) == "path":
                    raise
        file_cid = await self.source.resolve(client, self.base_url, self.root, self.path)
        return await self._open_car(client, file_cid, start, end)

    async def _open_car(
        self, client: Client, file_cid: Cid, start: int, end: int | None
    ) -> ByteStream:
        last = "*" if end is None else str(end - 1)
        url = (
            f"{self.base_url}/ipfs/{file_cid}?format=car&dag-scope=entity"
            f"&entity-bytes={start}:{last}"
        )
        resp = await request(
            client,
            "GET",
            url,
            headers={"Accept": f"{CAR};version=1;order=dfs;dups=n"},
            connect_timeout=self.settings.connect_timeout,
            stall_timeout=self.settings.timeout,
        )
        if not resp.content_type.startswith(CAR):
            await resp.release()
            raise HTTPStatus(502, f"{url} did not answer with a CAR")
        return VerifiedCarStream(HTTPByteStream(resp, 0), file_cid, start, end)

    def delay(self, attempt: int, error: SourceError) -> float:
        return self.settings.pause

    async def identity(self, client: Client) -> Identity | None:
        """The file's CID, size and DAG (its block index: every internal node fetched and
        checked against its CID), from a trustless gateway; None from a path gateway.

        The DAG is what checks the file's bytes from any origin, leaf by leaf, whatever
        chunker made the CID.
        """
        if await self.source.mode(client, self.base_url) != "trustless":
            return None  # a path gateway's word proves nothing
        cid = await self.source.resolve(client, self.base_url, self.root, self.path)

        async def get(c: Cid) -> bytes:
            return await self.source.block(client, self.base_url, c)

        dag = await fetch_index(get, cid)
        return Identity(size=dag.size, cid=str(cid), evidence="ipfs", dag=dag)


class VerifiedCarStream:
    """The bytes of a file rebuilt from a CAR response, every block checked against its CID."""

    content_type = CAR
    checks_at_end = True  # reading past the last byte checks the CAR held nothing else

    def __init__(self, body: HTTPByteStream, file_cid: Cid, start: int, end: int | None) -> None:
        self._body = body
        self._cid = file_cid
        self.url = body.url
        self.offset = start
        self.end = end
        self.length: int | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        pieces = iter_car_stream_file(
            self._body.chunks(), self._cid, offset=self.offset, end=self.end
        )
        async for piece in pieces:
            yield piece

    def close(self) -> None:
        self._body.close()


@dataclass
class IPFSGatewaySource:
    """A model published as one IPFS directory, fetched through the configured gateways."""

    settings: IPFSSettings
    layer: Layer = "ipfs"
    _modes: dict[str, asyncio.Future[Mode]] = field(default_factory=dict)
    _resolved: dict[tuple[str, str], Cid] = field(default_factory=dict)

    def origins(self, request: FileRequest) -> list[GatewayOrigin | NodeOrigin]:
        if request.ipfs_cid is None:
            return []
        from .ipfsnode import NodeOrigin  # a machine's own node first: `[ipfs] rpc`

        nodes = [
            NodeOrigin(self.settings, rpc, request.ipfs_cid, request.path)
            for rpc in self.settings.rpc
        ]
        return nodes + [
            GatewayOrigin(self, gateway, request.ipfs_cid, request.path)
            for gateway in self.settings.gateways
        ]

    def why_none(self, request: FileRequest) -> str:
        if not self.settings.gateways and not self.settings.rpc:
            return "no IPFS gateway or node RPC is configured"
        return "the model has no IPFS CID (configure one, or publish the model)"

    def why_unverifiable(self, request: FileRequest) -> str | None:
        """Why the model's CID did not make the file checkable (for the failure report)."""
        if request.ipfs_cid is None:
            return None
        if not self.settings.gateways:
            return f"the model has IPFS CID {request.ipfs_cid} but no gateway is configured"
        modes = {g: self.known_mode(g) for g in self.settings.gateways}
        trustless = [g for g, m in modes.items() if m == "trustless"]
        if trustless:
            return (
                f"the model's IPFS CID {request.ipfs_cid} checks bytes only through the DAG a "
                f"trustless gateway gives, and none gave it ({', '.join(trustless)} failed)"
            )
        plain = ", ".join(g for g, m in modes.items() if m == "path")
        unknown = ", ".join(g for g, m in modes.items() if m is None)
        seen = "; ".join(
            part
            for part in (
                f"plain paths only: {plain}" if plain else "",
                f"not probed: {unknown}" if unknown else "",
            )
            if part
        )
        return (
            f"the model's IPFS CID {request.ipfs_cid} checks bytes only through the DAG a "
            f"trustless gateway gives, and no trustless gateway is configured ({seen})"
        )

    def known_mode(self, gateway: str) -> Mode | None:
        """What a probe found about `gateway` in this run, if it was probed and finished."""
        probe = self._modes.get(gateway)
        return probe.result() if probe is not None and probe.done() else None

    async def mode(self, client: Client, gateway: str) -> Mode:
        """Whether `gateway` serves verifiable blocks (probed once per run)."""
        if gateway not in self._modes:
            self._modes[gateway] = asyncio.ensure_future(self._probe(client, gateway))
        return await asyncio.shield(self._modes[gateway])

    async def _probe(self, client: Client, gateway: str) -> Mode:
        try:
            resp = await request(
                client,
                "GET",
                f"{gateway}/ipfs/{PROBE_CID}?format=raw",
                headers={"Accept": RAW},
                connect_timeout=self.settings.connect_timeout,
                stall_timeout=self.settings.timeout,
            )
        except SourceError:
            return "path"  # the real request will fail, or succeed, on its own terms
        await resp.release()
        return "trustless" if resp.content_type.startswith(RAW) else "path"

    async def block(self, client: Client, gateway: str, cid: Cid) -> bytes:
        """One raw block (`?format=raw`); the caller verifies it against `cid`."""
        resp = await request(
            client,
            "GET",
            f"{gateway}/ipfs/{cid}?format=raw",
            headers={"Accept": RAW},
            connect_timeout=self.settings.connect_timeout,
            stall_timeout=self.settings.timeout,
        )
        return await resp.read(limit=2 << 20)  # an IPFS block is at most 2 MiB

    async def resolve(self, client: Client, gateway: str, root: str, path: str) -> Cid:
        """The CID of `<root>/<path>`, walking verified directory blocks from `gateway`."""
        key = (root, path)
        if key not in self._resolved:

            async def get(cid: Cid) -> bytes:
                return await self.block(client, gateway, cid)

            self._resolved[key] = await DagReader(get).resolve(root, path)
        return self._resolved[key]


@dataclass(frozen=True)
class GatewayStatus:
    """What a probe of one gateway found."""

    url: str
    ok: bool
    latency_ms: float | None
    trustless: bool
    detail: str

    def to_dict(self) -> dict[str, object]:
        return {
            "url": self.url,
            "ok": self.ok,
            "latency_ms": self.latency_ms,
            "trustless": self.trustless,
            "detail": self.detail,
        }


async def check_gateway(client: Client, gateway: str, settings: IPFSSettings) -> GatewayStatus:
    """Probe `<gateway>/ipfs/bafkqaaa` as a path and as a raw block: status and latency."""
    started = time.monotonic()
    try:
        resp = await request(
            client,
            "GET",
            f"{gateway}/ipfs/{PROBE_CID}",
            connect_timeout=settings.connect_timeout,
            stall_timeout=settings.timeout,
        )
        await resp.release()
        detail, plain_ok = f"HTTP {resp.status}", True
    except SourceError as exc:
        detail, plain_ok = f"{type(exc).__name__}: {exc}", False
    latency = round((time.monotonic() - started) * 1000, 1)
    trustless = await IPFSGatewaySource(settings).mode(client, gateway) == "trustless"
    if trustless and not plain_ok:
        detail = "trustless only (raw blocks and CARs)"
    ok = plain_ok or trustless
    return GatewayStatus(gateway, ok, latency if ok else None, trustless, detail)
