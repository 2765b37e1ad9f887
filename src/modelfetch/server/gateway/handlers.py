"""The gateway's answers: raw blocks, CAR streams, and plain files (with Range) of /ipfs paths."""

from __future__ import annotations

import hashlib
import html
import mimetypes
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Final, cast
from urllib.parse import quote

from aiohttp import web

from ...errors import BadBlock, NoSuchFile
from ...ipfs.car import encode_header
from ...ipfs.cid import Cid, encode_varint
from ...ipfs.dagfile import DagReader
from ...ipfs.unixfs import NodeType
from .dags import StoreDags
from .request import (
    CAR_TYPE,
    RAW_TYPE,
    Reject,
    Want,
    negotiate,
    not_modified,
    parse_entity_bytes,
    parse_range,
    resolve_range,
    split_path,
)
from .walk import SCOPES, Recorder, Walk, car_blocks, file_info, file_size, unique

DAGS: Final = web.AppKey("modelfetch_gateway_dags", StoreDags)
PROBE_CID: Final = "bafkqaaa"
"""The identity CID of empty content: the trustless gateway probe."""
CACHE_CONTROL: Final = "public, max-age=29030400, immutable"
_SNIFF: Final = 512


@dataclass(frozen=True, slots=True)
class Resolved:
    """A request's path resolved: every segment's CID, the blocks read, the terminal block."""

    root: Cid
    path: str
    segments: tuple[Cid, ...]
    path_blocks: list[tuple[Cid, bytes]]
    reader: DagReader
    block: bytes

    @property
    def terminal(self) -> Cid:
        return self.segments[-1]

    def headers(self, cid_text: str) -> dict[str, str]:
        return {
            "X-Ipfs-Path": f"/ipfs/{cid_text}" + (f"/{quote(self.path)}" if self.path else ""),
            "X-Ipfs-Roots": ",".join(str(c) for c in self.segments),
            "Cache-Control": CACHE_CONTROL,
            "X-Content-Type-Options": "nosniff",
            "Access-Control-Allow-Origin": "*",
            "Vary": "Accept",
        }


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n")


async def handle(request: web.Request) -> web.StreamResponse:
    """`GET|HEAD /ipfs/{cid}[/{path}]`: raw, CAR or plain, by `format` and `Accept`."""
    parsed = split_path(request)
    if parsed is None:
        return _text(404, "expected /ipfs/<cid>[/<path>]")
    cid_text, path = parsed
    try:
        root = Cid.parse(cid_text)
    except ValueError as exc:
        return _text(400, f"invalid CID {cid_text!r}: {exc}")
    try:
        want = negotiate(request.rel_url.query, request.headers.get("Accept", ""))
        resolved = await _resolve(request.app[DAGS], root, path)
        if isinstance(resolved, web.Response):
            return resolved
        headers = resolved.headers(cid_text)
        if want is None:
            return await _serve_plain(request, resolved, headers)
        if want.fmt == "raw":
            return await _serve_raw(request, resolved, headers)
        return await _serve_car(request, want, resolved, headers)
    except Reject as reject:
        return reject.response()


async def _resolve(dags: StoreDags, root: Cid, path: str) -> Resolved | web.Response:
    recorder = Recorder(dags)
    reader = DagReader(recorder)
    shown = f"/ipfs/{root}" + (f"/{path}" if path else "")
    try:
        segments = [root]
        for name in [p for p in path.split("/") if p]:
            segments.append(await reader.resolve(segments[-1], name))
        path_blocks = unique(recorder.log)  # before the terminal's: a CAR sends it once
        block = await reader.block(segments[-1])
    except NoSuchFile as exc:
        return _text(404, f"{shown}: {exc}")
    except BadBlock as exc:
        if recorder.corrupt is not None:  # our own files disagree with their index
            return _text(500, f"{shown}: {exc}")
        return _text(
            404,
            f"{shown}: not held here ({exc}); this gateway serves only the verified "
            "models of its store that have a CID",
        )
    return Resolved(root, path, tuple(segments), path_blocks, reader, block)


# -- raw blocks ----------------------------------------------------------------------------


async def _serve_raw(
    request: web.Request, resolved: Resolved, headers: dict[str, str]
) -> web.StreamResponse:
    cid = resolved.terminal
    etag = f'"{cid}.raw"'
    hdrs = {
        **headers,
        "Content-Type": RAW_TYPE,
        "Etag": etag,
        "Content-Disposition": f'attachment; filename="{cid}.bin"',
    }
    if not_modified(request, etag):
        return web.Response(status=304, headers=hdrs)
    if request.method == "HEAD":
        hdrs["Content-Length"] = str(len(resolved.block))
        return web.Response(status=200, headers=hdrs)
    return web.Response(status=200, body=resolved.block, headers=hdrs)


# -- CAR streams ---------------------------------------------------------------------------


