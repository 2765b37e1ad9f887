"""A repo on the hub and its files' identities: the values the hub client, the Hugging Face
cache and the engine share (no network, no disk here)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal
from urllib.parse import quote

from .errors import InvalidRepoId
from .hashes import Identity

RepoType = Literal["model", "dataset"]

_COMMIT = re.compile(r"[0-9a-f]{40}")  # huggingface_hub's REGEX_COMMIT_HASH
# huggingface_hub/utils/_validators.py REPO_ID_REGEX (ASCII only)
_REPO_ID = re.compile(r"(\b[\w\-.]{1,96}\b/)?\b[\w\-.]{1,96}\b", re.ASCII)


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
