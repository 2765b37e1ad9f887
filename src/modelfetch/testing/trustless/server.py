"""The loopback IPFS trustless gateway: raw blocks and CAR streams of a backend's DAGs."""

from __future__ import annotations

import contextlib
import hashlib
from typing import ClassVar, Final, Literal
from urllib.parse import quote, urlencode

import aiohttp
from aiohttp import web

from modelfetch.errors import BadBlock, ModelfetchError, NoSuchFile
from modelfetch.ipfs.car import encode_header
from modelfetch.ipfs.cid import Cid, encode_varint
from modelfetch.ipfs.dagfile import DagReader

from ...server.gateway.request import (
    CAR_TYPE,
    RAW_TYPE,
    Reject,
    Want,
    negotiate,
    not_modified,
    parse_entity_bytes,
    resolve_range,
    split_path,
)
from ...server.gateway.walk import SCOPES, Recorder, Walk, car_blocks, file_info, file_size, unique
from .._body import BodyWriter
from .._server import Blob, OriginServer, Target
from ..faults import Fault, On
from ..rules import FaultRules
from .backends import BlockBackend, MemoryBackend
from .faults import (
    UNRELATED_BLOCK,
    UNRELATED_CID,
    Blocks,
    TrustlessFault,
    apply_to_blocks,
    flip_byte,
)

PROBE_CID: Final = "bafkqaaa"
"""The identity CID of empty content: the trustless gateway probe."""

DagScope = Literal["block", "entity", "all"]
"""Which blocks a CAR answer carries after the path blocks (trustless gateway `dag-scope`)."""
CarRoots = Literal["requested", "resolved"]
"""The CAR header root for `<cid>/<path>`: the CID in the URL (lassie, helia) or the path's
resolved CID (kubo/boxo, so ipfs.io and trustless-gateway.link)."""

_CACHE_CONTROL: Final = "public, max-age=29030400, immutable"