async def _serve_car(
    request: web.Request, want: Want, resolved: Resolved, headers: dict[str, str]
) -> web.StreamResponse:
    query = request.rel_url.query
    scope_text = query.get("dag-scope", "")
    if scope_text and scope_text not in SCOPES:
        raise Reject(400, f"dag-scope={scope_text!r}: expected block, entity or all")
    spec = parse_entity_bytes(query["entity-bytes"]) if "entity-bytes" in query else None
    scope = scope_text or ("entity" if spec is not None else "all")
    terminal, block = resolved.terminal, resolved.block
    kind, _, fs = file_info(terminal, block)
    rng: tuple[int, int] | None = None
    if scope == "entity" and spec is not None and kind == "file":
        rng = resolve_range(spec, file_size(block, fs))
        if rng is None:
            scope = "block"  # a zero-length range: the root block tells the client why
    tag = hashlib.sha256(
        f"{resolved.root}|{resolved.path}|{scope}|{rng}|{want.dups}".encode()
    ).hexdigest()[:16]
    etag = f'W/"{terminal}.car.{tag}"'
    name = f"{resolved.root}_{resolved.path.replace('/', '_')}" if resolved.path else str(terminal)
    hdrs = {
        **headers,
        "Content-Type": f"{CAR_TYPE}; version=1; order=dfs; dups={'y' if want.dups else 'n'}",
        "Etag": etag,
        "Content-Disposition": f'attachment; filename="{name}.car"',
    }
    if not_modified(request, etag):
        return web.Response(status=304, headers=hdrs)
    resp = web.StreamResponse(status=200, headers=hdrs)
    if request.method == "HEAD":
        await resp.prepare(request)
        return resp
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(encode_header([resolved.root]))
    walk = Walk(resolved.reader, want.dups)
    blocks = car_blocks(walk, resolved.path_blocks, terminal, block, scope, rng)
    try:
        async for cid, data in blocks:
            raw_cid = bytes(cid)
            await resp.write(encode_varint(len(raw_cid) + len(data)) + raw_cid + data)
    except (BadBlock, LookupError, OSError):
        # a file changed under us mid-stream: end here; the client sees the CAR incomplete
        pass
    finally:
        await blocks.aclose()
    await resp.write_eof()
    return resp


# -- plain files and directories ---------------------------------------------------------


def _content_type(name: str, head: bytes) -> str:
    guessed, _ = mimetypes.guess_type(name, strict=False) if name else (None, None)
    if guessed:
        return guessed + ("; charset=utf-8" if guessed.startswith("text/") else "")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the sniff boundary
            return "application/octet-stream"
    if b"\0" in head:
        return "application/octet-stream"
    return "text/plain; charset=utf-8"


async def _serve_plain(
    request: web.Request, resolved: Resolved, headers: dict[str, str]
) -> web.StreamResponse:
    reader, terminal = resolved.reader, resolved.terminal
    try:
        entry = await reader.stat(terminal)
    except BadBlock as exc:
        return _text(502, f"{terminal}: {exc}")
    if entry.kind in ("directory", "hamt-directory"):
        return await _serve_directory(request, resolved, headers)
    if entry.kind != "file" or entry.size is None:
        return _text(501, f"{terminal} is a {entry.kind}: only files and directories are served")
    size = entry.size
    etag = f'"{terminal}"'
    rng = parse_range(request.headers.get("Range"), size) if size else None
    if request.headers.get("If-Range") not in (None, etag):
        rng = None
    lo, hi = rng if rng is not None else (0, size)
    hdrs = {**headers, "Etag": etag, "Accept-Ranges": "bytes"}
    if not_modified(request, etag):
        return web.Response(status=304, headers=hdrs)
    pieces = cast(AsyncGenerator[bytes, None], reader.iter_file(terminal, offset=lo, end=hi))
    first = b""
    try:
        if hi > lo:
            first = bytes(await anext(pieces))
    except BadBlock as exc:
        return _text(502, f"{terminal}: {exc}")
    head = first[:_SNIFF] if lo == 0 else b""
    name = resolved.path.rsplit("/", 1)[-1]
    hdrs["Content-Type"] = (
        _content_type(name, head) if lo == 0 or name else "application/octet-stream"
    )
    hdrs["Content-Length"] = str(hi - lo)
    status = 200
    if rng is not None:
        status = 206
        hdrs["Content-Range"] = f"bytes {lo}-{hi - 1}/{size}"
    resp = web.StreamResponse(status=status, headers=hdrs)
    await resp.prepare(request)
    if request.method == "HEAD":
        await pieces.aclose()
        return resp
    try:
        if first:
            await resp.write(first)
        async for piece in pieces:
            await resp.write(piece)
    except (BadBlock, LookupError, OSError):
        # a block no longer matched its CID: stop short; the client sees fewer bytes than
        # Content-Length said and must not keep them
        if request.transport is not None:
            request.transport.close()
        return resp
    finally:
        await pieces.aclose()
    await resp.write_eof()
    return resp


async def _serve_directory(
    request: web.Request, resolved: Resolved, headers: dict[str, str]
) -> web.StreamResponse:
    decoded = await resolved.reader.node(resolved.terminal)
    assert not isinstance(decoded, bytes)
    pb, fs = decoded
    names = sorted(link.name or "" for link in pb.links) if fs.type == NodeType.DIRECTORY else []
    base = request.path.rstrip("/")
    items = "\n".join(
        f'<li><a href="{html.escape(base)}/{quote(n)}">{html.escape(n)}</a></li>' for n in names
    )
    note = "" if names or fs.type == NodeType.DIRECTORY else "<p>(a sharded directory)</p>"
    page = (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(base)}</title>"
        f"</head><body><h1>{html.escape(base)}</h1>{note}<ul>\n{items}\n</ul></body></html>\n"
    )
    etag = f'"DirIndex-{resolved.terminal}"'
    hdrs = {**headers, "Etag": etag, "Content-Type": "text/html; charset=utf-8"}
    if not_modified(request, etag):
        return web.Response(status=304, headers=hdrs)
    body = page.encode()
    if request.method == "HEAD":
        hdrs["Content-Length"] = str(len(body))
        return web.Response(status=200, headers=hdrs)
    return web.Response(status=200, body=body, headers=hdrs)


__all__ = ["CACHE_CONTROL", "DAGS", "PROBE_CID", "handle"]
