"""IPFS path gateways as a source: `<gateway>/ipfs/<cid>/<path>`, tried in order."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import aiohttp

from ..config import IPFSSettings
from ..errors import SourceError
from ..events import Layer
from ..hashes import Identity
from .base import ByteStream, FileRequest
from .http import open_range


@dataclass
class GatewayOrigin:
    """One gateway for one file: `retries` tries with a fixed pause between them."""

    settings: IPFSSettings
    base_url: str
    url: str
    layer: Layer = "ipfs"

    @property
    def tries(self) -> int:
        return self.settings.retries

    async def open(self, session: aiohttp.ClientSession, offset: int) -> ByteStream:
        return await open_range(
            session,
            self.url,
            offset,
            connect_timeout=self.settings.connect_timeout,
            stall_timeout=self.settings.timeout,
        )

    def delay(self, attempt: int, error: SourceError) -> float:
        return self.settings.pause


class IPFSGatewaySource:
    """A model published as one IPFS directory, fetched through path gateways."""

    layer: Layer = "ipfs"

    def __init__(self, settings: IPFSSettings, cids: dict[str, str] | None = None) -> None:
        self.settings = settings
        self._cids = dict(cids or {})  # model name -> directory CID learned elsewhere

    def cid(self, request: FileRequest) -> str | None:
        if request.model.ipfs is not None:
            return request.model.ipfs.cid
        return self._cids.get(request.model.name)

    def origins(self, request: FileRequest) -> list[GatewayOrigin]:
        cid = self.cid(request)
        if cid is None:
            return []
        path = quote(request.path)
        return [
            GatewayOrigin(self.settings, gateway, f"{gateway}/ipfs/{cid}/{path}")
            for gateway in self.settings.gateways
        ]

    async def identity(
        self, session: aiohttp.ClientSession, request: FileRequest
    ) -> Identity | None:
        return None  # a path gateway's answer proves nothing about the bytes
