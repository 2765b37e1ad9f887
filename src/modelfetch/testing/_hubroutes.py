"""The loopback hub's URLs and error answers: what a resolve URL names, hub-style errors."""

from __future__ import annotations

import json

from aiohttp import web

from ._hubrepo import RepoType

_PREFIX_TYPES: dict[str, RepoType] = {"datasets": "dataset", "spaces": "space"}


def hub_error(status: int, code: str | None, message: str, **headers: str) -> web.Response:
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


def parse_resolve(segs: list[str]) -> tuple[RepoType, str, str, str] | None:
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
    return repo_type, repo, rest[0], "/".join(rest[1:])


def renamed_url(request: web.Request, old: str, new: str) -> str:
    """The request's own path and query with repo `old` renamed `new` (a relative URL)."""
    path, query = request.rel_url.raw_path, request.rel_url.raw_query_string
    at = path.find(f"/{old}/")
    if at < 0:
        at = len(path) - len(old) - 1  # `/api/models/org/name` ends with the repo
    location = path[:at] + f"/{new}" + path[at + len(old) + 1 :]
    return f"{location}?{query}" if query else location
