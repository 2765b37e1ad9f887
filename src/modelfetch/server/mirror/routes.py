"""The mirror's routes: resolve URLs, the revision info and the tree API, as the hub has them.

    HEAD/GET /{repo}/resolve/{rev}/{path}            (/datasets/{repo}/resolve/... too)
    GET /api/{models|datasets}/{repo}/revision/{rev}  [?blobs=true]
    GET /api/{models|datasets}/{repo}/tree/{rev}[/{path}]  [?recursive=true&cursor=...]

Paths are read from the raw URL (a revision such as `refs%2Fpr%2F1` is one segment) and
checked like catalog paths before use.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlencode

from aiohttp import web

from ...catalog import check_relpath
from ...errors import ModelfetchError
from ...hubtypes import RepoFile, RepoRef, RepoType
from .answers import HubAnswer, entry_not_found, file_headers, send_file
from .holdings import RepoView, lfs_pointer
from .service import Mirror

TREE_PAGE = 1000  # entries per tree page, as the hub pages a listing without `expand`
Route = Literal["resolve", "revision", "tree"]
_TYPES: dict[str, RepoType] = {"models": "model", "datasets": "dataset"}


@dataclass(frozen=True)
class MirrorRequest:
    """A parsed mirror URL: which route, repo, revision and path."""

    route: Route
    repo: RepoRef
    revision: str
    path: str


def parse(raw_path: str) -> MirrorRequest | None:
    """The mirror request a raw URL path names, or None (not a mirror route).

    Raises HubAnswer(400) for a mirror URL with an unusable repo id, revision or path.
    """
    segs = [unquote(s) for s in raw_path.split("/")[1:]]
    if len(segs) >= 3 and segs[0] == "api" and segs[1] in _TYPES:
        repo_type, rest = _TYPES[segs[1]], segs[2:]
        for width in (2, 1):
            if len(rest) > width + 1 and rest[width] in ("revision", "tree"):
                route: Route = "revision" if rest[width] == "revision" else "tree"
                args = rest[width + 1 :]
                if route == "revision" and len(args) != 1:
                    return None
                path = "/".join(args[1:]).strip("/")
                return _build(route, "/".join(rest[:width]), repo_type, args[0], path)
        if len(rest) in (1, 2) and all(rest):  # the repo info: its default branch
            return _build("revision", "/".join(rest), repo_type, "main", "")
        return None
    repo_type = "model"
    if segs and segs[0] == "datasets":
        repo_type, segs = "dataset", segs[1:]
    for width in (2, 1):
        if len(segs) > width + 2 and segs[width] == "resolve":
            rest = segs[width + 1 :]
            path = "/".join(rest[1:])
            return _build("resolve", "/".join(segs[:width]), repo_type, rest[0], path)
    return None


def _build(route: Route, repo_id: str, repo_type: RepoType, rev: str, path: str) -> MirrorRequest:
    try:
        repo = RepoRef(repo_id, repo_type)
        if not rev or "\x00" in rev or ".." in rev:
            raise HubAnswer(400, f"invalid revision {rev!r}")
        if path or route == "resolve":
            check_relpath(path, what="file path")
    except ModelfetchError as exc:
        raise HubAnswer(400, str(exc)) from None
    return MirrorRequest(route, repo, rev, path)


# -- handlers -----------------------------------------------------------------------------------


async def resolve(request: web.Request, mirror: Mirror, m: MirrorRequest) -> web.StreamResponse:
    view, f = await mirror.file(m.repo, m.revision, m.path)
    headers = file_headers(f, view.commit)
    if request.method == "HEAD":
        mirror.prefetch(m.repo, view.commit, f)
        response = web.StreamResponse(status=200, headers=headers)
        response.content_length = f.size
        await response.prepare(request)
        mirror.stats.request("resolve", "head", request.remote)
        return response
    try:
        copy, held = await mirror.obtain(m.repo, view.commit, f)
    except HubAnswer:
        mirror.stats.request("resolve", "error", request.remote)
        raise
    mirror.stats.request("resolve", "hit" if held else "miss", request.remote)
    return await send_file(
        request, copy.path, f.size, headers, same_file=copy.same, on_bytes=mirror.stats.sent
    )


async def revision(request: web.Request, mirror: Mirror, m: MirrorRequest) -> web.StreamResponse:
    view = await mirror.view(m.repo, m.revision, complete=True)
    blobs = request.query.get("blobs", "").lower() in ("1", "true")
    mirror.stats.request("revision", "ok", request.remote)
    return web.json_response(revision_body(view, blobs=blobs))


async def tree(request: web.Request, mirror: Mirror, m: MirrorRequest) -> web.StreamResponse:
    view = await mirror.view(m.repo, m.revision, complete=True)
    recursive = request.query.get("recursive", "").lower() in ("1", "true")
    entries = tree_entries(view, m.path, recursive)
    if entries is None:
        raise entry_not_found(m.path, view.commit)
    start = _cursor(request.query.get("cursor"))
    page = entries[start : start + TREE_PAGE]
    headers = {}
    if start + len(page) < len(entries):
        query = [(k, v) for k, v in request.query.items() if k != "cursor"]
        query.append(("cursor", base64.urlsafe_b64encode(str(start + len(page)).encode()).decode()))
        link = str(request.url.with_query(None))  # absolute, by the Host the client used
        headers["Link"] = f'<{link}?{urlencode(query)}>; rel="next"'
    mirror.stats.request("tree", "ok", request.remote)
    return web.json_response(page, headers=headers)


HANDLERS = {"resolve": resolve, "revision": revision, "tree": tree}


async def answer(request: web.Request, mirror: Mirror, m: MirrorRequest) -> web.StreamResponse:
    try:
        return await HANDLERS[m.route](request, mirror, m)
    except HubAnswer as exc:
        if exc.status >= 500 or exc.code is not None:
            mirror.stats.request(m.route, "error", request.remote)
        return exc.response()


# -- the hub's JSON shapes ----------------------------------------------------------------------


def revision_body(view: RepoView, *, blobs: bool) -> dict[str, Any]:
    """`/api/{type}s/{repo}/revision/{rev}` as the hub answers it (the fields repo_info reads)."""
    repo = view.repo
    siblings = []
    for path in sorted(view.files):
        f = view.files[path]
        sibling: dict[str, Any] = {"rfilename": path}
        if blobs:
            sibling.update(size=f.size, blobId=f.blob_id)
            if f.lfs_sha256 is not None:
                size = _pointer_size(f)
                sibling["lfs"] = {"sha256": f.lfs_sha256, "size": f.size, "pointerSize": size}
        siblings.append(sibling)
    body: dict[str, Any] = {
        "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
        "id": repo.repo_id,
        "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
        "sha": view.commit,
        "private": False,
        "gated": False,
        "disabled": False,
        "tags": [],
        "siblings": siblings,
        "usedStorage": sum(f.size for f in view.files.values()),
    }
    if view.last_modified:
        body["lastModified"] = view.last_modified
    if repo.repo_type == "model":
        body["modelId"] = repo.repo_id
    return body


def tree_entries(view: RepoView, path: str, recursive: bool) -> list[dict[str, Any]] | None:
    """The tree entries under `path` (files and directories); None if it is no directory."""
    files = view.files
    dirs = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
    if path and path not in dirs:
        return None
    prefix = f"{path}/" if path else ""
    out = []
    for name in sorted(dirs | set(files)):
        if not name.startswith(prefix) or (not recursive and "/" in name[len(prefix) :]):
            continue
        f = files.get(name)
        if f is not None:
            out.append(_file_entry(f))
        else:
            oid = hashlib.sha1(f"tree {view.commit}/{name}".encode()).hexdigest()
            out.append({"type": "directory", "oid": oid, "size": 0, "path": name})
    return out


def _file_entry(f: RepoFile) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
    if f.lfs_sha256 is not None:
        item["lfs"] = {"oid": f.lfs_sha256, "size": f.size, "pointerSize": _pointer_size(f)}
    return item


def _pointer_size(f: RepoFile) -> int:
    return len(lfs_pointer(f.lfs_sha256 or "", f.size))


def _cursor(value: str | None) -> int:
    if not value:
        return 0
    try:
        return max(0, int(base64.urlsafe_b64decode(value.encode()).decode()))
    except ValueError:
        raise HubAnswer(400, f"invalid cursor {value!r}") from None


__all__ = ["MirrorRequest", "answer", "parse"]
