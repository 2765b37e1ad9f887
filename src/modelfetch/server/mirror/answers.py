"""The mirror's answers in the hub's shapes: typed errors, a file's headers, ranged bytes."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from ...hubtypes import RepoFile

CHUNK = 1 << 20
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class HubAnswer(Exception):
    """An answer the mirror gives instead of the file: status, `X-Error-Code`, message.

    Rendered as the hub renders its errors (`X-Error-Code`, `X-Error-Message` and a JSON
    `{"error": ...}`), so huggingface_hub's `hf_raise_for_status` raises the same exception
    type it would raise against the hub (RepositoryNotFoundError, RevisionNotFoundError,
    EntryNotFoundError, GatedRepoError, HfHubHTTPError for 5xx).
    """

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}

    def response(self) -> web.Response:
        headers = {"X-Error-Message": _header_text(self.message), **self.headers}
        if self.code is not None:
            headers["X-Error-Code"] = self.code
        return web.Response(
            status=self.status,
            text=json.dumps({"error": self.message}),
            content_type="application/json",
            headers=headers,
        )


def repo_not_found(repo: str) -> HubAnswer:
    return HubAnswer(404, f"Repository not found: {repo}", "RepoNotFound")


def revision_not_found(revision: str) -> HubAnswer:
    return HubAnswer(404, f"Invalid rev id: {revision}", "RevisionNotFound")


def entry_not_found(path: str, commit: str | None) -> HubAnswer:
    headers = {"X-Repo-Commit": commit} if commit else {}
    return HubAnswer(404, f"Entry not found: {path}", "EntryNotFound", headers)


def gated(repo: str, *, token_given: bool) -> HubAnswer:
    return HubAnswer(
        403 if token_given else 401,
        f"Access to {repo} is restricted on this mirror: it is gated upstream, and only "
        "clients sending the mirror's own token (Authorization: Bearer) get it.",
        "GatedRepo",
    )


def not_shown(repo: str) -> HubAnswer:
    """A repo the mirror may not show this client: as the hub answers for a private one."""
    return HubAnswer(
        401,
        f"Repository not found: {repo} (or it is private, or the mirror cannot tell that it "
        "is public: send the mirror's own token as Authorization: Bearer)",
        "RepoNotFound",
    )


def upstream_failed(message: str, *, timeout: bool = False) -> HubAnswer:
    """The upstream could not deliver: 502 (or 504 for a timeout), never a truncated 200."""
    return HubAnswer(504 if timeout else 502, f"upstream failed: {message}")


def _header_text(text: str) -> str:
    """A message fit for one header line (latin-1, no line breaks, bounded)."""
    flat = " ".join(text.split())[:900]
    return flat.encode("latin-1", "replace").decode("latin-1")


# -- files ------------------------------------------------------------------------------------


def file_headers(f: RepoFile, commit: str) -> dict[str, str]:
    """What the hub says about a file on its resolve URL (huggingface_hub reads these).

    LFS files: `X-Linked-Etag` (the SHA-256) and `X-Linked-Size`; others: `ETag` = git-blob
    SHA-1. The etag is the name huggingface_hub gives the blob in its cache.
    """
    name = quote(f.path.rsplit("/", 1)[-1])
    headers = {
        "X-Repo-Commit": commit,
        "ETag": f'"{f.etag}"',
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
        "Content-Disposition": f"inline; filename*=UTF-8''{name}; filename=\"{name}\";",
    }
    if f.is_lfs:
        headers["X-Linked-Etag"] = f'"{f.etag}"'
        headers["X-Linked-Size"] = str(f.size)
    return headers


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The [start, end) of a single `Range: bytes=a-b` (None: the whole file).

    Raises HubAnswer(416) with `Content-Range: bytes */size` when it cannot be satisfied.
    A header that is not a single byte range is ignored (the whole file), as RFC 9110 allows.
    """
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        count = int(last)
        if count == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(0, size - count), size
    start = int(first)
    end = size if not last else min(size, int(last) + 1)
    if start >= size or end <= start:
        raise _unsatisfiable(size)
    return start, end


def _unsatisfiable(size: int) -> HubAnswer:
    return HubAnswer(
        416,
        f"range not satisfiable: the file has {size} bytes",
        None,
        {"Content-Range": f"bytes */{size}"},
    )


async def send_file(
    request: web.Request,
    path: Path,
    size: int,
    headers: dict[str, str],
    *,
    same_file: Callable[[os.stat_result], bool],
    on_bytes: Callable[[int], None],
) -> web.StreamResponse:
    """Send `path` (or the asked range) with `headers`; 206 for a range.

    `same_file(fstat)` is asked of the opened file before a byte is sent: it must still be
    the file that was verified (else HubAnswer 503, and nothing is sent).
    """
    span = parse_range(request.headers.get("Range"), size)
    start, end = span if span is not None else (0, size)
    try:
        handle = await asyncio.to_thread(open, path, "rb")
    except OSError as exc:
        raise HubAnswer(503, f"the mirror could not open its copy: {exc.strerror}") from None
    try:
        if not same_file(os.fstat(handle.fileno())):
            raise HubAnswer(503, "the mirror's copy changed while being served: retry")
        response = web.StreamResponse(status=206 if span is not None else 200, headers=headers)
        response.content_length = end - start
        if span is not None:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        await asyncio.to_thread(handle.seek, start)
        left = end - start
        while left > 0:
            block = await asyncio.to_thread(handle.read, min(CHUNK, left))
            if not block:  # the file shrank under us: cut the answer short, never pad it
                raise ConnectionResetError("the mirror's copy shrank while being sent")
            await response.write(block)
            left -= len(block)
            on_bytes(len(block))
        await response.write_eof()
        return response
    finally:
        await asyncio.to_thread(handle.close)
