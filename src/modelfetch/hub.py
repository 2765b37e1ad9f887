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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar
from urllib.parse import quote, urlencode, urljoin

from ._hubhttp import Answer, HubHTTP, origin_of
from .catalog import check_relpath
from .errors import InvalidHubAnswer, InvalidRepoId
from .hashes import Identity
from .huberrors import describe_hub_error, hub_error

if TYPE_CHECKING:
    from .config import HuggingFaceSettings

__all__ = [
    "DEFAULT_ENDPOINT",
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

RepoType = Literal["model", "dataset"]
_T = TypeVar("_T")
DEFAULT_ENDPOINT = "https://huggingface.co"
MAX_PAGES = 100_000

_COMMIT = re.compile(r"[0-9a-f]{40}")  # huggingface_hub's REGEX_COMMIT_HASH
_SHA256 = re.compile(r"[0-9a-f]{64}")
# huggingface_hub/utils/_validators.py REPO_ID_REGEX (ASCII only)
_REPO_ID = re.compile(
    r"(\b[\w\-.]{1,96}\b/)?\b[\w\-.]{1,96}\b",
    re.ASCII,
)
_LINK = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]*)*)")


def is_commit(revision: str) -> bool:
    """True for a full 40-hex commit sha (which needs no resolving, as in snapshot_download)."""
    return bool(_COMMIT.fullmatch(revision))


@dataclass(frozen=True)
class RepoRef:
    """A repository on the hub: its id (`org/name`, or a legacy `name`) and type."""

    repo_id: str
    repo_type: RepoType = "model"

    def __post_init__(self) -> None:
        if self.repo_type not in ("model", "dataset"):
            raise InvalidRepoId(f"repo type {self.repo_type!r}: use 'model' or 'dataset'")
        rid = self.repo_id
        problem = None
        if not isinstance(rid, str) or rid.count("/") > 1:
            problem = "expected 'org/name'"
        elif not _REPO_ID.fullmatch(rid):
            problem = (
                "use letters, digits, '-', '_' and '.', at most 96 per part, "
                "not starting or ending with '-' or '.'"
            )
        elif "--" in rid or ".." in rid:
            problem = "'--' and '..' are not allowed"
        elif rid.endswith(".git"):
            problem = "it cannot end with '.git'"
        if problem:
            raise InvalidRepoId(f"{rid!r} is not a Hugging Face repo id: {problem}")

    def __str__(self) -> str:
        return self.repo_id if self.repo_type == "model" else f"{self.repo_id} (dataset)"

    @property
    def folder_name(self) -> str:
        """The repo's folder in the Hugging Face cache, e.g. `models--org--name`."""
        return "--".join((f"{self.repo_type}s", *self.repo_id.split("/")))

    @property
    def api_path(self) -> str:
        """`/api/models/org/name` (or `/api/datasets/...`)."""
        return f"/api/{self.repo_type}s/{self.repo_id}"

    @property
    def url_prefix(self) -> str:
        """The repo's path prefix in hub URLs: `/org/name` or `/datasets/org/name`."""
        return f"/datasets/{self.repo_id}" if self.repo_type == "dataset" else f"/{self.repo_id}"

    def resolve_path(self, revision: str, path: str) -> str:
        """`/{prefix}/resolve/{revision}/{path}`, quoted as huggingface_hub.hf_hub_url does."""
        return f"{self.url_prefix}/resolve/{quote(revision, safe='')}/{quote(path)}"


@dataclass(frozen=True)
class RepoFile:
    """One file of a commit, as the tree lists it (`blob_id` is the git oid of what git
    stores: the file itself, or the LFS pointer when `lfs_sha256` is set)."""

    path: str
    size: int
    blob_id: str
    lfs_sha256: str | None = None
    xet_hash: str | None = None

    @property
    def is_lfs(self) -> bool:
        return self.lfs_sha256 is not None

    @property
    def etag(self) -> str:
        """The name huggingface_hub gives its blob: SHA-256 for LFS files, git SHA-1 otherwise."""
        return self.lfs_sha256 if self.lfs_sha256 is not None else self.blob_id

    def identity(self) -> Identity:
        """What the bytes must be: size and SHA-256 (LFS) or git-blob SHA-1."""
        if self.lfs_sha256 is not None:
            return Identity(size=self.size, sha256=self.lfs_sha256, evidence="huggingface")
        return Identity(size=self.size, git_sha1=self.blob_id, evidence="huggingface")


@dataclass(frozen=True)
class Sibling:
    """A file named by the revision info (sizes and hashes only with `blobs=True`)."""

    path: str
    size: int | None = None
    blob_id: str | None = None
    lfs_sha256: str | None = None


@dataclass(frozen=True)
class RevisionInfo:
    """What `GET /api/{type}s/{repo}/revision/{rev}` said."""

    repo: RepoRef
    revision: str
    commit: str
    repo_id: str  # as the hub names it (another name after a rename)
    private: bool
    gated: Literal[False] | str  # False, "auto" or "manual"
    siblings: tuple[Sibling, ...]
    last_modified: str | None = None


@dataclass(frozen=True)
class RepoSnapshot:
    """A repo pinned to one commit: the files selected (`files`) out of all (`tree`)."""

    repo: RepoRef
    revision: str
    commit: str
    files: tuple[RepoFile, ...]
    tree: tuple[RepoFile, ...]
    info: RevisionInfo | None = None  # None when the revision already was a commit

    def file(self, path: str) -> RepoFile:
        for f in self.tree:
            if f.path == path:
                return f
        raise KeyError(path)


def filter_paths(
    paths: Iterable[str], include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[str]:
    """Paths kept by `--include`/`--exclude` exactly as huggingface_hub's `filter_repo_objects`.

    fnmatch globs, case-sensitive, `*` crossing `/`, a pattern ending in `/` meaning the whole
    folder; no include pattern keeps everything. `filter_paths(["a.json", "b.bin"], ["*.json"])`
    is `["a.json"]`.
    """

    def norm(p: str) -> str:
        p = p.replace("\\", "/")
        return p + "*" if p.endswith("/") else p

    allow = [norm(p) for p in include]
    deny = [norm(p) for p in exclude]
    kept = []
    for path in paths:
        name = path.replace("\\", "/")
        if allow and not any(fnmatchcase(name, p) for p in allow):
            continue
        if any(fnmatchcase(name, p) for p in deny):
            continue
        kept.append(path)
    return kept


# -- the client -------------------------------------------------------------------------------


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

    async def _get(self, url: str, repo: RepoRef) -> Answer:
        answer = await self._http.get(url)
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
        if answer.status != 200:
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
    commit = _hex(repo, revision, data.get("sha"), _COMMIT, "commit (sha)")
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
                blob_id=None if blob_id is None else _hex(repo, path, blob_id, _COMMIT, "blobId"),
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
        blob_id = _hex(repo, path, item.get("oid"), _COMMIT, "git oid")
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


def _next_link(answer: Answer) -> str | None:
    """The `rel="next"` URL of a `Link` header (GitHub style, as huggingface_hub reads it)."""
    header = answer.headers.get("link", "")
    for match in _LINK.finditer(header):
        params = match.group(2)
        if re.search(r'rel\s*=\s*"?next"?', params):
            return match.group(1).strip() or None
    return None
