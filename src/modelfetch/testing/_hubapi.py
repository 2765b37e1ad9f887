"""The loopback hub's API answers: revision info and tree pages, in the hub's JSON shapes."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

from ._hubrepo import Commit, Entry, Repo, RepoType

API_TYPES: dict[str, RepoType] = {"models": "model", "datasets": "dataset", "spaces": "space"}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))


def revision_info(
    repo: Repo, commit: Commit, files: dict[str, Entry], *, blobs: bool
) -> dict[str, Any]:
    """The body of `/api/{type}s/{repo}/revision/{rev}`: the fields `repo_info` reads, and
    with `blobs` each sibling's size, git oid and LFS sha256 (`?blobs=true`)."""
    siblings = []
    for path in sorted(files):
        info = files[path].info
        sibling: dict[str, Any] = {"rfilename": path}
        if blobs:
            sibling.update(size=info.size, blobId=info.blob_id)
            if info.lfs:
                sibling["lfs"] = {
                    "sha256": info.sha256,
                    "size": info.size,
                    "pointerSize": info.pointer_size,
                }
        siblings.append(sibling)
    body: dict[str, Any] = {
        "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
        "id": repo.repo_id,
        "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
        "sha": commit.sha,
        "lastModified": _iso(commit.created),
        "createdAt": _iso(repo.created),
        "private": repo.private is not None,
        "gated": "manual" if repo.gate is not None else False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": siblings,
        "usedStorage": sum(e.info.size for e in files.values()),
    }
    if repo.repo_type == "model":
        body["modelId"] = repo.repo_id
    return body


def parse_api(segs: list[str]) -> tuple[RepoType, str, str, list[str]] | None:
    """(type, repo, "revision"|"tree"|"info", args) of an `/api/{type}s/{repo}/...` path."""
    if len(segs) < 3 or segs[0] != "api" or segs[1] not in API_TYPES:
        return None
    repo_type, rest = API_TYPES[segs[1]], segs[2:]
    if len(rest) >= 3 and rest[2] in ("revision", "tree"):
        repo, kind, args = f"{rest[0]}/{rest[1]}", rest[2], rest[3:]
    elif len(rest) >= 2 and rest[1] in ("revision", "tree"):
        repo, kind, args = rest[0], rest[1], rest[2:]
    elif len(rest) in (1, 2):
        repo, kind, args = "/".join(rest), "info", []
    else:
        return None
    if kind != "info" and (not args or not args[0]):
        return None
    return repo_type, repo, kind, args


def tree_entries(
    commit: Commit, files: dict[str, Entry], path: str, recursive: bool
) -> list[dict[str, Any]] | None:
    """The `/tree` entries under `path` (None: no such directory), directories included."""
    dirs = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
    if path and path not in dirs:
        return None
    prefix = f"{path}/" if path else ""
    out = []
    for name in sorted(dirs | set(files)):
        if not name.startswith(prefix) or (not recursive and "/" in name[len(prefix) :]):
            continue
        if name in files:
            info = files[name].info
            item: dict[str, Any] = {
                "type": "file",
                "oid": info.blob_id,
                "size": info.size,
                "path": name,
            }
            if info.lfs:
                item["lfs"] = {
                    "oid": info.sha256,
                    "size": info.size,
                    "pointerSize": info.pointer_size,
                }
            out.append(item)
        else:
            oid = hashlib.sha1(f"tree {commit.sha}/{name}".encode()).hexdigest()
            out.append({"type": "directory", "oid": oid, "size": 0, "path": name})
    return out


def truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


def encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(str(offset).encode()).decode()


def decode_cursor(value: str | None) -> int:
    if not value:
        return 0
    try:
        return max(0, int(base64.urlsafe_b64decode(value.encode()).decode()))
    except ValueError:
        return 0
