"""A loopback IPFS path gateway: `GET /ipfs/{cid}/{path}` with ranges and the bafkqaaa probe."""

from __future__ import annotations

import html
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote, unquote

from aiohttp import web

from ._server import Blob, OriginServer, Target

EMPTY_CID = "bafkqaaa"
"""The identity CID of empty content: gateways answer it at once (used as a liveness probe)."""


def _check_path(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a relative file path inside a directory: {path!r}")
    return path


class GatewayServer(OriginServer):
    """IPFS path gateway on 127.0.0.1 serving files and directories registered by CID.

    Trustless answers (`?format=raw|car`, `Accept: application/vnd.ipld.*`) are not
    implemented: they get 501, except for the empty probe CID.
    """

    categories: ClassVar[frozenset[str]] = frozenset({"ipfs"})

    def __init__(self, *, port: int = 0) -> None:
        super().__init__(port=port)
        self._data_lock = threading.RLock()
        self._files: dict[str, Blob] = {}
        self._dirs: dict[str, dict[str, Blob]] = {}

    def add_file(self, cid: str, data: bytes | Path) -> None:
        """Serve `data` (bytes, or a file on disk) at `/ipfs/<cid>`."""
        with self._data_lock:
            self._files[cid] = Blob.of(data)

    def add_file_from_path(self, cid: str, source: Path) -> None:
        """Serve the file on disk at `source` (streamed with sendfile) at `/ipfs/<cid>`."""
        self.add_file(cid, Path(source))

    def add_directory(self, cid: str, files: Mapping[str, bytes | Path]) -> None:
        """Serve each `files[path]` (bytes or a file on disk) at `/ipfs/<cid>/<path>`."""
        entries = {_check_path(p): Blob.of(d) for p, d in files.items()}
        with self._data_lock:
            self._dirs[cid] = entries

    def ipfs_url(self, cid: str, path: str = "") -> str:
        """The path-gateway URL of `cid` (and a file `path` inside it)."""
        return f"{self.url}/ipfs/{cid}" + (f"/{quote(path)}" if path else "")

    def _target(self, request: web.Request) -> Target:
        return Target("ipfs", (request.path,))

    async def _serve(self, request: web.Request, target: Target) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        raw = request.rel_url.raw_path
        segs = [unquote(s) for s in raw.split("/")[1:]]
        if len(segs) < 2 or segs[0] != "ipfs" or not segs[1]:
            return web.Response(status=404, text="404 page not found\n")
        cid, rest = segs[1], segs[2:]
        trailing = bool(rest) and rest[-1] == ""
        rest = [s for s in rest if s]
        path = "/".join(rest)
        ipfs_path = "/ipfs/" + cid + (f"/{path}" if path else "")
        base = {"X-Ipfs-Path": ipfs_path, "X-Ipfs-Roots": cid}

        if cid == EMPTY_CID and not path:
            return web.Response(status=200, body=b"", headers={**base, "Etag": f'"{cid}"'})
        fmt = request.rel_url.query.get("format", "")
        accept = request.headers.get("Accept", "")
        if fmt in ("raw", "car") or "application/vnd.ipld." in accept:
            return web.Response(status=501, text="trustless responses not implemented here\n")

        with self._data_lock:
            blob = self._files.get(cid) if not path else None
            listing = self._dirs.get(cid)
        if blob is None and listing is not None:
            blob = listing.get(path)
            if blob is None:
                prefix = f"{path}/" if path else ""
                children = sorted(
                    {p[len(prefix) :].split("/", 1)[0] for p in listing if p.startswith(prefix)}
                )
                if children:
                    if not trailing:
                        return web.Response(status=301, headers={"Location": f"{raw}/"})
                    items = "".join(
                        f'<li><a href="{quote(c)}">{html.escape(c)}</a></li>' for c in children
                    )
                    return web.Response(
                        text=f"<html><body><h1>Index of {html.escape(ipfs_path)}</h1>"
                        f"<ul>{items}</ul></body></html>",
                        content_type="text/html",
                        headers=base,
                    )
        if blob is None:
            return web.Response(
                status=404,
                text=f"failed to resolve {ipfs_path}: no link named {path!r} under {cid}\n"
                if path
                else f"failed to resolve {ipfs_path}: not found\n",
            )
        etag = f'"{cid}"' if not path else f'"{cid}/{quote(path)}"'
        headers = {
            **base,
            "Etag": etag,
            "Cache-Control": "public, max-age=29030400, immutable",
        }
        keys = (request.path, f"{cid}/{path}" if path else cid)
        return await self.send_blob(request, target, blob, headers, keys)


__all__ = ["EMPTY_CID", "GatewayServer"]
