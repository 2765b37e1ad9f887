"""The Hugging Face hub as a source: resolve URLs, HEAD metadata, typed errors, backoff."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from .. import hub
from ..catalog import HuggingFaceRef
from ..config import HuggingFaceSettings, hf_token_path
from ..errors import HTTPStatus, SourceError, Unverifiable
from ..events import Layer
from ..hashes import Identity, is_sha256
from ..httpclient import Client, Response
from .base import ByteStream, FileRequest, Proof
from .http import backoff_delay, open_range, request, sleep_for_retry


def describe_hub_error(resp: Response) -> str:
    """The hub's typed error (X-Error-Code) as a sentence naming the URL and what to do."""
    return hub.describe_hub_error(
        resp.status,
        dict(resp.headers.items()),
        resp.url,
        reason=resp.reason,
        token_sent="Authorization" in resp.sent_headers,
        token_path=hf_token_path(os.environ),
    )


@dataclass
class HuggingFaceOrigin:
    """One file on one hub or mirror; retried with doubling waits, honouring Retry-After.

    An LFS file answers with a redirect to a CDN: the first request follows it, and later
    ranges of the same file go straight to where it led (one round trip less per range).
    """

    settings: HuggingFaceSettings
    base: str  # the hub or mirror base URL
    url: str
    headers: dict[str, str]
    on_commit: Callable[[str], None]  # tells the source which commit the branch pointed at
    layer: Layer = "huggingface"
    proof: Proof = "bytes"
    _direct: str | None = None  # where the resolve URL redirected to, once known

    @property
    def base_url(self) -> str:
        return self.base

    @property
    def tries(self) -> int:
        return self.settings.retries

    @property
    def distrustable(self) -> bool:
        """A mirror that sent wrong bytes is dropped; the hub itself stays (it is the evidence:
        a mismatch there more likely means a stale manifest)."""
        return self.base != self.settings.endpoint

    @property
    def fallback(self) -> bool:
        """The hub itself is asked after its mirrors whatever the scores say: sparing it (its
        rate limits, a fleet's bandwidth) is what mirrors are configured for."""
        return self.base == self.settings.endpoint

    async def open(self, client: Client, start: int, end: int | None) -> ByteStream:
        direct = self._direct
        if direct is not None:
            try:
                return await self._open(client, direct, start, end, {})
            except HTTPStatus as exc:
                if exc.status not in (401, 403, 404, 410):
                    raise
                self._direct = None  # a signed CDN URL that expired: resolve again
        stream = await self._open(client, self.url, start, end, self.headers)
        if stream.url != self.url:
            self._direct = stream.url
        return stream

    async def _open(
        self, client: Client, url: str, start: int, end: int | None, headers: dict[str, str]
    ) -> ByteStream:
        return await open_range(
            client,
            url,
            start,
            end,
            headers=headers,
            connect_timeout=self.settings.connect_timeout,
            stall_timeout=self.settings.timeout,
            describe=describe_hub_error,
        )

    def delay(self, attempt: int, error: SourceError) -> float:
        return backoff_delay(
            attempt, error, base=self.settings.backoff, cap=self.settings.max_backoff
        )

    async def identity(self, client: Client) -> Identity | None:
        """Size and hash from a HEAD of the resolve URL, retried like a download."""
        for attempt in range(self.tries):
            try:
                identity, commit = await self._head(client)
            except SourceError as exc:
                if not exc.retryable or getattr(exc, "origin_down", False):
                    raise
                if attempt + 1 == self.tries:
                    raise
                await sleep_for_retry(self.delay(attempt, exc))
                continue
            if commit is not None:
                self.on_commit(commit)
            return identity
        return None

    async def _head(self, client: Client) -> tuple[Identity, str | None]:
        # Redirects are followed only while they stay on the hub (renamed repos); the LFS
        # redirect to the CDN carries the X-Linked-* headers we came for, so stop there.
        def same_host_redirect(resp: Response) -> bool:
            location = resp.headers.get("Location") or ""
            return "X-Linked-Etag" not in resp.headers and location.startswith("/")

        resp = await request(
            client,
            "HEAD",
            self.url,
            headers={**self.headers, "Accept-Encoding": "identity"},
            connect_timeout=self.settings.connect_timeout,
            stall_timeout=self.settings.timeout,
            follow=same_host_redirect,
            describe=describe_hub_error,
        )
        try:
            commit = (resp.headers.get("X-Repo-Commit") or "").strip().lower()
            return _identity_from_headers(resp), commit if _is_hex(commit, 40) else None
        finally:
            await resp.release()


class HuggingFaceSource:
    """Files of models and datasets on a Hugging Face-compatible hub and its mirrors."""

    layer: Layer = "huggingface"

    def __init__(self, settings: HuggingFaceSettings) -> None:
        self.settings = settings
        # Branch -> commit as the hub reported it (X-Repo-Commit): once known, every file of
        # the model is fetched from that one commit, even if the branch moves meanwhile.
        self._commits: dict[HuggingFaceRef, str] = {}

    def url(self, request: FileRequest, base: str | None = None) -> str | None:
        ref = request.model.huggingface
        if ref is None:
            return None
        prefix = "datasets/" if ref.type == "dataset" else ""
        path = quote(ref.repo_path(request.path))
        revision = quote(self._commits.get(ref, ref.revision), safe="")
        return f"{base or self.settings.endpoint}/{prefix}{ref.repo}/resolve/{revision}/{path}"

    def _headers(self, base: str) -> dict[str, str]:
        token = self.settings.token
        # The hub's token goes to the hub only: a mirror is another machine.
        if not token or base != self.settings.endpoint:
            return {}
        return {"Authorization": f"Bearer {token}"}

    def origins(self, request: FileRequest) -> list[HuggingFaceOrigin]:
        ref = request.model.huggingface
        if ref is None:
            return []

        def pin(commit: str) -> None:
            self._commits.setdefault(ref, commit)

        origins = []
        for base in (*self.settings.mirrors, self.settings.endpoint):
            url = self.url(request, base)
            assert url is not None
            origins.append(HuggingFaceOrigin(self.settings, base, url, self._headers(base), pin))
        return origins

    def why_none(self, request: FileRequest) -> str:
        return "the model has no Hugging Face source"


def _identity_from_headers(resp: Response) -> Identity:
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
