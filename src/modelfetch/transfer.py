"""Streaming a byte stream into a partial file, hashing on the way, in one pass."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from .errors import SizeMismatch
from .hashes import Digests, Identity, feed_file
from .sources.base import ByteStream
from .store import Partial, storage_error, stream_checks

log = logging.getLogger(__name__)

BATCH_BYTES = 4 << 20  # hand the writer thread this much at a time
SYNC_EVERY = 4 << 20  # start writeback this often (measured best: every batch), so fsync is short


def _writeback_starter() -> Callable[[int, int, int], None] | None:
    """Linux sync_file_range(SYNC_FILE_RANGE_WRITE): start writeback without waiting."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)

    def start(fd: int, offset: int, length: int) -> None:
        func(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE; failure only costs time later

    return start


_start_writeback = _writeback_starter()

Progress = Callable[[int], None]  # called with the file's byte count so far


class PartialWriter:
    """Appends to a partial file from worker threads: one hashes a batch while one writes it.

    Both threads get the same immutable batch; the next batch is handed over only when both
    are done with the previous one, so the network read of batch N+1 overlaps the hashing
    and the writing of batch N, and the event loop never waits on the disk or on SHA-256.
    """

    def __init__(
        self, path: Path, digests: Digests, *, start: int, expected_size: int | None = None
    ) -> None:
        self.path = path
        self.digests = digests
        self.written = start
        self.expected_size = expected_size
        self._unsynced = 0
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            os.ftruncate(self._fd, start)
            os.lseek(self._fd, start, os.SEEK_SET)
        except OSError as exc:
            raise storage_error(exc, path, needed=self._still_needed()) from None
        self._pending: list[asyncio.Future[None]] = []

    async def write(self, chunks: list[bytes]) -> None:
        await self.drain()
        loop = asyncio.get_running_loop()
        self._pending = [
            loop.run_in_executor(None, self._hash_batch, chunks),
            loop.run_in_executor(None, self._write_batch, chunks),
        ]

    async def drain(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*pending)

    def _hash_batch(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.digests.update(chunk)

    def _write_batch(self, chunks: list[bytes]) -> None:
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self._fd, view) :]
            size = sum(len(c) for c in chunks)
            self.written += size
            self._unsynced += size
            if self._unsynced >= SYNC_EVERY:
                if _start_writeback is not None:
                    _start_writeback(self._fd, self.written - self._unsynced, self._unsynced)
                else:
                    os.fdatasync(self._fd)
                self._unsynced = 0
        except OSError as exc:
            raise storage_error(exc, self.path, needed=self._still_needed()) from None

    def _still_needed(self) -> int | None:
        return None if self.expected_size is None else max(0, self.expected_size - self.written)

    def sync_and_close(self) -> None:
        """Make the data durable before it is renamed into place (blocking)."""
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise storage_error(exc, self.path) from None
        finally:
            self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


async def rehash_prefix(path: Path, digests: Digests, length: int) -> int:
    """Feed the first `length` bytes kept from an earlier try into `digests` (resume)."""
    return await asyncio.to_thread(feed_file, path, digests.update, limit=length)


async def receive(
    stream: ByteStream,
    writer: PartialWriter,
    *,
    expected_size: int | None,
    progress: Progress,
    progress_interval: float = 0.25,
) -> None:
    """Copy `stream` to `writer`; stop at once if the origin sends more than expected."""
    batch: list[bytes] = []
    batch_bytes = 0
    received = writer.written
    last_report = 0.0
    try:
        async for chunk in stream.chunks():
            received += len(chunk)
            if expected_size is not None and received > expected_size:
                raise SizeMismatch(
                    f"{stream.url} sent more than the expected {expected_size:,} bytes: "
                    "cut off and rejected"
                )
            batch.append(chunk)
            batch_bytes += len(chunk)
            if batch_bytes >= BATCH_BYTES:
                await writer.write(batch)
                batch, batch_bytes = [], 0
            now = time.monotonic()
            if now - last_report >= progress_interval:
                last_report = now
                progress(received)
        if batch:
            await writer.write(batch)
            batch = []
    finally:
        stream.close()
        # Whatever was received before an error is kept (and hashed): it can resume.
        if batch:
            await writer.write(batch)
        await writer.drain()
        progress(writer.written)


class Receiving:
    """A file's partial data and its running digests, carried across tries and sources."""

    def __init__(self, partial: Partial, identity: Identity, name: str, path: str) -> None:
        self.partial = partial
        self.identity = identity
        self._name = name
        self._path = path
        self.digests = self._fresh()
        self.offset = 0

    def _fresh(self) -> Digests:
        return Digests(self.identity, stream_checks(self._path), name=self._name)

    async def resume_or_begin(self) -> None:
        kept = await asyncio.to_thread(self.partial.resumable_bytes, self.identity)
        if kept:
            self.offset = await rehash_prefix(self.partial.data, self.digests, kept)
            log.info("%s: resuming after %d kept bytes", self._name, self.offset)
        else:
            await asyncio.to_thread(self.partial.begin, self.identity)

    def restart(self) -> None:
        self.digests = self._fresh()
        self.offset = 0

    async def start_over(self) -> None:
        """Throw away what was received: it failed verification."""
        await self.discard()
        self.restart()
        await asyncio.to_thread(self.partial.begin, self.identity)

    async def discard(self) -> None:
        await asyncio.to_thread(self.partial.discard)
