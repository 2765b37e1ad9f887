"""The loopback hub's repositories: branches and tags pointing at commits holding files."""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ._server import Blob

RepoType = Literal["model", "dataset", "space"]
"""The kinds of repository the hub serves (URL prefixes "", "datasets/", "spaces/")."""

HEX40 = re.compile(r"[0-9a-f]{40}")
_HASH_CHUNK = 8 << 20


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of `data`: sha1 of b"blob <size>\\0" + data."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The Git LFS pointer file git stores in place of an LFS file."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def initial_commit(repo: str, revision: str = "main", repo_type: RepoType = "model") -> str:
    """The fixed sha a branch's first commit gets (made up from repo type, repo and revision)."""
    if HEX40.fullmatch(revision):
        return revision
    return hashlib.sha1(f"{repo_type}/{repo}@{revision}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class HubFile:
    """A file the hub serves, with the identities a client sees for it."""

    repo: str
    repo_type: RepoType
    revision: str
    commit: str
    path: str
    size: int
    sha256: str
    git_sha1: str | None
    lfs: bool

    @property
    def etag(self) -> str:
        """What huggingface_hub records as the etag: SHA-256 for LFS, git blob SHA-1 otherwise."""
        if self.lfs:
            return self.sha256
        assert self.git_sha1 is not None
        return self.git_sha1

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.sha256, self.size))

    @property
    def blob_id(self) -> str:
        """The git oid the tree lists: of the file, or of its LFS pointer."""
        if self.lfs:
            return git_blob_sha1(lfs_pointer(self.sha256, self.size))
        assert self.git_sha1 is not None
        return self.git_sha1


@dataclass(frozen=True, slots=True)
class Entry:
    info: HubFile
    blob: Blob


def hash_source(source: bytes | Path, size: int, *, sha1: bool) -> tuple[str, str | None]:
    sha256 = hashlib.sha256()
    blob_sha1 = hashlib.sha1(b"blob %d\0" % size) if sha1 else None
    if isinstance(source, Path):
        with source.open("rb") as f:
            while piece := f.read(_HASH_CHUNK):
                sha256.update(piece)
                if blob_sha1 is not None:
                    blob_sha1.update(piece)
    else:
        sha256.update(source)
        if blob_sha1 is not None:
            blob_sha1.update(source)
    return sha256.hexdigest(), None if blob_sha1 is None else blob_sha1.hexdigest()


def check_path(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a relative file path inside a repo: {path!r}")
    return path


@dataclass
class Commit:
    """A snapshot of files. `sealed` once pushed over, tagged or made by `push`: immutable."""

    sha: str
    parent: str | None
    files: dict[str, Entry]
    created: float = field(default_factory=time.time)
    sealed: bool = False


class Repo:
    """One repository: branches and tags naming commits; every commit stays reachable by sha."""

    def __init__(self, repo_type: RepoType, repo_id: str) -> None:
        self.repo_type = repo_type
        self.repo_id = repo_id
        self.branches: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.commits: dict[str, Commit] = {}
        self.gate: str | None = None  # token that passes the gate
        self.private: str | None = None  # token that may see the repo
        self.created = time.time()

    def find(self, revision: str) -> Commit | None:
        """The commit a branch, a tag or a full sha names."""
        sha = self.branches.get(revision) or self.tags.get(revision)
        if sha is None and HEX40.fullmatch(revision):
            sha = revision
        return None if sha is None else self.commits.get(sha)

    def open_head(self, branch: str) -> Commit | None:
        """The branch's head while it may still be amended (never pushed over), else None."""
        if branch in self.tags:
            raise ValueError(f"{branch!r} is a tag: tags do not move")
        sha = self.branches.get(branch)
        if sha is None:
            commit = Commit(initial_commit(self.repo_id, branch, self.repo_type), None, {})
            self.commits[commit.sha] = commit
            self.branches[branch] = commit.sha
            return commit
        head = self.commits[sha]
        return None if head.sealed else head

    def new_commit(self, branch: str, sha: str, changes: dict[str, Entry | None]) -> Commit:
        """A commit on top of the branch's head with `changes` (None deletes); the branch moves."""
        if branch in self.tags:
            raise ValueError(f"{branch!r} is a tag: tags do not move")
        parent = self.commits.get(self.branches.get(branch, ""))
        files = dict(parent.files) if parent is not None else {}
        for path, entry in changes.items():
            if entry is None:
                if path not in files:
                    raise ValueError(f"{path!r} is not in {self.repo_id}@{branch}")
                del files[path]
            else:
                files[path] = entry
        if parent is not None:
            parent.sealed = True
        commit = Commit(sha, None if parent is None else parent.sha, files, sealed=True)
        self.commits[sha] = commit
        self.branches[branch] = sha
        return commit