class TrustlessGatewayServer(OriginServer):
    """IPFS trustless gateway on 127.0.0.1: raw blocks and CAR streams of a BlockBackend's DAGs.

    `GET|HEAD /ipfs/<cid>[/<path>]` with `?format=raw|car` or `Accept: application/vnd.ipld.raw`
    / `application/vnd.ipld.car[;version=1;order=dfs;dups=y|n]`; CARs honour `dag-scope`
    (default `default_dag_scope`, the spec's `all`) and `entity-bytes`. Anything else gets 406,
    except the `bafkqaaa` probe (200, empty). Every block is hash-checked on its way out of the
    backend; faults (generic ones from `faults`, trustless ones from this module) are injected
    with `inject()`. `car_roots` picks the CAR header root for path requests.
    """

    categories: ClassVar[frozenset[str]] = frozenset({"ipfs"})

    def __init__(
        self,
        backend: BlockBackend | None = None,
        *,
        port: int = 0,
        car_roots: CarRoots = "requested",
        default_dag_scope: DagScope = "all",
    ) -> None:
        super().__init__(port=port)
        if car_roots not in ("requested", "resolved"):
            raise ValueError(f"car_roots must be 'requested' or 'resolved', not {car_roots!r}")
        if default_dag_scope not in SCOPES:
            raise ValueError(f"not a dag-scope: {default_dag_scope!r}")
        self.backend: BlockBackend = backend if backend is not None else MemoryBackend()
        self.car_roots: CarRoots = car_roots
        self.default_dag_scope: DagScope = default_dag_scope
        self._tfaults: FaultRules[TrustlessFault] = FaultRules(
            self.categories, owner=type(self).__name__
        )
        self._served: list[str] = []

    # -- URLs, faults, counters -----------------------------------------------------------

    def ipfs_url(
        self,
        cid: Cid | str,
        path: str = "",
        *,
        format: Literal["raw", "car"] | None = None,
        dag_scope: DagScope | None = None,
        entity_bytes: str | None = None,
    ) -> str:
        """The URL of `/ipfs/<cid>[/<path>]` with these trustless query parameters."""
        url = f"{self.url}/ipfs/{cid}" + (f"/{quote(path)}" if path else "")
        query = {"format": format, "dag-scope": dag_scope, "entity-bytes": entity_bytes}
        params = {k: v for k, v in query.items() if v is not None}
        return url + (f"?{urlencode(params, safe=':*')}" if params else "")

    def inject(
        self,
        fault: Fault | TrustlessFault,
        *,
        path: str | None = None,
        times: int | None = None,
        on: On = "any",
    ) -> None:
        """Apply `fault` to the next `times` matching requests (None: forever).

        Generic faults behave as on every origin (a `wrong_bytes(file_offset=...)` flip only
        changes raw blocks: a CAR holds no file's bytes at their offsets). A TrustlessFault
        applies to GET answers of the formats it changes; `path` matches the request path's
        end, `<cid>`, `<cid>/<path>` or the resolved CID. Rate caps (`limit`) pace CARs and raw
        blocks alike.
        """
        if isinstance(fault, TrustlessFault):
            self._tfaults.add(fault, path=path, times=times, on=on)
        else:
            super().inject(fault, path=path, times=times, on=on)

    def clear_faults(self) -> None:
        """Remove every injected fault (generic and trustless)."""
        super().clear_faults()
        self._tfaults.clear()

    def _take_tfault(
        self, names: tuple[str, ...], fmt: Literal["raw", "car"]
    ) -> TrustlessFault | None:
        return self._tfaults.take(Target("ipfs", names), lambda f: f.applies_to(fmt))

    @property
    def served_blocks(self) -> list[str]:
        """CIDs of the blocks sent (raw answers and CAR sections), in order."""
        with self._lock:
            return list(self._served)

    def blocks_sent(self, cid: Cid | str | None = None) -> int:
        """How many blocks were sent (of `cid` only, if given; v0 and v1 forms match)."""
        if cid is None:
            with self._lock:
                return len(self._served)
        want = Cid.parse(cid).to_v1()
        return sum(1 for c in self.served_blocks if Cid.parse(c).to_v1() == want)

    def reset_counters(self) -> None:
        """Forget requests, bytes and blocks sent."""
        super().reset_counters()
        with self._lock:
            self._served.clear()

    def _count_block(self, cid: Cid) -> None:
        with self._lock:
            self._served.append(str(cid))

    async def _shutdown(self) -> None:
        await super()._shutdown()
        with contextlib.suppress(Exception):
            await self.backend.aclose()

    # -- request handling -----------------------------------------------------------------

    def _asks_range(self, request: web.Request) -> bool:
        return "Range" in request.headers or "entity-bytes" in request.rel_url.query

    def _target(self, request: web.Request) -> Target:
        parsed = split_path(request)
        names: tuple[str, ...] = (request.path,)
        if parsed is not None:
            cid, path = parsed
            names += (cid, f"{cid}/{path}") if path else (cid,)
        return Target("ipfs", names)

    async def _serve(self, request: web.Request, target: Target) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        parsed = split_path(request)
        if parsed is None:
            return web.Response(status=404, text="404 page not found\n")
        cid_text, path = parsed
        try:
            root = Cid.parse(cid_text)
        except ValueError as exc:
            return web.Response(status=400, text=f"invalid CID {cid_text!r}: {exc}\n")
        try:
            want = negotiate(request.rel_url.query, request.headers.get("Accept", ""))
        except Reject as reject:
            return reject.response()
        if want is None:
            if cid_text == PROBE_CID and not path:
                want = Want("raw")  # the probe answers even without a format
            else:
                return web.Response(
                    status=406,
                    text="only trustless responses are served: ask for ?format=raw or "
                    f"?format=car (Accept: {RAW_TYPE} or {CAR_TYPE})\n",
                )
        recorder = Recorder(self.backend)
        reader = DagReader(recorder)
        ipfs_path = f"/ipfs/{cid_text}" + (f"/{path}" if path else "")
        try:
            segments = [root]
            for name in [p for p in path.split("/") if p]:
                segments.append(await reader.resolve(segments[-1], name))
            path_blocks = unique(recorder.log)
            terminal = segments[-1]
            terminal_block = await reader.block(terminal)
        except (NoSuchFile, BadBlock) as exc:
            if recorder.corrupt is not None:
                return web.Response(status=502, text=f"bad block from the backend: {exc}\n")
            return web.Response(status=404, text=f"failed to resolve {ipfs_path}: {exc}\n")
        except (OSError, aiohttp.ClientError) as exc:
            return web.Response(status=502, text=f"block backend failed: {exc}\n")
        headers = {
            "X-Ipfs-Path": ipfs_path,
            "X-Ipfs-Roots": ",".join(str(c) for c in segments),
            "Cache-Control": _CACHE_CONTROL,
            "X-Content-Type-Options": "nosniff",
            "Vary": "Accept",
        }
        keys = (request.path, *target.names[1:], str(terminal))
        names = (*target.names, str(terminal))
        if want.fmt == "raw":
            return await self._serve_raw(
                request, target, terminal, terminal_block, headers, keys, names
            )
        try:
            return await self._serve_car(
                request,
                target,
                want,
                root,
                path,
                path_blocks,
                reader,
                terminal,
                terminal_block,
                headers,
                keys,
                names,
            )
        except Reject as reject:
            return reject.response()

    async def _serve_raw(
        self,
        request: web.Request,
        target: Target,
        cid: Cid,
        data: bytes,
        headers: dict[str, str],
        keys: tuple[str, ...],
        names: tuple[str, ...],
    ) -> web.StreamResponse:
        etag = f'"{cid}.raw"'
        hdrs = {
            **headers,
            "Content-Type": RAW_TYPE,
            "Etag": etag,
            "Content-Disposition": f'attachment; filename="{cid}.bin"',
        }
        if not_modified(request, etag):
            return web.Response(status=304, headers=hdrs)
        fault = self._take_tfault(names, "raw") if request.method == "GET" else None
        if fault is not None and fault.kind == "flip_block_byte":
            if fault.cid is None or fault.cid.to_v1() == cid.to_v1():
                data = flip_byte(data, fault.at)
        elif fault is not None and fault.kind == "wrong_root":
            data = await self._other_block(fault.cid, cid)
        resp = await self.send_blob(request, target, Blob.of(data), hdrs, keys)
        if request.method == "GET" and resp.status in (200, 206):
            self._count_block(cid)
        return resp

    async def _other_block(self, cid: Cid | None, not_this: Cid) -> bytes:
        if cid is not None and cid.to_v1() != not_this.to_v1():
            with contextlib.suppress(Exception):
                return await self.backend(cid)
        return UNRELATED_BLOCK

    async def _serve_car(
        self,
        request: web.Request,
        target: Target,
        want: Want,
        root: Cid,
        path: str,
        path_blocks: list[tuple[Cid, bytes]],
        reader: DagReader,
        terminal: Cid,
        terminal_block: bytes,
        headers: dict[str, str],
        keys: tuple[str, ...],
        names: tuple[str, ...],
    ) -> web.StreamResponse:
        query = request.rel_url.query
        scope_text = query.get("dag-scope", "")
        if scope_text and scope_text not in SCOPES:
            raise Reject(400, f"dag-scope={scope_text!r}: expected block, entity or all")
        spec = parse_entity_bytes(query["entity-bytes"]) if "entity-bytes" in query else None
        scope: str = scope_text or ("entity" if spec is not None else self.default_dag_scope)
        kind, _, fs = file_info(terminal, terminal_block)
        rng: tuple[int, int] | None = None
        if scope == "entity" and spec is not None and kind == "file":
            rng = resolve_range(spec, file_size(terminal_block, fs))
            if rng is None:
                scope = "block"  # a zero-length range: the root block tells the client why
        header_root = root if self.car_roots == "requested" else terminal
        tag = hashlib.sha256(
            f"{root}|{path}|{scope}|{rng}|{want.dups}|{self.car_roots}".encode()
        ).hexdigest()[:16]
        etag = f'"{terminal}.car.{tag}"'
        filename = f"{root}_{path.replace('/', '_')}" if path else str(root)
        hdrs = {
            **headers,
            "Content-Type": f"{CAR_TYPE}; version=1; order=dfs; dups={'y' if want.dups else 'n'}",
            "Etag": etag,
            "Content-Disposition": f'attachment; filename="{filename}.car"',
        }
        if not_modified(request, etag):
            return web.Response(status=304, headers=hdrs)
        resp = web.StreamResponse(status=200, headers=hdrs)
        if request.method != "GET":
            await resp.prepare(request)
            await resp.write_eof()
            return resp
        tfault = self._take_tfault(names, "car")
        # A CAR is no file's bytes: a flip at a file offset waits for a raw block
        fault = self._faults.take(target, lambda f: f.level == "body" and f.file_offset is None)
        if tfault is not None and tfault.kind == "wrong_root":
            header_root = tfault.cid or UNRELATED_CID
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        walk = Walk(reader, want.dups)
        blocks = car_blocks(walk, path_blocks, terminal, terminal_block, scope, rng)
        if tfault is not None:
            blocks = apply_to_blocks(blocks, tfault)
        span = (rng[0], rng[1], True) if rng is not None else (0, None, False)
        with self._body(request, resp, keys, fault, span) as out:
            await self._write_car(out, header_root, blocks, tfault)
        return resp

    async def _write_car(
        self,
        out: BodyWriter,
        header_root: Cid,
        blocks: Blocks,
        tfault: TrustlessFault | None,
    ) -> None:
        if not await out.write(encode_header([header_root])):
            return
        cut = tfault.after_blocks if tfault is not None and tfault.kind == "car_cut_short" else None
        count = 0
        try:
            async for cid, data in blocks:
                raw_cid = bytes(cid)
                section = encode_varint(len(raw_cid) + len(data)) + raw_cid + data
                if cut is not None and count >= cut:
                    assert tfault is not None
                    if tfault.mid_block:
                        await out.write(section[: max(1, len(section) // 2)])
                    break
                if out.needs_flip_at:  # wrong_bytes without an offset: inside the first block
                    out.flip_at = out.sent + len(section) - len(data) + len(data) // 2
                if not await out.write(section):
                    return
                self._count_block(cid)
                count += 1
        except (KeyError, LookupError, ModelfetchError, OSError, aiohttp.ClientError):
            pass  # a block went missing mid-walk: end the CAR here, the client sees it incomplete
        finally:
            await blocks.aclose()
        await out.end()
