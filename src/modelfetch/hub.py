"""The Hugging Face hub's API: a repo's revision info and file tree, pinned to one commit.

One client for every use (repo pulls, and later the mirror's pull-through), built on the
standard library (see `_hubhttp`). It reads what `huggingface_hub.snapshot_download` reads:
`GET /api/{models|datasets}/{repo}/revision/{rev}` for the commit, then the recursive
`GET /api/{type}s/{repo}/tree/{commit}` with its `Link` pagination. Every path the hub lists is
checked like a catalog path, and every size and hash is validated, before anything is returned.

Example (against a hub on 127.0.0.1):

    async with HubAPI("http://127.0.0.1:8080") as api:
        snap = await api.snapshot(RepoRef("org/model"), include=["*.json"])
        for f in snap.files:
            print(f.path, f.size, f.etag)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar
from urllib.parse import quote, urlencode, urljoin

from ._hubhttp import Answer, HubHTTP, origin_of
from .catalog import check_relpath
from .errors import InvalidHubAnswer
from .hashes import Identity
from .huberrors import describe_hub_error, hub_error
from .hubtypes import (
    RepoFile,
    RepoRef,
    RepoSnapshot,
    RepoType,
    RevisionInfo,
    Sibling,
    filter_paths,
    is_commit,
)

if TYPE_CHECKING:
    from .config import HuggingFaceSettings

__all__ = [
    "DEFAULT_ENDPOINT",
    "FileMetadata",
    "HubAPI",
    "RepoFile",
    "RepoRef",
    "RepoSnapshot",
    "RepoType",
    "RevisionInfo",
    "Sibling",
    "describe_hub_error",
    "filter_paths",
    "hub_error",
    "is_commit",
]

_T = TypeVar("_T")
DEFAULT_ENDPOINT = "https://huggingface.co"
MAX_PAGES = 100_000

_SHA1 = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_LINK = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]*)*)")


@dataclass(frozen=True)
class FileMetadata:
    """What a HEAD of a file's resolve URL says (as huggingface_hub's get_hf_file_metadata)."""

    commit: str | None  # X-Repo-Commit
    etag: str  # X-Linked-Etag (SHA-256, LFS) or ETag (git-blob SHA-1)
    size: int | None  # X-Linked-Size or Content-Length
    location: str  # where the bytes are (the CDN URL of an LFS file)

    def identity(self) -> Identity:
        if _SHA256.fullmatch(self.etag):
            return Identity(size=self.size, sha256=self.etag, evidence="huggingface")
        return Identity(size=self.size, git_sha1=self.etag, evidence="huggingface")


class HubAPI:
    """A hub's API over the standard library: revision info, recursive tree, snapshots.

    `retries` counts tries in all (as `[huggingface] retries`); 408, 429 and 5xx answers and
    connection errors are retried with doubling waits from `backoff` (capped at
    `max_backoff`), honouring Retry-After. The token is sent as `Authorization: Bearer` only
    to the endpoint's own host, and never appears in a repr, a log line or an error message.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        token_path: Path | None = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._token = token or None
        if token_path is None:
            from .config import hf_token_path

            token_path = hf_token_path(os.environ)
        self.token_path = token_path
        self._http = HubHTTP(
            token=self._token,
            token_origin=origin_of(self.endpoint),
            timeout=timeout,
            connect_timeout=connect_timeout,
            tries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
        )

    @classmethod
    def from_settings(cls, settings: HuggingFaceSettings) -> HubAPI:
        """A client for `settings.endpoint` with its token, timeouts and retries."""
        return cls(
            settings.endpoint,
            settings.token,
            timeout=settings.timeout,
            connect_timeout=settings.connect_timeout,
            retries=settings.retries,
            backoff=settings.backoff,
            max_backoff=settings.max_backoff,
            token_path=settings.token_path,
        )

    def __repr__(self) -> str:
        return f"HubAPI({self.endpoint!r}, token={'set' if self._token else None})"

    @property
    def requests(self) -> int:
        """HTTP requests sent so far (every try, page and redirect hop)."""
        return self._http.requests

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close idle keep-alive connections (the client stays usable)."""
        self._http.close()

    # -- calls --------------------------------------------------------------------------------

    async def revision_info(
        self, repo: RepoRef, revision: str = "main", *, blobs: bool = False
    ) -> RevisionInfo:
        """The commit a revision (branch, tag or commit) points at, with the repo's files.

        `blobs=True` adds each file's size, git oid and LFS SHA-256 (`?blobs=true`).
        """
        url = f"{self.endpoint}{repo.api_path}/revision/{quote(revision, safe='')}"
        if blobs:
            url += "?blobs=true"
        data = await self._get_json(url, repo)
        return _parse(url, _revision_info, repo, revision, data)

    async def list_tree(self, repo: RepoRef, commit: str, path: str = "") -> list[RepoFile]:
        """Every file under `path` at `commit` (recursive), following `Link: rel="next"`."""
        if path:
            check_relpath(path, what="tree path")
        url: str | None = (
            f"{self.endpoint}{repo.api_path}/tree/{quote(commit, safe='')}"
            + (f"/{quote(path, safe='')}" if path else "")
            + "?"
            + urlencode({"recursive": "true", "expand": "false"})
        )
        files: dict[str, RepoFile] = {}
        seen: set[str] = set()
        while url is not None:
            if url in seen or len(seen) >= MAX_PAGES:
                raise InvalidHubAnswer(f"{repo}: the tree's pages loop back at {url}")
            seen.add(url)
            answer = await self._get(url, repo)
            page = _json(answer)
            here = url
            for item in _parse(here, _tree_page, repo, page):
                if item.path in files:
                    raise InvalidHubAnswer(f"{repo}: the tree lists {item.path!r} twice ({here})")
                files[item.path] = item
            url = _next_link(answer)
            if url is not None:
                url = urljoin(here, url)
        return list(files.values())

    async def file_metadata(self, repo: RepoRef, revision: str, path: str) -> FileMetadata:
        """HEAD of the file's resolve URL: commit, etag and size, stopping at the LFS redirect
        (whose X-Linked-* headers are the answer). Gated repos answer here, not in the API."""
        check_relpath(path, what="file name")
        url = f"{self.endpoint}{repo.resolve_path(revision, path)}"
        answer = await self._get(url, repo, method="HEAD")
        h = answer.headers
        etag = _unquote_etag(h.get("x-linked-etag") or h.get("etag"))
        if not (_SHA1.fullmatch(etag) or _SHA256.fullmatch(etag)):
            raise InvalidHubAnswer(f"{url}: no usable ETag ({etag!r}): cannot verify {path}")
        size_text = h.get("x-linked-size") or h.get("content-length") or ""
        commit = h.get("x-repo-commit", "").strip().lower()
        location = urljoin(answer.url, h["location"]) if "location" in h else answer.url
        return FileMetadata(
            commit=commit if is_commit(commit) else None,
            etag=etag,
            size=int(size_text) if size_text.isdigit() else None,
            location=location,
        )

    async def snapshot(
        self,
        repo: RepoRef,
        revision: str = "main",
        *,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
    ) -> RepoSnapshot:
        """The revision info, then the tree pinned to that one commit, filtered.

        A 40-hex commit revision skips the revision request, as snapshot_download does.
        """
        info = None
        if is_commit(revision):
            commit = revision
        else:
            info = await self.revision_info(repo, revision)
            commit = info.commit
        tree = await self.list_tree(repo, commit)
        keep = set(filter_paths([f.path for f in tree], include, exclude))
        files = tuple(f for f in tree if f.path in keep)
        return RepoSnapshot(repo, revision, commit, files, tuple(tree), info)

    # -- plumbing -----------------------------------------------------------------------------

    async def _get(self, url: str, repo: RepoRef, *, method: str = "GET") -> Answer:
        # A HEAD stops at a redirect that already carries the file's identity (LFS to CDN).
        answer = await self._http.get(
            url, method=method, stop_at=_linked if method == "HEAD" else None
        )
        if answer.status >= 400 or answer.status < 200:
            message = describe_hub_error(
                answer.status,
                answer.headers,
                answer.url,
                reason=answer.reason,
                token_sent=self._http.token_sent_to(answer.url),
                token_path=self.token_path,
            )
            raise hub_error(answer.status, answer.headers, answer.url, self._scrub(message))
        if answer.status != 200 and not (method == "HEAD" and _linked(answer)):
            raise InvalidHubAnswer(
                f"{repo}: {answer.url} answered HTTP {answer.status}, not the hub API's 200"
            )
        return answer

    async def _get_json(self, url: str, repo: RepoRef) -> Any:
        return _json(await self._get(url, repo))

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "<token>") if self._token else text


# -- parsing (every field checked; anything unexpected is InvalidHubAnswer) --------------------


def _json(answer: Answer) -> Any:
    try:
        return json.loads(answer.body)
    except ValueError:
        kind = answer.headers.get("content-type", "no content type")
        raise InvalidHubAnswer(
            f"{answer.url} did not answer JSON ({kind}): is the endpoint a Hugging Face hub?"
        ) from None


def _parse(url: str, build: Callable[..., _T], *args: Any) -> _T:
    try:
        return build(*args)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidHubAnswer(f"{url}: not a hub API answer ({exc})") from None


def _bad(what: str, value: object) -> InvalidHubAnswer:
    return InvalidHubAnswer(f"{what}: unexpected value {json.dumps(value)[:80]}")


def _safe_path(repo: RepoRef, value: object) -> str:
    if not isinstance(value, str):
        raise _bad(f"{repo}: a file path", value)
    return check_relpath(value, what=f"file name from the hub ({repo})")


def _size(repo: RepoRef, path: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _bad(f"{repo}: size of {path}", value)
    return value


def _hex(repo: RepoRef, path: str, value: object, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _bad(f"{repo}: {what} of {path}", value)
    return value


def _revision_info(repo: RepoRef, revision: str, data: Any) -> RevisionInfo:
    if not isinstance(data, dict):
        raise _bad(f"{repo}: revision info", data)
    commit = _hex(repo, revision, data.get("sha"), _SHA1, "commit (sha)")
    siblings = []
    for item in data.get("siblings") or []:
        path = _safe_path(repo, item["rfilename"])
        size = item.get("size")
        blob_id = item.get("blobId")
        lfs = item.get("lfs")
        siblings.append(
            Sibling(
                path=path,
                size=None if size is None else _size(repo, path, size),
                blob_id=None if blob_id is None else _hex(repo, path, blob_id, _SHA1, "blobId"),
                lfs_sha256=None
                if not lfs
                else _hex(repo, path, lfs["sha256"], _SHA256, "LFS sha256"),
            )
        )
    gated = data.get("gated", False)
    private = data.get("private", False)
    repo_id = data.get("id", repo.repo_id)
    modified = data.get("lastModified")
    return RevisionInfo(
        repo=repo,
        revision=revision,
        commit=commit,
        repo_id=repo_id if isinstance(repo_id, str) else repo.repo_id,
        private=private is True,
        gated=gated if isinstance(gated, str) else False,
        siblings=tuple(siblings),
        last_modified=modified if isinstance(modified, str) else None,
    )


def _tree_page(repo: RepoRef, page: Any) -> list[RepoFile]:
    if not isinstance(page, list):
        raise _bad(f"{repo}: a tree page", page)
    files = []
    for item in page:
        if not isinstance(item, dict):
            raise _bad(f"{repo}: a tree entry", item)
        path = _safe_path(repo, item.get("path"))  # directories too: nothing escapes
        if item.get("type") != "file":
            continue
        size = _size(repo, path, item.get("size"))
        blob_id = _hex(repo, path, item.get("oid"), _SHA1, "git oid")
        lfs = item.get("lfs")
        sha256 = None
        if lfs is not None:
            sha256 = _hex(repo, path, lfs.get("oid"), _SHA256, "LFS oid")
            if _size(repo, path, lfs.get("size")) != size:
                raise InvalidHubAnswer(f"{repo}: {path}: the LFS size differs from the size")
        xet = item.get("xetHash")
        files.append(
            RepoFile(
                path=path,
                size=size,
                blob_id=blob_id,
                lfs_sha256=sha256,
                # a bad Xet hash is dropped, as huggingface_hub would not cache it either
                xet_hash=xet.lower()
                if isinstance(xet, str) and _SHA256.fullmatch(xet.lower())
                else None,
            )
        )
    return files


def _linked(answer: Answer) -> bool:
    return "x-linked-etag" in answer.headers


def _unquote_etag(value: str | None) -> str:
    value = (value or "").strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"').lower()


def _next_link(answer: Answer) -> str | None:
    """The `rel="next"` URL of a `Link` header (GitHub style, as huggingface_hub reads it)."""
    header = answer.headers.get("link", "")
    for match in _LINK.finditer(header):
        params = match.group(2)
        if re.search(r'rel\s*=\s*"?next"?', params):
            return match.group(1).strip() or None
    return None
