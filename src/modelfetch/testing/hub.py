"""A loopback Hugging Face hub: `/resolve/` URLs, LFS redirects to a CDN path, hub errors."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal
from urllib.parse import parse_qs, quote, unquote, urlencode

from aiohttp import web

from ._server import Blob, OriginServer, Target

RepoType = Literal["model", "dataset", "space"]
"""The kinds of repository the hub serves (URL prefixes "", "datasets/", "spaces/")."""

_PREFIX_TYPES: dict[str, RepoType] = {"datasets": "dataset", "spaces": "space"}
_TYPE_PREFIX: dict[str, str] = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HASH_CHUNK = 8 << 20


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


@dataclass(frozen=True, slots=True)
class _Entry:
    info: HubFile
    blob: Blob


@dataclass(frozen=True, slots=True)
class _Resolve:
    repo_type: RepoType
    repo: str
    revision: str
    path: str


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of `data`: sha1 of b"blob <size>\\0" + data."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _hash_source(source: bytes | Path, size: int, *, sha1: bool) -> tuple[str, str | None]:
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


def _check_path(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a relative file path inside a repo: {path!r}")
    return path


def _error(status: int, code: str | None, message: str, **headers: str) -> web.Response:
    """A hub-style error: `X-Error-Code`, `X-Error-Message` and a JSON body `{"error": ...}`."""
    hdrs = {"X-Error-Message": message, **headers}
    if code is not None:
        hdrs["X-Error-Code"] = code
    return web.Response(
        status=status,
        text=json.dumps({"error": message}),
        content_type="application/json",
        headers=hdrs,
    )


class HubServer(OriginServer):
    """Hugging Face-compatible origin on 127.0.0.1, good enough for `hf_hub_download`.

    Unknown repos answer `repo_not_found_status` (404 by default; 401 mimics what the real hub
    tells a client without a token), both with `X-Error-Code: RepoNotFound`.
    """

    categories: ClassVar[frozenset[str]] = frozenset({"resolve", "cdn"})

    def __init__(
        self,
        *,
        port: int = 0,
        lfs_threshold: int = 1 << 20,
        absolute_redirects: bool = False,
        require_token: str | None = None,
        repo_not_found_status: Literal[401, 404] = 404,
    ) -> None:
        super().__init__(port=port)
        self.lfs_threshold = lfs_threshold
        self.absolute_redirects = absolute_redirects
        self.require_token = require_token
        self.repo_not_found_status = repo_not_found_status
        self._data_lock = threading.RLock()
        self._repos: dict[tuple[str, str], dict[str, dict[str, _Entry]]] = {}
        self._by_sha: dict[str, list[_Entry]] = {}
        self._gated: dict[tuple[str, str], str] = {}

    # -- content --------------------------------------------------------------------

    @staticmethod
    def commit(repo: str, revision: str = "main", repo_type: RepoType = "model") -> str:
        """The fixed 40-hex commit sha of `revision` (made up from repo type, repo and revision)."""
        if _HEX40.fullmatch(revision):
            return revision
        return hashlib.sha1(f"{repo_type}/{repo}@{revision}".encode()).hexdigest()

    def add_file(
        self,
        repo: str,
        path: str,
        data: bytes | Path,
        *,
        revision: str = "main",
        repo_type: RepoType = "model",
        lfs: bool | None = None,
        sha256: str | None = None,
    ) -> HubFile:
        """Serve `data` (bytes, or a file on disk) as `path` in `repo` at `revision`.

        `lfs` defaults to True for files of at least `lfs_threshold` bytes or named `*.onnx`.
        Passing a known `sha256` for an LFS file on disk skips hashing it.
        """
        _check_path(path)
        if repo_type not in _TYPE_PREFIX:
            raise ValueError(f"unknown repo_type: {repo_type!r}")
        if _HEX40.fullmatch(revision):
            raise ValueError("name revisions by branch or tag; commits are made up by the hub")
        blob = Blob.of(data)
        if lfs is None:
            lfs = blob.size >= self.lfs_threshold or path.endswith(".onnx")
        if sha256 is not None and lfs:
            digest, git_sha1 = sha256.lower(), None
        else:
            digest, git_sha1 = _hash_source(data, blob.size, sha1=not lfs)
        info = HubFile(
            repo=repo,
            repo_type=repo_type,
            revision=revision,
            commit=self.commit(repo, revision, repo_type),
            path=path,
            size=blob.size,
            sha256=digest,
            git_sha1=git_sha1,
            lfs=lfs,
        )
        entry = _Entry(info, blob)
        with self._data_lock:
            files = self._repos.setdefault((repo_type, repo), {}).setdefault(revision, {})
            old = files.get(path)
            if old is not None:
                self._by_sha[old.info.sha256].remove(old)
            files[path] = entry
            self._by_sha.setdefault(digest, []).append(entry)
        return info

    def add_file_from_path(
        self,
        repo: str,
        path: str,
        source: Path,
        *,
        revision: str = "main",
        repo_type: RepoType = "model",
        lfs: bool | None = None,
        sha256: str | None = None,
    ) -> HubFile:
        """Serve the file on disk at `source` (streamed with sendfile) as `path` in `repo`."""
        return self.add_file(
            repo,
            path,
            Path(source),
            revision=revision,
            repo_type=repo_type,
            lfs=lfs,
            sha256=sha256,
        )

    def set_gated(
        self, repo: str, token: str | None = "secret", *, repo_type: RepoType = "model"
    ) -> None:
        """Gate `repo`: only `Authorization: Bearer <token>` gets in (None removes the gate)."""
        with self._data_lock:
            if token is None:
                self._gated.pop((repo_type, repo), None)
            else:
                self._gated[(repo_type, repo)] = token

    def resolve_url(
        self, repo: str, path: str, revision: str = "main", repo_type: RepoType = "model"
    ) -> str:
        """The `/resolve/` URL of a file, as `huggingface_hub.hf_hub_url` builds it."""
        return (
            f"{self.url}/{_TYPE_PREFIX[repo_type]}{repo}/resolve/"
            f"{quote(revision, safe='')}/{quote(path)}"
        )

    def cdn_url(self, sha256: str) -> str:
        """The CDN URL serving the LFS object with this SHA-256 (no query: no X-Repo-Commit)."""
        return f"{self.url}/cdn/{sha256}"

    # -- request handling -----------------------------------------------------------

    @staticmethod
    def _segments(request: web.Request) -> list[str]:
        return [unquote(s) for s in request.rel_url.raw_path.split("/")[1:]]

    def _parse_resolve(self, segs: list[str]) -> _Resolve | None:
        repo_type: RepoType = "model"
        if segs and segs[0] in _PREFIX_TYPES:
            repo_type = _PREFIX_TYPES[segs[0]]
            segs = segs[1:]
        if len(segs) >= 5 and segs[2] == "resolve":
            repo, rest = f"{segs[0]}/{segs[1]}", segs[3:]
        elif len(segs) >= 4 and segs[1] == "resolve":
            repo, rest = segs[0], segs[2:]  # legacy names without a namespace, e.g. "gpt2"
        else:
            return None
        if not rest[0] or not all(rest[1:]):
            return None
        return _Resolve(repo_type, repo, rest[0], "/".join(rest[1:]))

    def _cdn_entries(self, request: web.Request, sha: str) -> list[_Entry]:
        query = request.rel_url.query
        with self._data_lock:
            entries = list(self._by_sha.get(sha, ()))
        repo, file = query.get("repo"), query.get("file")
        chosen = [
            e
            for e in entries
            if (repo is None or e.info.repo == repo) and (file is None or e.info.path == file)
        ]
        return chosen or entries

    def _target(self, request: web.Request) -> Target:
        segs = self._segments(request)
        if len(segs) == 2 and segs[0] == "cdn":
            names = tuple(
                f"{e.info.repo}/{e.info.path}" for e in self._cdn_entries(request, segs[1])
            )
            return Target("cdn", (request.path, *names))
        if self._parse_resolve(segs) is not None:
            return Target("resolve", (request.path,))
        return Target("other", (request.path,))

    async def _serve(self, request: web.Request, target: Target) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        segs = self._segments(request)
        if target.category == "cdn":
            return await self._serve_cdn(request, target, segs[1])
        resolved = self._parse_resolve(segs)
        if resolved is None:
            return web.Response(status=404, text="Not Found\n")
        return await self._serve_resolve(request, target, resolved)

    def _auth_error(self, request: web.Request, key: tuple[str, str]) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        if self.require_token is not None and auth != f"Bearer {self.require_token}":
            if not auth:
                return _error(401, "RepoNotFound", "Invalid username or password.")
            return _error(401, None, "Invalid credentials in Authorization header")
        with self._data_lock:
            gate = self._gated.get(key)
        if gate is not None and auth != f"Bearer {gate}":
            kind, repo = key
            message = (
                f"Access to {kind} {repo} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in."
            )
            return _error(403 if auth else 401, "GatedRepo", message)
        return None

    async def _serve_resolve(
        self, request: web.Request, target: Target, r: _Resolve
    ) -> web.StreamResponse:
        key = (r.repo_type, r.repo)
        with self._data_lock:
            revisions = self._repos.get(key)
        denied = self._auth_error(request, key)
        if denied is not None:
            return denied
        if revisions is None:
            message = "Repository not found"
            if self.repo_not_found_status == 401:
                message = "Invalid username or password."
            return _error(self.repo_not_found_status, "RepoNotFound", message)
        with self._data_lock:
            files = revisions.get(r.revision)
            if files is None:
                for name, candidate in revisions.items():
                    if self.commit(r.repo, name, r.repo_type) == r.revision:
                        files = candidate
                        break
            entry = None if files is None else files.get(r.path)
        if files is None:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {r.revision}")
        commit = (
            r.revision
            if _HEX40.fullmatch(r.revision)
            else self.commit(r.repo, r.revision, r.repo_type)
        )
        if entry is None:
            return _error(404, "EntryNotFound", "Entry not found", **{"X-Repo-Commit": commit})
        info = entry.info
        if info.lfs:
            query = urlencode(
                {"repo": info.repo, "type": info.repo_type, "commit": commit, "file": info.path}
            )
            location = f"/cdn/{info.sha256}?{query}"
            if self.absolute_redirects:
                location = self.url + location
            return web.Response(
                status=302,
                text=f"Found. Redirecting to {location}",
                headers={
                    "Location": location,
                    "X-Linked-Etag": f'"{info.sha256}"',
                    "X-Linked-Size": str(info.size),
                    "ETag": f'"{info.sha256}"',
                    "X-Repo-Commit": commit,
                },
            )
        headers = {
            "ETag": f'"{info.git_sha1}"',
            "X-Repo-Commit": commit,
            "Content-Type": "application/octet-stream",
        }
        keys = _count_keys(request, [entry])
        return await self.send_blob(request, target, entry.blob, headers, keys)

    async def _serve_cdn(
        self, request: web.Request, target: Target, sha: str
    ) -> web.StreamResponse:
        entries = self._cdn_entries(request, sha) if _HEX64.fullmatch(sha) else []
        if not entries:
            return web.Response(status=404, text="NoSuchKey\n")
        entry = entries[0]
        filename = entry.info.path.rsplit("/", 1)[-1]
        headers = {
            "ETag": f'"{sha}"',
            "Cache-Control": "public, max-age=604800, immutable",
            "Content-Disposition": (
                f"inline; filename*=UTF-8''{quote(filename)}; filename=\"{quote(filename)}\";"
            ),
        }
        commit = parse_qs(request.rel_url.raw_query_string).get("commit", [""])[0]
        if _HEX40.fullmatch(commit):
            # hf_hub_download follows a same-host redirect in its HEAD and then needs the commit
            # on this answer; the real hub's CDN is another host, where the HEAD stops instead.
            headers["X-Repo-Commit"] = commit
        keys = _count_keys(request, entries)
        return await self.send_blob(request, target, entry.blob, headers, keys)


def _count_keys(request: web.Request, entries: list[_Entry]) -> tuple[str, ...]:
    keys = [request.path]
    for e in entries:
        keys.append(f"{e.info.repo}/{e.info.path}")
        keys.append(e.info.sha256)
        if e.info.git_sha1:
            keys.append(e.info.git_sha1)
    return tuple(dict.fromkeys(keys))


__all__ = ["HubFile", "HubServer", "RepoType", "git_blob_sha1"]
