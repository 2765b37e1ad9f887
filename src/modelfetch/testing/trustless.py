"""A loopback IPFS trustless gateway (`?format=raw|car`) over a real node or in-memory blocks."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO, ClassVar, Final, Literal, Protocol
from urllib.parse import quote, unquote, urlencode

import aiohttp
from aiohttp import web

from modelfetch.errors import BadBlock, ModelfetchError, NoSuchFile
from modelfetch.ipfs.blockstore import MemoryBlockStore
from modelfetch.ipfs.car import encode_header, read_car
from modelfetch.ipfs.cid import DAG_PB, RAW, Cid, encode_varint, make_cid, verify_block
from modelfetch.ipfs.dagfile import DagReader
from modelfetch.ipfs.importer import DirectoryBuilder, Profile, UnixFSFileBuilder
from modelfetch.ipfs.unixfs import NodeType, PBNode, UnixFSData, decode_pbnode, decode_unixfs

from ._server import Blob, OriginServer, Target, _abort, _wait_sent, name_matches
from .faults import Fault, On

RAW_TYPE: Final = "application/vnd.ipld.raw"
"""Media type of a single raw block answer."""
CAR_TYPE: Final = "application/vnd.ipld.car"
"""Media type of a CAR stream answer."""
PROBE_CID: Final = "bafkqaaa"
"""The identity CID of empty content: the trustless gateway probe."""
UNRELATED_BLOCK: Final = b"modelfetch trustless test double: a valid block from no requested DAG\n"
"""The block `extra_block()` and `wrong_root()` use by default (a raw CIDv1 block)."""
UNRELATED_CID: Final = make_cid(1, RAW, UNRELATED_BLOCK)
"""The CID of UNRELATED_BLOCK."""

DagScope = Literal["block", "entity", "all"]
"""Which blocks a CAR answer carries after the path blocks (trustless gateway `dag-scope`)."""
CarRoots = Literal["requested", "resolved"]
"""The CAR header root for `<cid>/<path>`: the CID in the URL (lassie, helia) or the path's
resolved CID (kubo/boxo, so ipfs.io and trustless-gateway.link)."""
TrustlessFaultKind = Literal["flip_block_byte", "car_cut_short", "extra_block", "wrong_root"]
"""Every fault specific to trustless answers."""

_CACHE_CONTROL: Final = "public, max-age=29030400, immutable"
_Blocks = AsyncGenerator[tuple[Cid, bytes], None]
_SCOPES: Final = ("block", "entity", "all")


class BlockBackend(Protocol):
    """Where a trustless gateway gets blocks: `await backend(cid)` -> bytes, KeyError if absent.

    Any other exception means the backend itself failed (the gateway answers 502).
    """

    async def __call__(self, cid: Cid, /) -> bytes:
        """The bytes of block `cid` (KeyError when the backend does not have it)."""
        ...

    async def aclose(self) -> None:
        """Release what the backend holds on the running event loop (sessions)."""
        ...


# -- backends -----------------------------------------------------------------------------


class MemoryBackend:
    """Blocks held in memory: from a MemoryBlockStore, a CAR, or files imported here.

    `add_file` / `add_files` build UnixFS DAGs exactly as `ipfs add` does (through the
    importer's `on_block` hooks) and return the root CID. Thread-safe for adding blocks while a
    server reads them.

    >>> backend = MemoryBackend()
    >>> str(backend.add_file(b"hello world\\n"))
    'QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o'
    """

    def __init__(
        self,
        blocks: MemoryBlockStore
        | Mapping[Cid, bytes]
        | Mapping[str, bytes]
        | Iterable[tuple[Cid | str, bytes]] = (),
    ) -> None:
        self._lock = threading.Lock()
        self.roots: tuple[Cid, ...] = ()
        if isinstance(blocks, MemoryBlockStore):
            self.blocks: dict[Cid, bytes] = blocks.blocks  # shared: later puts are seen
            self.roots = blocks.roots
        else:
            items: Iterable[tuple[Cid | str, bytes]] = (
                blocks.items() if isinstance(blocks, Mapping) else blocks
            )
            self.blocks = {Cid.parse(c): bytes(d) for c, d in items}

    @classmethod
    def from_car(
        cls, car: bytes | bytearray | memoryview | BinaryIO, *, verify: bool = True
    ) -> MemoryBackend:
        """Every block of a CAR (hashed against its CID unless `verify=False`); keeps its roots."""
        reader = read_car(car, verify=verify)
        backend = cls(list(reader))
        backend.roots = reader.roots
        return backend

    def put(self, cid: Cid | str, data: bytes | bytearray | memoryview) -> None:
        """Store one block under `cid` (not checked: a wrong pair is served as is, then refused)."""
        with self._lock:
            self.blocks[Cid.parse(cid)] = bytes(data)

    def put_block(self, data: bytes, *, codec: int = RAW, cid_version: int = 1) -> Cid:
        """Store `data` as a block of `codec` (raw by default) under its sha2-256 CID."""
        cid = make_cid(cid_version, codec, data)
        self.put(cid, data)
        return cid

    def add_file(
        self,
        data: bytes | bytearray | memoryview,
        profile: Profile | str | None = None,
        *,
        cid_version: int = 0,
    ) -> Cid:
        """Import one file as `ipfs add [--cid-version=N]` would; returns its root CID."""
        builder = UnixFSFileBuilder(profile, cid_version=cid_version, on_block=self.put)
        builder.update(data)
        return builder.finish_node().cid

    def add_files(
        self,
        files: Mapping[str, bytes | bytearray | memoryview],
        profile: Profile | str | None = None,
        *,
        cid_version: int = 0,
    ) -> Cid:
        """Import a directory (relative POSIX path -> bytes) as `ipfs add -r`; returns its CID."""
        directory = DirectoryBuilder(profile, cid_version=cid_version, on_block=self.put)
        for path, data in files.items():
            builder = UnixFSFileBuilder(profile, cid_version=cid_version, on_block=self.put)
            builder.update(data)
            directory.add(path, builder.finish_node())
        return directory.finish_node().cid

    def __contains__(self, cid: object) -> bool:
        """True when the block is held (CID or its text)."""
        if isinstance(cid, str):
            cid = Cid.parse(cid)
        return cid in self.blocks

    def __len__(self) -> int:
        """How many blocks are held."""
        return len(self.blocks)

    async def __call__(self, cid: Cid, /) -> bytes:
        """The block's bytes; KeyError if absent."""
        try:
            return self.blocks[cid]
        except KeyError:
            raise KeyError(f"block {cid} is not in this MemoryBackend") from None

    async def aclose(self) -> None:
        """Nothing to release."""


class NodeBackend:
    """Blocks from a real IPFS node's RPC (`POST /api/v0/block/get`), cached in memory.

    The node would wait forever for a block it lacks: each call passes the node its own
    `timeout` (js-ipfs and kubo honour it) and gives up locally a bit later; either way the
    block counts as missing (KeyError). An unreachable node raises ConnectionError.
    `rpc_calls` counts the requests made to the node (cache misses).
    """

    def __init__(
        self, api_url: str, *, timeout: float = 2.0, cache_bytes: int = 256 * 1024 * 1024
    ) -> None:
        url = api_url.rstrip("/")
        self.api_url = url if url.endswith("/api/v0") else f"{url}/api/v0"
        self.timeout = timeout
        self.cache_bytes = cache_bytes
        self.rpc_calls = 0
        self._cache: OrderedDict[Cid, bytes] = OrderedDict()
        self._cached = 0
        self._lock = threading.Lock()
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            session = aiohttp.ClientSession()
            self._sessions[loop] = session
        return session

    def _remember(self, cid: Cid, data: bytes) -> None:
        if len(data) > self.cache_bytes:
            return
        with self._lock:
            if cid in self._cache:
                return
            self._cache[cid] = data
            self._cached += len(data)
            while self._cached > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached -= len(old)

    async def __call__(self, cid: Cid, /) -> bytes:
        """The block's bytes from the cache or the node; KeyError if the node does not have it."""
        with self._lock:
            data = self._cache.get(cid)
            if data is not None:
                self._cache.move_to_end(cid)
                return data
        self.rpc_calls += 1
        params = {"arg": str(cid), "timeout": f"{max(1, round(self.timeout * 1000))}ms"}
        try:
            async with self._session().post(
                f"{self.api_url}/block/get",
                params=params,
                timeout=aiohttp.ClientTimeout(total=self.timeout + 5),
            ) as resp:
                body = await resp.read()
                status = resp.status
        except TimeoutError:
            raise KeyError(f"block {cid}: the node did not find it in {self.timeout} s") from None
        except aiohttp.ClientError as exc:
            raise ConnectionError(f"IPFS node at {self.api_url} unreachable: {exc}") from exc
        if status != 200:
            text = body[:200].decode("utf-8", "replace")
            raise KeyError(f"block {cid}: the node answered {status} {text}")
        self._remember(cid, body)
        return body

    async def aclose(self) -> None:
        """Close the HTTP session opened on the running event loop."""
        session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()


# -- trustless faults ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrustlessFault:
    """A fault in a trustless answer's blocks; build it with `flip_block_byte()` and friends."""

    kind: TrustlessFaultKind
    cid: Cid | None = None
    at: int | None = None
    after_blocks: int = 0
    mid_block: bool = False
    data: bytes = b""

    def applies_to(self, fmt: Literal["raw", "car"]) -> bool:
        """Whether the fault changes answers of this format (cuts and extras are CAR only)."""
        return fmt == "car" or self.kind in ("flip_block_byte", "wrong_root")


def _non_negative(name: str, value: int) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def flip_block_byte(cid: Cid | str | None = None, *, at: int | None = None) -> TrustlessFault:
    """Flip one byte (offset `at` in the block, default its middle) of one block, CID unchanged.

    `cid` None: the first leaf sent (a raw block or a link-less dag-pb node), else the first
    block; a raw answer's only block. An empty block gets one byte instead.
    """
    if at is not None:
        _non_negative("at", at)
    return TrustlessFault("flip_block_byte", Cid.parse(cid) if cid is not None else None, at=at)


def car_cut_short(after_blocks: int = 1, *, mid_block: bool = False) -> TrustlessFault:
    """End the CAR cleanly (HTTP-wise) after its header and `after_blocks` blocks.

    With `mid_block`, half of the next block's section follows (a CAR cut inside a section).
    """
    _non_negative("after_blocks", after_blocks)
    return TrustlessFault("car_cut_short", after_blocks=after_blocks, mid_block=mid_block)


def extra_block(data: bytes = UNRELATED_BLOCK, *, at: int | None = 1) -> TrustlessFault:
    """Insert a valid but unrelated raw block (CIDv1 of `data`) after `at` blocks (None: last)."""
    if at is not None:
        _non_negative("at", at)
    return TrustlessFault("extra_block", make_cid(1, RAW, data), at=at, data=bytes(data))


def wrong_root(cid: Cid | str | None = None) -> TrustlessFault:
    """A CAR whose header names `cid` (default UNRELATED_CID) as its root; a raw answer of the
    bytes of another block (`cid`'s if the backend has it, else UNRELATED_BLOCK)."""
    return TrustlessFault("wrong_root", Cid.parse(cid) if cid is not None else None)


@dataclass(slots=True)
class _Injected:
    fault: TrustlessFault
    path: str | None
    times: int | None


# -- request parsing ------------------------------------------------------------------------


class _Reject(Exception):
    """An answer decided while parsing: status and text."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text

    def response(self) -> web.Response:
        return web.Response(status=self.status, text=self.text + "\n")


@dataclass(frozen=True, slots=True)
class _Want:
    fmt: Literal["raw", "car"]
    dups: bool = False


def _media_ranges(accept: str) -> list[tuple[str, dict[str, str], float]]:
    out: list[tuple[str, dict[str, str], float]] = []
    for item in accept.split(","):
        mtype, *raw_params = (p.strip() for p in item.split(";"))
        if not mtype:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for p in raw_params:
            key, _, value = p.partition("=")
            key, value = key.strip().lower(), value.strip().strip('"')
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
            elif key:
                params[key] = value
        out.append((mtype.lower(), params, q))
    out.sort(key=lambda r: -r[2])  # stable: equal q keeps the client's order
    return out


def _car_params_ok(params: Mapping[str, str]) -> bool:
    return (
        params.get("version", "1") == "1"
        and params.get("order", "dfs") in ("dfs", "unk", "")
        and params.get("dups", "n") in ("y", "n")
    )


def _negotiate(query: Mapping[str, str], accept: str) -> _Want | None:
    """What the request asks for; None = nothing trustless; _Reject for an unsupported variant."""
    fmt = query.get("format", "")
    ranges = [r for r in _media_ranges(accept) if r[2] > 0]
    car_ranges = [p for t, p, _ in ranges if t == CAR_TYPE]
    if fmt and fmt not in ("raw", "car"):
        raise _Reject(406, f"format={fmt} is not a trustless response: use format=raw or car")
    chosen: Literal["raw", "car"] | None = None
    if fmt == "raw":
        chosen = "raw"
    elif fmt == "car":
        chosen = "car"
    else:
        for mtype, params, _ in ranges:
            if mtype == RAW_TYPE:
                chosen = "raw"
                break
            if mtype == CAR_TYPE and _car_params_ok(params):
                chosen = "car"
                break
        if chosen is None:
            if car_ranges:
                raise _Reject(406, "only CARv1 with order=dfs|unk and dups=y|n is served")
            return None
    if chosen == "raw":
        return _Want("raw")
    # format=car wins over Accept (spec), whose parameters still apply when acceptable
    params = next((p for p in car_ranges if _car_params_ok(p)), {})
    version = query.get("car-version", params.get("version", "1"))
    order = query.get("car-order", params.get("order", "dfs"))
    dups = query.get("car-dups", params.get("dups", "n"))
    if version != "1":
        raise _Reject(406, f"CAR version {version} is not served: only version=1")
    if order not in ("dfs", "unk", ""):
        raise _Reject(406, f"CAR order {order} is not served: only order=dfs")
    if dups not in ("y", "n"):
        raise _Reject(400, f"car dups must be y or n, not {dups!r}")
    return _Want("car", dups=dups == "y")


def _parse_entity_bytes(value: str) -> tuple[int, int | None]:
    """`from:to` -> (from, to or None for `*`); both may be negative (from the end)."""
    first, colon, last = value.partition(":")
    try:
        if not colon:
            raise ValueError
        start = int(first)
        end = None if last.strip() == "*" else int(last)
    except ValueError:
        raise _Reject(
            400, f"entity-bytes={value!r}: expected from:to (integers, to may be *)"
        ) from None
    if start >= 0 and end is not None and end >= 0 and end < start:
        raise _Reject(400, f"entity-bytes={value!r}: to is before from")
    return start, end


def _resolve_range(spec: tuple[int, int | None], size: int) -> tuple[int, int] | None:
    """The byte range [lo, hi) of a `size`-byte file; None when it is empty.

    A `from` past the end is a 400; a range starting exactly at the end (a resume with
    nothing left) or resolving to nothing is empty: the answer is the root block, as boxo does.
    """
    start, end = spec
    if start > size:
        raise _Reject(400, f"entity-bytes from {start} is past the end of the {size}-byte entity")
    lo = start if start >= 0 else max(0, size + start)
    last = size - 1 if end is None else (end if end >= 0 else size + end)
    last = min(last, size - 1)
    if lo >= size or last < lo:
        return None
    return lo, last + 1


def _file_info(cid: Cid, data: bytes) -> tuple[str, PBNode | None, UnixFSData | None]:
    """Classify a block: ("file"|"hamt"|"other", node, unixfs)."""
    if cid.codec == RAW:
        return "file", None, None
    if cid.codec != DAG_PB:
        return "other", None, None
    try:
        pb = decode_pbnode(data)
        fs = decode_unixfs(pb.data) if pb.data is not None else None
    except ValueError:
        return "other", None, None
    if fs is None:
        return "other", pb, None
    if fs.type in (NodeType.FILE, NodeType.RAW):
        return "file", pb, fs
    if fs.type == NodeType.HAMT_SHARD:
        return "hamt", pb, fs
    return "other", pb, fs


def _file_size(data: bytes, fs: UnixFSData | None) -> int:
    if fs is None:
        return len(data)
    return len(fs.data or b"") + sum(fs.blocksizes)


def _is_leaf(cid: Cid, data: bytes) -> bool:
    if cid.codec == RAW:
        return True
    if cid.codec != DAG_PB:
        return False
    try:
        return not decode_pbnode(data).links
    except ValueError:
        return False


def _flip(data: bytes, at: int | None) -> bytes:
    if not data:
        return b"\xff"
    pos = min(len(data) // 2 if at is None else at, len(data) - 1)
    mutable = bytearray(data)
    mutable[pos] ^= 0xFF
    return bytes(mutable)


class _Recorder:
    """A BlockGetter over the backend that logs the blocks fetched (the path blocks)."""

    def __init__(self, backend: BlockBackend) -> None:
        self.backend = backend
        self.log: list[tuple[Cid, bytes]] = []
        self.corrupt: Cid | None = None

    async def __call__(self, cid: Cid) -> bytes:
        data = await self.backend(cid)  # KeyError: DagReader reports the block missing
        try:
            verify_block(cid, data)
        except BadBlock:
            self.corrupt = cid
            raise
        self.log.append((cid, data))
        return data


@dataclass(slots=True)
class _Walk:
    reader: DagReader
    dups: bool
    seen: set[Cid] = field(default_factory=set)


# -- body writer ---------------------------------------------------------------------------


class _StreamOut:
    """Writes a chunked body, applying one generic body fault at absolute body offsets."""

    def __init__(
        self,
        server: TrustlessGatewayServer,
        request: web.Request,
        resp: web.StreamResponse,
        fault: Fault | None,
        keys: tuple[str, ...],
    ) -> None:
        self.server = server
        self.request = request
        self.resp = resp
        self.fault = fault
        self.keys = keys
        self.sent = 0
        self.closed = False
        kind = fault.kind if fault is not None else None
        self.cut_at = (
            fault.after_bytes if fault and kind in ("stall", "reset", "truncated") else None
        )
        self.flip_at: int | None = fault.at if fault and kind == "wrong_bytes" else None
        self.needs_flip_at = kind == "wrong_bytes" and self.flip_at is None
        self.began = time.monotonic()

    async def write(self, data: bytes) -> bool:
        """Send `data` (or the part before a cut); False once the body was cut."""
        if self.closed:
            return False
        fault = self.fault
        if fault is not None and fault.kind == "wrong_bytes" and self.flip_at is not None:
            lo = max(self.flip_at, self.sent)
            hi = min(self.flip_at + fault.count, self.sent + len(data))
            if lo < hi:
                mutable = bytearray(data)
                for i in range(lo - self.sent, hi - self.sent):
                    mutable[i] ^= 0xFF
                data = bytes(mutable)
        if self.cut_at is not None and self.sent + len(data) > self.cut_at:
            await self._send(data[: self.cut_at - self.sent])
            await self._cut()
            return False
        await self._send(data)
        return True

    async def _send(self, data: bytes) -> None:
        if not data:
            return
        fault = self.fault
        if fault is None or fault.kind != "slow":
            self.server._count(self.keys, len(data))
            await self.resp.write(data)
            self.sent += len(data)
            return
        stopping = self.server._stopping
        assert stopping is not None
        step = max(1, int(fault.bytes_per_sec * 0.05))
        for pos in range(0, len(data), step):
            if stopping.is_set():
                _abort(self.request)
                raise ConnectionResetError("server stopping")
            piece = data[pos : pos + step]
            self.server._count(self.keys, len(piece))
            await self.resp.write(piece)
            await self.request.writer.drain()
            self.sent += len(piece)
            delay = self.began + self.sent / fault.bytes_per_sec - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), delay)

    async def _cut(self) -> None:
        self.closed = True
        assert self.fault is not None
        await self.request.writer.drain()
        transport = self.request.transport
        if transport is None:
            return
        if self.fault.kind == "truncated":
            transport.close()  # flushes what was written, then FIN, no last chunk
        elif self.fault.kind == "stall":
            await self.server._park(self.request)
            _abort(self.request)
        else:  # reset
            await _wait_sent(transport)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()

    async def end(self) -> None:
        """Finish the body: a pending cut happens now; oversize adds its bytes; last chunk."""
        if self.closed:
            return
        if self.cut_at is not None:
            await self._cut()
            return
        fault = self.fault
        if fault is not None and fault.kind == "oversize":
            await self._send(bytes(fault.extra_bytes))
        self.closed = True
        await self.resp.write_eof()


# -- the server ------------------------------------------------------------------------------


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
        if default_dag_scope not in _SCOPES:
            raise ValueError(f"not a dag-scope: {default_dag_scope!r}")
        self.backend: BlockBackend = backend if backend is not None else MemoryBackend()
        self.car_roots: CarRoots = car_roots
        self.default_dag_scope: DagScope = default_dag_scope
        self._tfaults: list[_Injected] = []
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

        Generic faults behave as on every origin. A TrustlessFault applies to GET answers of the
        formats it changes; `path` matches the request path's end, `<cid>`, `<cid>/<path>` or
        the resolved CID.
        """
        if not isinstance(fault, TrustlessFault):
            super().inject(fault, path=path, times=times, on=on)
            return
        if on != "any" and on not in self.categories:
            raise ValueError(f"{type(self).__name__} has no {on!r} requests")
        if times is not None and times < 1:
            raise ValueError(f"times must be >= 1 or None, got {times}")
        with self._lock:
            self._tfaults.append(_Injected(fault, path, times))

    def clear_faults(self) -> None:
        """Remove every injected fault (generic and trustless)."""
        super().clear_faults()
        with self._lock:
            self._tfaults.clear()

    def _take_tfault(
        self, names: tuple[str, ...], fmt: Literal["raw", "car"]
    ) -> TrustlessFault | None:
        with self._lock:
            for injected in self._tfaults:
                if not injected.fault.applies_to(fmt):
                    continue
                pattern = injected.path
                if pattern is not None and not any(name_matches(n, pattern) for n in names):
                    continue
                if injected.times is not None:
                    injected.times -= 1
                    if injected.times <= 0:
                        self._tfaults.remove(injected)
                return injected.fault
        return None

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

    def _target(self, request: web.Request) -> Target:
        parsed = _split_path(request)
        names: tuple[str, ...] = (request.path,)
        if parsed is not None:
            cid, path = parsed
            names += (cid, f"{cid}/{path}") if path else (cid,)
        return Target("ipfs", names)

    async def _serve(self, request: web.Request, target: Target) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        parsed = _split_path(request)
        if parsed is None:
            return web.Response(status=404, text="404 page not found\n")
        cid_text, path = parsed
        try:
            root = Cid.parse(cid_text)
        except ValueError as exc:
            return web.Response(status=400, text=f"invalid CID {cid_text!r}: {exc}\n")
        try:
            want = _negotiate(request.rel_url.query, request.headers.get("Accept", ""))
        except _Reject as reject:
            return reject.response()
        if want is None:
            if cid_text == PROBE_CID and not path:
                want = _Want("raw")  # the probe answers even without a format
            else:
                return web.Response(
                    status=406,
                    text="only trustless responses are served: ask for ?format=raw or "
                    f"?format=car (Accept: {RAW_TYPE} or {CAR_TYPE})\n",
                )
        recorder = _Recorder(self.backend)
        reader = DagReader(recorder)
        ipfs_path = f"/ipfs/{cid_text}" + (f"/{path}" if path else "")
        try:
            segments = [root]
            for name in [p for p in path.split("/") if p]:
                segments.append(await reader.resolve(segments[-1], name))
            path_blocks = _unique(recorder.log)
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
        except _Reject as reject:
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
        if _not_modified(request, etag):
            return web.Response(status=304, headers=hdrs)
        fault = self._take_tfault(names, "raw") if request.method == "GET" else None
        if fault is not None and fault.kind == "flip_block_byte":
            if fault.cid is None or fault.cid.to_v1() == cid.to_v1():
                data = _flip(data, fault.at)
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
        want: _Want,
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
        if scope_text and scope_text not in _SCOPES:
            raise _Reject(400, f"dag-scope={scope_text!r}: expected block, entity or all")
        spec = _parse_entity_bytes(query["entity-bytes"]) if "entity-bytes" in query else None
        scope: str = scope_text or ("entity" if spec is not None else self.default_dag_scope)
        kind, _, fs = _file_info(terminal, terminal_block)
        rng: tuple[int, int] | None = None
        if scope == "entity" and spec is not None and kind == "file":
            rng = _resolve_range(spec, _file_size(terminal_block, fs))
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
        if _not_modified(request, etag):
            return web.Response(status=304, headers=hdrs)
        resp = web.StreamResponse(status=200, headers=hdrs)
        if request.method != "GET":
            await resp.prepare(request)
            await resp.write_eof()
            return resp
        tfault = self._take_tfault(names, "car")
        fault = self._take_fault(target, body=True)
        if tfault is not None and tfault.kind == "wrong_root":
            header_root = tfault.cid or UNRELATED_CID
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        out = _StreamOut(self, request, resp, fault, keys)
        walk = _Walk(reader, want.dups)
        blocks = self._car_blocks(walk, path_blocks, terminal, terminal_block, scope, rng)
        if tfault is not None:
            blocks = _faulted(blocks, tfault)
        await self._write_car(out, header_root, blocks, tfault)
        return resp

    async def _write_car(
        self,
        out: _StreamOut,
        header_root: Cid,
        blocks: _Blocks,
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
                if out.needs_flip_at:
                    out.flip_at = out.sent + len(section) - len(data) + len(data) // 2
                    out.needs_flip_at = False
                if not await out.write(section):
                    return
                self._count_block(cid)
                count += 1
        except (KeyError, LookupError, ModelfetchError, OSError, aiohttp.ClientError):
            pass  # a block went missing mid-walk: end the CAR here, the client sees it incomplete
        finally:
            await blocks.aclose()
        await out.end()

    async def _car_blocks(
        self,
        walk: _Walk,
        path_blocks: list[tuple[Cid, bytes]],
        terminal: Cid,
        terminal_block: bytes,
        scope: str,
        rng: tuple[int, int] | None,
    ) -> _Blocks:
        for cid, data in path_blocks:
            if _fresh(walk, cid):
                yield cid, data
        if scope == "block":
            if _fresh(walk, terminal):
                yield terminal, terminal_block
            return
        if scope == "all":
            mode = "all"
        else:
            kind, _, _ = _file_info(terminal, terminal_block)
            mode = kind if kind in ("file", "hamt") else "block"
        if mode == "block":
            if _fresh(walk, terminal):
                yield terminal, terminal_block
            return
        async for item in _walk_dag(walk, terminal, mode, rng):
            yield item


def _unique(blocks: list[tuple[Cid, bytes]]) -> list[tuple[Cid, bytes]]:
    seen: set[Cid] = set()
    out = []
    for cid, data in blocks:
        if cid not in seen:
            seen.add(cid)
            out.append((cid, data))
    return out


def _fresh(walk: _Walk, cid: Cid) -> bool:
    """Whether to send `cid` now: never an identity CID, a repeat only with dups=y."""
    if cid.is_identity:
        return False
    if walk.dups:
        return True
    if cid in walk.seen:
        return False
    walk.seen.add(cid)
    return True


async def _walk_dag(walk: _Walk, cid: Cid, mode: str, rng: tuple[int, int] | None) -> _Blocks:
    """DFS, parents first: a file's blocks (those covering `rng` [lo, hi) if given), a HAMT's
    shards, or (mode "all") every block reachable through dag-pb links."""
    if not cid.is_identity and not walk.dups:
        if cid in walk.seen:
            return
        walk.seen.add(cid)
    data = await walk.reader.block(cid)
    if not cid.is_identity:
        yield cid, data
    if cid.codec != DAG_PB:
        return
    try:
        pb = decode_pbnode(data)
        fs = decode_unixfs(pb.data) if pb.data is not None and mode != "all" else None
    except ValueError:
        return
    if mode == "all":
        for link in pb.links:
            async for item in _walk_dag(walk, link.cid, mode, None):
                yield item
    elif mode == "hamt" and fs is not None and fs.type == NodeType.HAMT_SHARD:
        width = len(f"{(fs.fanout or 256) - 1:X}")
        for link in pb.links:
            if len(link.name or "") == width:  # a sub-shard; longer names are entries
                async for item in _walk_dag(walk, link.cid, mode, None):
                    yield item
    elif mode == "file" and fs is not None and fs.type in (NodeType.FILE, NodeType.RAW):
        pos = len(fs.data or b"")
        for link, size in zip(pb.links, fs.blocksizes, strict=False):
            if rng is None:
                async for item in _walk_dag(walk, link.cid, mode, None):
                    yield item
            elif pos < rng[1] and pos + size > rng[0]:
                sub = (max(0, rng[0] - pos), min(size, rng[1] - pos))
                async for item in _walk_dag(walk, link.cid, mode, sub):
                    yield item
            pos += size


async def _faulted(blocks: _Blocks, fault: TrustlessFault) -> _Blocks:
    """The blocks with a flipped byte or an extra block (other kinds act in the writer)."""
    if fault.kind == "extra_block":
        extra = (make_cid(1, RAW, fault.data), fault.data)
        count = 0
        async for item in blocks:
            if fault.at is not None and count == fault.at:
                yield extra
            yield item
            count += 1
        if fault.at is None or count <= fault.at:  # fewer blocks than `at`: append it
            yield extra
        return
    if fault.kind != "flip_block_byte":
        async for item in blocks:
            yield item
        return
    if fault.cid is not None:
        want = fault.cid.to_v1()
        done = False
        async for cid, data in blocks:
            if not done and cid.to_v1() == want:
                data = _flip(data, fault.at)
                done = True
            yield cid, data
        return
    held: list[tuple[Cid, bytes]] = []  # blocks before the first leaf (internal nodes)
    flipped = False
    async for cid, data in blocks:
        if flipped:
            yield cid, data
        elif _is_leaf(cid, data):
            for item in held:
                yield item
            held.clear()
            flipped = True
            yield cid, _flip(data, fault.at)
        else:
            held.append((cid, data))
    if held:  # no leaf at all: flip the first block
        first_cid, first_data = held[0]
        yield first_cid, _flip(first_data, fault.at)
        for item in held[1:]:
            yield item


def _split_path(request: web.Request) -> tuple[str, str] | None:
    """`/ipfs/<cid>/<path>` -> (cid text, decoded path without empty segments)."""
    segs = [unquote(s) for s in request.rel_url.raw_path.split("/")[1:]]
    if len(segs) < 2 or segs[0] != "ipfs" or not segs[1]:
        return None
    return segs[1], "/".join(s for s in segs[2:] if s)


def _not_modified(request: web.Request, etag: str) -> bool:
    value = request.headers.get("If-None-Match")
    if not value:
        return False
    tags = [t.strip().removeprefix("W/") for t in value.split(",")]
    return "*" in tags or etag in tags


__all__ = [
    "CAR_TYPE",
    "PROBE_CID",
    "RAW_TYPE",
    "UNRELATED_BLOCK",
    "UNRELATED_CID",
    "BlockBackend",
    "CarRoots",
    "DagScope",
    "MemoryBackend",
    "NodeBackend",
    "TrustlessFault",
    "TrustlessFaultKind",
    "TrustlessGatewayServer",
    "car_cut_short",
    "extra_block",
    "flip_block_byte",
    "wrong_root",
]
