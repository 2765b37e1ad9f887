"""An IPFS node's RPC (kubo, js-ipfs) as a trustless block source: `block/get`, `dag/export`.

The RPC answers for the node itself, which fetches what it lacks from its peers (bitswap):
a machine's own node becomes a block source whose every block is checked against its CID
here, so the node is trusted with nothing. `block/get` is one block per request; reading a
file fetches the blocks of a range `window` at a time and releases them in order.
`dag/export` is one CAR stream of a whole DAG (no range: a resume re-sends the start).
A CID no peer has makes the node wait: every request carries the node's own `timeout`
argument and the client's stall timeout.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator
from typing import Final
from urllib.parse import quote

from ..errors import BadBlock, HTTPStatus
from ..httpclient import Client, Response
from ..sources.http import request
from .cid import RAW, Cid, verify_block
from .unixfs import NodeType, decode_pbnode, decode_unixfs

MAX_BLOCK: Final = 2 << 20  # bitswap's limit; kubo's own is 1 MiB + a margin
#: Blocks in flight when reading a file (bench/ipfs_fleet.py: 64 beat 16 and 1, both from
#: the node's own store and over bitswap), and at most this many bytes of them.
DEFAULT_WINDOW: Final = 64
WINDOW_BYTES: Final = 16 << 20


def rpc_base(url: str) -> str:
    """A node's RPC base URL without a trailing `/api/v0` (both spellings are accepted)."""
    base = url.rstrip("/")
    return base[: -len("/api/v0")] if base.endswith("/api/v0") else base


class RpcBlocks:
    """Blocks from one node's RPC (`POST /api/v0/block/get`), each verified against its CID.

    Usable as a BlockGetter (`await blocks(cid)`). `timeout` is how long the node may look
    for a block among its peers (its `timeout` argument) and how long a request may stall.
    """

    def __init__(
        self, client: Client, url: str, *, timeout: float = 30.0, connect_timeout: float = 10.0
    ) -> None:
        self.client = client
        self.base = rpc_base(url)
        self.timeout = timeout
        self.connect_timeout = connect_timeout

    def _url(self, command: str, cid: Cid, **args: str) -> str:
        extra = "".join(f"&{k}={quote(v)}" for k, v in args.items())
        return f"{self.base}/api/v0/{command}?arg={cid}&timeout={self.timeout:g}s{extra}"

    async def _post(self, url: str) -> Response:
        return await request(
            self.client,
            "POST",
            url,
            connect_timeout=self.connect_timeout,
            stall_timeout=self.timeout + 5,  # the node's own timeout answers first
        )

    async def __call__(self, cid: Cid) -> bytes:
        """The verified bytes of block `cid` (BadBlock if the node sent other bytes)."""
        if cid.is_identity:
            return cid.digest
        try:
            resp = await self._post(self._url("block/get", cid))
        except HTTPStatus as exc:
            if exc.status == 500:  # how kubo and js-ipfs say "not found within the timeout"
                raise KeyError(cid) from None
            raise
        data = await resp.read(limit=MAX_BLOCK)
        verify_block(cid, data)
        return data

    async def export(self, cid: Cid) -> Response:
        """A CAR stream of the whole DAG under `cid` (`dag/export`); the caller verifies it."""
        return await self._post(self._url("dag/export", cid))

    async def iter_file(
        self,
        root: Cid,
        *,
        offset: int = 0,
        end: int | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> AsyncIterator[bytes]:
        """The verified bytes [offset, end) of the UnixFS file `root`, `window` blocks (and at
        most WINDOW_BYTES) in flight.

        The DAG is walked in file order with the next `window` blocks already requested; a
        node's children replace it at the head of the walk, subtrees outside the range are
        skipped by their blocksizes. Sizes are checked against the parents' (a cut DAG raises
        BadBlock), so a complete run yielded exactly the range's bytes.
        """
        walk: deque[_Item] = deque([_Item(root, 0, None)])
        stop: int | None = None
        try:
            while walk:
                budget = WINDOW_BYTES
                for item in itertools.islice(walk, window):
                    item.start_fetch(self)
                    budget -= item.size or 0
                    if budget <= 0:
                        break
                item = walk.popleft()
                data = await item.fetched()
                children: list[_Item] = []
                if item.cid.codec == RAW:
                    content = data
                else:
                    content, children = _file_node(item, data)
                size = len(content) + sum(c.size or 0 for c in children)
                if item.size is not None and size != item.size:
                    raise BadBlock(f"block {item.cid}: {size} bytes, its parent says {item.size}")
                if stop is None:  # the root: now the file's size is known
                    stop = size if end is None else min(end, size)
                    if offset > size:
                        raise ValueError(f"offset {offset} is past the end of the {size}-byte file")
                wanted = [c for c in children if c.pos + (c.size or 0) > offset and c.pos < stop]
                walk.extendleft(reversed(wanted))
                lo, hi = max(offset, item.pos), min(stop, item.pos + len(content))
                if lo < hi:
                    whole = (lo, hi) == (item.pos, item.pos + len(content))
                    yield content if whole else content[lo - item.pos : hi - item.pos]
        finally:
            for item in walk:
                item.cancel()


class _Item:
    """One block of a file walk: its CID, where its bytes start, its size per its parent."""

    __slots__ = ("cid", "pos", "size", "task")

    def __init__(self, cid: Cid, pos: int, size: int | None) -> None:
        self.cid = cid
        self.pos = pos
        self.size = size
        self.task: asyncio.Task[bytes] | None = None

    def start_fetch(self, blocks: RpcBlocks) -> None:
        if self.task is None:
            self.task = asyncio.ensure_future(blocks(self.cid))

    async def fetched(self) -> bytes:
        assert self.task is not None
        return await self.task

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()


def _file_node(item: _Item, data: bytes) -> tuple[bytes, list[_Item]]:
    """A dag-pb file node: its inline bytes and its children (positions from blocksizes)."""
    try:
        pb = decode_pbnode(data)
        fs = decode_unixfs(pb.data) if pb.data is not None else None
    except ValueError as exc:
        raise BadBlock(f"block {item.cid}: not a valid UnixFS node: {exc}") from None
    if fs is None or fs.type not in (NodeType.FILE, NodeType.RAW):
        kind = "no UnixFS data" if fs is None else fs.type.name.lower()
        raise BadBlock(f"block {item.cid}: {kind}, not a file")
    if len(fs.blocksizes) != len(pb.links):
        raise BadBlock(f"file node {item.cid}: {len(pb.links)} links, {len(fs.blocksizes)} sizes")
    inline = fs.data or b""
    total = len(inline) + sum(fs.blocksizes)
    if fs.filesize is not None and fs.filesize != total:
        raise BadBlock(f"file node {item.cid}: filesize {fs.filesize}, its parts make {total}")
    children = []
    pos = item.pos + len(inline)
    for link, size in zip(pb.links, fs.blocksizes, strict=True):
        children.append(_Item(link.cid, pos, size))
        pos += size
    return inline, children


__all__ = ["DEFAULT_WINDOW", "RpcBlocks", "rpc_base"]
