"""A loopback Hugging Face hub: file resolves, LFS redirects to a CDN path, the hub API."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, cast
from urllib.parse import parse_qs, quote, unquote, urlencode

from aiohttp import web

from ._hubapi import decode_cursor, encode_cursor, parse_api, revision_info, tree_entries, truthy
from ._hubrepo import (
    HEX40,
    Entry,
    HubFile,
    Repo,
    RepoType,
    check_path,
    git_blob_sha1,
    hash_source,
    initial_commit,
)
from ._hubroutes import hub_error, parse_resolve, renamed_url
from ._server import Blob, OriginServer, Target
from .faults import Fault, On

HubOn = Literal["any", "resolve", "cdn", "api"]
"""Which hub requests a fault targets: `/resolve/`, `/cdn/`, `/api/`, or all of them."""

_TYPE_PREFIX: dict[str, str] = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_HEX64_LEN = 64


class _CommitLookup:
    """`commit(repo, revision="main", repo_type="model")`: on the class, the fixed sha of a
    branch's first commit; on a running server, the commit the revision names now."""

    def __get__(self, server: HubServer | None, owner: type) -> Callable[..., str]:
        return initial_commit if server is None else server._current_commit


class HubServer(OriginServer):
    """Hugging Face-compatible hub on 127.0.0.1, checked against huggingface_hub's own client.

    Serves `/{repo}/resolve/{rev}/{path}` (LFS files redirect to `/cdn/<sha256>`) and the API
    huggingface_hub reads: `/api/{models|datasets}/{repo}/revision/{rev}` (`?blobs=true`) and
    `/api/{...}/tree/{rev}[/{path}]` (`recursive`, pages of `tree_page_size` with `Link`).

    Commits: a branch names a commit; every commit stays resolvable by its sha. `add_file`
    builds a branch's first commit in place (its sha is the fixed `HubServer.commit(repo,
    revision, repo_type)`, which is how the older tests use it); `push` makes a new commit
    (a new sha) and moves the branch, as does `add_file` once a branch has been pushed to;
    `tag` names a commit for good. `server.commit(repo, rev)` is what `rev` names now.

    Access: unknown repos answer `repo_not_found_status` (404, or 401 as the real hub tells a
    client without a token), `X-Error-Code: RepoNotFound`. `set_private`: everything 401
    RepoNotFound without the right token. `set_gated`: the API answers anyone, file resolves
    401 (no token) / 403 (another token) `GatedRepo`. `require_token`: every request needs it.

    Counters: `requests_in("api")` (and "resolve", "cdn") list each category's requests;
    `inject(..., on="api")` breaks the API routes.
    """

    categories: ClassVar[frozenset[str]] = frozenset({"resolve", "cdn", "api"})
    commit = _CommitLookup()

    def __init__(
        self,
        *,
        port: int = 0,
        lfs_threshold: int = 1 << 20,
        absolute_redirects: bool = False,
        require_token: str | None = None,
        repo_not_found_status: Literal[401, 404] = 404,
        tree_page_size: int = 1000,
    ) -> None:
        super().__init__(port=port)
        self.lfs_threshold = lfs_threshold
        self.absolute_redirects = absolute_redirects
        self.require_token = require_token
        self.repo_not_found_status = repo_not_found_status
        self.tree_page_size = tree_page_size
        self._data_lock = threading.RLock()
        self._repos: dict[tuple[str, str], Repo] = {}
        self._renamed: dict[tuple[str, str], str] = {}
        self._by_sha: dict[str, list[Entry]] = {}
        self._pushes = 0
        self._by_category: list[tuple[str, str, str]] = []

    # -- content --------------------------------------------------------------------

    def _current_commit(
        self, repo: str, revision: str = "main", repo_type: RepoType = "model"
    ) -> str:
        with self._data_lock:
            found = self._repos.get((repo_type, repo))
            commit = None if found is None else found.find(revision)
        return commit.sha if commit is not None else initial_commit(repo, revision, repo_type)

    def _repo(self, repo: str, repo_type: RepoType) -> Repo:
        if repo_type not in _TYPE_PREFIX:
            raise ValueError(f"unknown repo_type: {repo_type!r}")
        found = self._repos.get((repo_type, repo))
        if found is None:
            found = self._repos[(repo_type, repo)] = Repo(repo_type, repo)
        return found

    def _entry(
        self,
        repo: str,
        path: str,
        data: bytes | Path,
        *,
        revision: str,
        repo_type: RepoType,
        commit: str,
        lfs: bool | None,
        sha256: str | None,
    ) -> Entry:
        check_path(path)
        blob = Blob.of(data)
        if lfs is None:
            lfs = blob.size >= self.lfs_threshold or path.endswith(".onnx")
        if sha256 is not None and lfs:
            digest, git_sha1 = sha256.lower(), None
        else:
            digest, git_sha1 = hash_source(data, blob.size, sha1=not lfs)
        info = HubFile(repo, repo_type, revision, commit, path, blob.size, digest, git_sha1, lfs)
        return Entry(info, blob)

    def _index(self, entry: Entry) -> None:
        self._by_sha.setdefault(entry.info.sha256, []).append(entry)

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
        """Serve `data` (bytes, or a file on disk) as `path` in `repo` at branch `revision`.

        Amends the branch's first commit while it has never been pushed to; afterwards it is
        a `push` of this one file (a new commit). `lfs` defaults to True for files of at
        least `lfs_threshold` bytes or named `*.onnx`; a known `sha256` of an LFS file on
        disk skips hashing it.
        """
        if HEX40.fullmatch(revision):
            raise ValueError("name revisions by branch or tag; commits are made up by the hub")
        with self._data_lock:
            head = self._repo(repo, repo_type).open_head(revision)
            if head is None:
                sha = self.push(repo, {path: data}, revision=revision, repo_type=repo_type, lfs=lfs)
                return self._repos[(repo_type, repo)].commits[sha].files[path].info
            entry = self._entry(
                repo,
                path,
                data,
                revision=revision,
                repo_type=repo_type,
                commit=head.sha,
                lfs=lfs,
                sha256=sha256,
            )
            old = head.files.get(path)
            if old is not None:  # an open commit shares no entry with another commit
                self._by_sha[old.info.sha256].remove(old)
            head.files[path] = entry
            self._index(entry)
        return entry.info

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
            repo, path, Path(source), revision=revision, repo_type=repo_type, lfs=lfs, sha256=sha256
        )

    def push(
        self,
        repo: str,
        files: Mapping[str, bytes | Path] | None = None,
        *,
        delete: Iterable[str] = (),
        revision: str = "main",
        repo_type: RepoType = "model",
        lfs: bool | None = None,
    ) -> str:
        """Commit `files` (added or changed) and `delete` on top of branch `revision`; the
        branch moves to the new commit, whose sha is returned. Older commits stay served."""
        with self._data_lock:
            self._pushes += 1
            r = self._repo(repo, repo_type)
            parent = r.branches.get(revision, "")
            changes = sorted((files or {}).items())
            seed = f"{repo_type}/{repo}@{revision}\n{parent}\n{self._pushes}\n" + "\n".join(
                [p for p, _ in changes] + [f"-{p}" for p in sorted(delete)]
            )
            sha = hashlib.sha1(seed.encode()).hexdigest()
            new: dict[str, Entry | None] = {p: None for p in delete}
            for path, data in changes:
                new[path] = self._entry(
                    repo,
                    path,
                    data,
                    revision=revision,
                    repo_type=repo_type,
                    commit=sha,
                    lfs=lfs,
                    sha256=None,
                )
            r.new_commit(revision, sha, new)
            for entry in new.values():
                if entry is not None:
                    self._index(entry)
        return sha

    def tag(
        self, repo: str, name: str, revision: str = "main", *, repo_type: RepoType = "model"
    ) -> str:
        """Name the commit `revision` points at `name` for good; returns its sha."""
        with self._data_lock:
            r = self._repo(repo, repo_type)
            commit = r.find(revision)
            if commit is None:
                raise ValueError(f"{repo} has no revision {revision!r}")
            commit.sealed = True
            r.tags[name] = commit.sha
        return commit.sha

    def files(
        self, repo: str, revision: str = "main", repo_type: RepoType = "model"
    ) -> dict[str, HubFile]:
        """The files `revision` names now, by path."""
        with self._data_lock:
            found = self._repos.get((repo_type, repo))
            commit = None if found is None else found.find(revision)
            return {} if commit is None else {p: e.info for p, e in commit.files.items()}

    def set_gated(
        self, repo: str, token: str | None = "secret", *, repo_type: RepoType = "model"
    ) -> None:
        """Gate `repo`: only `Authorization: Bearer <token>` gets files (None removes the gate)."""
        with self._data_lock:
            self._repo(repo, repo_type).gate = token

    def set_private(
        self, repo: str, token: str | None = "secret", *, repo_type: RepoType = "model"
    ) -> None:
        """Make `repo` private: invisible (401 RepoNotFound) without `Bearer <token>`."""
        with self._data_lock:
            self._repo(repo, repo_type).private = token

    def rename(self, old: str, new: str, *, repo_type: RepoType = "model") -> None:
        """Move repo `old` to `new`; requests for `old` are redirected (307), as on the hub."""
        with self._data_lock:
            self._repos[(repo_type, new)] = self._repos.pop((repo_type, old))
            self._repos[(repo_type, new)].repo_id = new
            self._renamed[(repo_type, old)] = new

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

    # -- counters and faults --------------------------------------------------------

    def requests_in(self, category: str) -> list[tuple[str, str]]:
        """The (method, path) of every request of a category ("api", "resolve", "cdn")."""
        with self._lock:
            return [(m, p) for c, m, p in self._by_category if c == category]

    def category_counts(self) -> Counter[str]:
        """How many requests each category has had."""
        with self._lock:
            return Counter(c for c, _, _ in self._by_category)

    def reset_counters(self) -> None:
        super().reset_counters()
        with self._lock:
            self._by_category.clear()

    def inject(
        self, fault: Fault, *, path: str | None = None, times: int | None = None, on: HubOn = "any"
    ) -> None:
        """As `OriginServer.inject`, with `on="api"` for the API routes too. On the API,
        `path` matches the request path's end or `<repo>/revision`, `<repo>/tree`."""
        super().inject(fault, path=path, times=times, on=cast(On, on))

    # -- request routing ------------------------------------------------------------

    @staticmethod
    def _segments(request: web.Request) -> list[str]:
        return [unquote(s) for s in request.rel_url.raw_path.split("/")[1:]]

    def _target(self, request: web.Request) -> Target:
        target = self._classify(request)
        with self._lock:
            self._by_category.append((target.category, request.method, request.path))
        return target

    def _classify(self, request: web.Request) -> Target:
        segs = self._segments(request)
        if len(segs) == 2 and segs[0] == "cdn":
            names = tuple(
                f"{e.info.repo}/{e.info.path}" for e in self._cdn_entries(request, segs[1])
            )
            return Target("cdn", (request.path, *names))
        api = parse_api(segs)
        if api is not None:
            return Target("api", (request.path, f"{api[1]}/{api[2]}"))
        if parse_resolve(segs) is not None:
            return Target("resolve", (request.path,))
        return Target("other", (request.path,))

    async def _serve(self, request: web.Request, target: Target) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        segs = self._segments(request)
        if target.category == "cdn":
            return await self._serve_cdn(request, target, segs[1])
        if target.category == "api":
            api = parse_api(segs)
            assert api is not None
            return await self._serve_api(request, target, api)
        resolved = parse_resolve(segs)
        if resolved is None:
            return web.Response(status=404, text="Not Found\n")
        return await self._serve_resolve(request, target, resolved)

    def _access(
        self, request: web.Request, repo_type: RepoType, repo_id: str, *, files: bool
    ) -> Repo | web.Response:
        """The repo, or the answer the hub gives instead (auth, rename, not found, gate)."""
        auth = request.headers.get("Authorization", "")
        if self.require_token is not None and auth != f"Bearer {self.require_token}":
            if not auth:
                return hub_error(401, "RepoNotFound", "Invalid username or password.")
            return hub_error(401, None, "Invalid credentials in Authorization header")
        with self._data_lock:
            renamed = self._renamed.get((repo_type, repo_id))
            repo = self._repos.get((repo_type, repo_id))
        if renamed is not None and repo is None:
            return web.Response(
                status=307, headers={"Location": renamed_url(request, repo_id, renamed)}
            )
        if repo is None or (repo.private is not None and auth != f"Bearer {repo.private}"):
            message = "Repository not found"
            status: int = self.repo_not_found_status
            if repo is not None or status == 401:
                status, message = 401, "Invalid username or password."
            return hub_error(status, "RepoNotFound", message)
        if files and repo.gate is not None and auth != f"Bearer {repo.gate}":
            message = (
                f"Access to {repo_type} {repo_id} is restricted. You must have access to it and "
                "be authenticated to access it. Please log in."
            )
            return hub_error(403 if auth else 401, "GatedRepo", message)
        return repo

    # -- /resolve/ and /cdn/ --------------------------------------------------------

    def _cdn_entries(self, request: web.Request, sha: str) -> list[Entry]:
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

    async def _serve_resolve(
        self, request: web.Request, target: Target, r: tuple[RepoType, str, str, str]
    ) -> web.StreamResponse:
        repo_type, repo_id, revision, path = r
        repo = self._access(request, repo_type, repo_id, files=True)
        if isinstance(repo, web.Response):
            return repo
        with self._data_lock:
            commit = repo.find(revision)
            entry = None if commit is None else commit.files.get(path)
        if commit is None:
            return hub_error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if entry is None:
            return hub_error(
                404, "EntryNotFound", "Entry not found", **{"X-Repo-Commit": commit.sha}
            )
        info = entry.info
        if info.lfs:
            query = urlencode(
                {"repo": info.repo, "type": info.repo_type, "commit": commit.sha, "file": path}
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
                    "X-Repo-Commit": commit.sha,
                },
            )
        headers = {
            "ETag": f'"{info.git_sha1}"',
            "X-Repo-Commit": commit.sha,
            "Content-Type": "application/octet-stream",
        }
        keys = _count_keys(request, [entry])
        return await self.send_blob(request, target, entry.blob, headers, keys)

    async def _serve_cdn(
        self, request: web.Request, target: Target, sha: str
    ) -> web.StreamResponse:
        entries = self._cdn_entries(request, sha) if len(sha) == _HEX64_LEN else []
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
        if HEX40.fullmatch(commit):
            # hf_hub_download follows a same-host redirect in its HEAD and then needs the commit
            # on this answer; the real hub's CDN is another host, where the HEAD stops instead.
            headers["X-Repo-Commit"] = commit
        keys = _count_keys(request, entries)
        return await self.send_blob(request, target, entry.blob, headers, keys)

    # -- /api/ ------------------------------------------------------------------------

    async def _serve_api(
        self, request: web.Request, target: Target, api: tuple[RepoType, str, str, list[str]]
    ) -> web.StreamResponse:
        repo_type, repo_id, kind, args = api
        repo = self._access(request, repo_type, repo_id, files=False)
        if isinstance(repo, web.Response):
            return repo
        revision = args[0] if args else "main"
        with self._data_lock:
            commit = repo.find(revision)
            files = {} if commit is None else dict(commit.files)
        if commit is None:
            return hub_error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        query = request.rel_url.query
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if kind == "tree":
            path = "/".join(args[1:]).strip("/")
            entries = tree_entries(commit, files, path, truthy(query.get("recursive")))
            if entries is None:
                message = f"{path} does not exist on {revision}"
                return hub_error(404, "EntryNotFound", message, **{"X-Repo-Commit": commit.sha})
            start = decode_cursor(query.get("cursor"))
            page = entries[start : start + max(1, self.tree_page_size)]
            if start + len(page) < len(entries):
                items = [(k, v) for k, v in query.items() if k != "cursor"]
                items.append(("cursor", encode_cursor(start + len(page))))
                link = f"{self.url}{request.rel_url.raw_path}?{urlencode(items)}"
                headers["Link"] = f'<{link}>; rel="next"'
            body: Any = page
        else:
            body = revision_info(repo, commit, files, blobs=truthy(query.get("blobs")))
        data = json.dumps(body).encode()
        return await self.send_blob(request, target, Blob.of(data), headers, (request.path,))


def _count_keys(request: web.Request, entries: list[Entry]) -> tuple[str, ...]:
    keys = [request.path]
    for e in entries:
        keys.append(f"{e.info.repo}/{e.info.path}")
        keys.append(e.info.sha256)
        if e.info.git_sha1:
            keys.append(e.info.git_sha1)
    return tuple(dict.fromkeys(keys))


__all__ = ["HubFile", "HubOn", "HubServer", "RepoType", "git_blob_sha1"]
