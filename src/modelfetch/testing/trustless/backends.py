"""Where a loopback trustless gateway gets its blocks: held in memory or a real IPFS node."""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import BinaryIO, Protocol

import aiohttp

from modelfetch.ipfs.blockstore import MemoryBlockStore
from modelfetch.ipfs.car import read_car
from modelfetch.ipfs.cid import RAW, Cid, make_cid
from modelfetch.ipfs.directory import DirectoryBuilder
from modelfetch.ipfs.importer import Profile, UnixFSFileBuilder


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


__all__ = ["BlockBackend", "MemoryBackend", "NodeBackend"]
