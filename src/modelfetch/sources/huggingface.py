"""The Hugging Face hub as a source: resolve URLs, HEAD metadata, typed errors, backoff."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp

from .. import hub
from ..catalog import HuggingFaceRef
from ..config import HuggingFaceSettings, hf_token_path
from ..errors import SourceError, Unverifiable
from ..events import Layer
from ..hashes import Identity, is_sha256
from .base import ByteStream, FileRequest
from .http import backoff_delay, open_range, request, sleep_for_retry


def describe_hub_error(resp: aiohttp.ClientResponse) -> str:
    """The hub's typed error (X-Error-Code) as a sentence naming the URL and what to do."""
    return hub.describe_hub_error(
        resp.status,
        resp.headers,
        str(resp.url),
        reason=resp.reason or "",
        token_sent="Authorization" in resp.request_info.headers,
        token_path=hf_token_path(os.environ),
    )


@dataclass
class HuggingFaceOrigin:
    """One file on the hub; retried with doubling waits, honouring Retry-After."""

    settings: HuggingFaceSettings
    url: str
    headers: dict[str, str]
    on_commit: Callable[[str], None]  # tells the source which commit the branch pointed at
    layer: Layer = "huggingface"

    @property
    def base_url(self) -> str:
        return self.settings.endpoint

    @property
    def tries(self) -> int:
        return self.settings.retries

    async def open(self, session: aiohttp.ClientSession, offset: int) -> ByteStream:
        return await open_range(
            session,
            self.url,
            offset,
            headers=self.headers,
            connect_timeout=self.settings.connect_timeout,
            stall_timeout=self.settings.timeout,
            describe=describe_hub_error,
        )

    def delay(self, attempt: int, error: SourceError) -> float:
        return backoff_delay(
            attempt, error, base=self.settings.backoff, cap=self.settings.max_backoff
        )

    async def identity(self, session: aiohttp.ClientSession) -> Identity | None:
        """Size and hash from a HEAD of the resolve URL, retried like a download."""
        for attempt in range(self.tries):
            try:
                identity, commit = await self._head(session)
            except SourceError as exc:
                if not exc.retryable or attempt + 1 == self.tries:
                    raise
                await sleep_for_retry(self.delay(attempt, exc))
                continue
            if commit is not None:
                self.on_commit(commit)
            return identity
        return None

    async def _head(self, session: aiohttp.ClientSession) -> tuple[Identity, str | None]:
        # Redirects are followed only while they stay on the hub (renamed repos); the LFS
        # redirect to the CDN carries the X-Linked-* headers we came for, so stop there.
        def same_host_redirect(resp: aiohttp.ClientResponse) -> bool:
            location = resp.headers.get("Location", "")
            return "X-Linked-Etag" not in resp.headers and location.startswith("/")

        resp = await request(
            session,
            "HEAD",
            self.url,
            headers={**self.headers, "Accept-Encoding": "identity"},
            connect_timeout=self.settings.connect_timeout,
            stall_timeout=self.settings.timeout,
            follow=same_host_redirect,
            describe=describe_hub_error,
        )
        try:
            commit = resp.headers.get("X-Repo-Commit", "").strip().lower()
            return _identity_from_headers(resp), commit if _is_hex(commit, 40) else None
        finally:
            resp.release()


class HuggingFaceSource:
    """Files of models and datasets on a Hugging Face-compatible hub (HF_ENDPOINT)."""

    layer: Layer = "huggingface"

    def __init__(self, settings: HuggingFaceSettings) -> None:
        self.settings = settings
        # Branch -> commit as the hub reported it (X-Repo-Commit): once known, every file of
        # the model is fetched from that one commit, even if the branch moves meanwhile.
        self._commits: dict[HuggingFaceRef, str] = {}

    def url(self, request: FileRequest) -> str | None:
        ref = request.model.huggingface
        if ref is None:
            return None
        prefix = "datasets/" if ref.type == "dataset" else ""
        path = quote(ref.repo_path(request.path))
        revision = quote(self._commits.get(ref, ref.revision), safe="")
        return f"{self.settings.endpoint}/{prefix}{ref.repo}/resolve/{revision}/{path}"

    def distrust(self, base_url: str) -> None:
        """The hub stays in use: a mismatch there more likely means a stale manifest."""

    def _headers(self) -> dict[str, str]:
        token = self.settings.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def origins(self, request: FileRequest) -> list[HuggingFaceOrigin]:
        url = self.url(request)
        if url is None:
            return []
        ref = request.model.huggingface
        assert ref is not None  # url() is None otherwise

        def pin(commit: str) -> None:
            self._commits.setdefault(ref, commit)

        return [HuggingFaceOrigin(self.settings, url, self._headers(), pin)]


def _identity_from_headers(resp: aiohttp.ClientResponse) -> Identity:
    h = resp.headers
    linked = _unquote_etag(h.get("X-Linked-Etag"))
    etag = _unquote_etag(h.get("ETag"))
    size_text = h.get("X-Linked-Size") or (h.get("Content-Length") if resp.status == 200 else None)
    size = int(size_text) if size_text and size_text.isdigit() else None
    if linked and is_sha256(linked):
        return Identity(size=size, sha256=linked, evidence="huggingface")
    if etag and _is_hex(etag, 40):
        return Identity(size=size, git_sha1=etag, evidence="huggingface")
    if etag and is_sha256(etag):
        return Identity(size=size, sha256=etag, evidence="huggingface")
    raise Unverifiable(
        f"the hub gave no usable hash for {resp.url} (ETag {json.dumps(etag)}): "
        "cannot verify the file; add it to the manifest"
    )


def _is_hex(value: str, length: int) -> bool:
    return len(value) == length and all(c in "0123456789abcdef" for c in value)


def _unquote_etag(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"').lower()
