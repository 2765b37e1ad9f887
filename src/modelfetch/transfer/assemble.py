"""Writing ranges of a file as they arrive, in any order, and hashing the file in order.

Connections hand `Assembler.write` a batch of bytes for an offset. Writing runs in a worker
thread (`pwrite` at the offset, writeback started so the final fsync is short). Hashing needs
the bytes in file order: a single hashing job follows the *frontier*, the end of the
contiguous bytes already written from the start of the file. A batch that starts exactly at
the frontier is hashed from memory while it is written (one connection: every batch); bytes
that arrived ahead of the frontier are read back from the page cache when it gets there.
So memory stays at the batches in flight, whatever the order of arrival.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Callable, Sequence
from typing import Final

from ..errors import StorageError
from ..hashes import Digests, Identity, Verified
from ..store import storage_error
from .partial import PartialFile, Spans

log = logging.getLogger(__name__)

READ_BACK: Final = 1 << 20  # bytes read back per step when hashing behind the writes
SAVE_EVERY: Final = 0.02  # s between control-file saves while bytes keep arriving
WRITEBACK_FROM: Final = 1 << 20  # batches this big start their writeback at once
HASH_LAG: Final = 4 << 20  # bytes kept in memory for the hashing job before writers wait

Chunks = Sequence[bytes | memoryview]


@functools.cache
def _writeback_starter() -> Callable[[int, int, int], None] | None:
    """Linux sync_file_range(SYNC_FILE_RANGE_WRITE): start writeback without waiting.

    Looked up at the first write, not at import (finding libc can cost a subprocess).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)

    def start(fd: int, offset: int, length: int) -> None:
        func(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE; failure only costs time later

    return start


class Assembler:
    """A partial file being filled at offsets; its digests fed in order; its control file kept.

    `spans` are the ranges already on disk when the transfer starts (a resumed partial); the
    digests must already have been fed the contiguous prefix of them (`hashed` bytes).
    """

    def __init__(
        self,
        partial: PartialFile,
        identity: Identity,
        digests: Digests,
        spans: Spans,
        *,
        hashed: int,
    ) -> None:
        self.partial = partial
        self.identity = identity
        self.digests = digests
        self.spans = spans
        self.size = identity.size
        self._fd = partial.open(identity.size)
        self._frontier = hashed  # bytes fed to the digests
        self._hashing: asyncio.Task[None] | None = None
        # Batches extending the contiguous run the hasher works through, kept in memory so
        # they need not be read back; `_lag` counts their bytes, `_caught_up` wakes writers.
        self._ready: dict[int, Chunks] = {}
        self._lag = 0
        self._caught_up = asyncio.Event()
        self._failure: BaseException | None = None
        self._save_handle: asyncio.TimerHandle | None = None
        self._saving: asyncio.Future[None] | None = None
        self._unsaved = False
        self._closed = False
        self.written = spans.total  # bytes on disk, for progress

    @property
    def fileno(self) -> int:
        """The data file's descriptor (for the liar hunt's compare-and-fix)."""
        return self._fd

    @property
    def frontier(self) -> int:
        """Bytes hashed so far (from the start of the file)."""
        return self._frontier

    # -- writing -------------------------------------------------------------------------

    async def write(self, offset: int, chunks: Chunks, origin: str | None) -> None:
        """Write `chunks` at `offset` (in a worker thread), then mark them present."""
        self._raise_failure()
        size = sum(len(c) for c in chunks)
        if not size:
            return
        if self.size is not None and offset + size > self.size:
            raise StorageError(f"{self.partial.name}: a write past the end of the file")
        keep = offset == self.spans.contiguous_from(self._frontier)
        if keep:
            while self._lag > HASH_LAG:  # the hasher is far behind: let it catch up
                self._caught_up.clear()
                await self._caught_up.wait()
                self._raise_failure()
            self._ready[offset] = chunks
            self._lag += size
        try:
            await asyncio.to_thread(self._pwrite, offset, chunks, size)
        except BaseException:
            if self._ready.pop(offset, None) is not None:
                self._lag -= size
            raise
        self.spans.add(offset, offset + size, origin)
        self.written += size
        self._schedule_save()
        self._kick_hasher()

    def _pwrite(self, offset: int, chunks: Chunks, size: int) -> None:
        pos = offset
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    n = os.pwrite(self._fd, view, pos)
                    pos += n
                    view = view[n:]
            start_writeback = _writeback_starter()
            if start_writeback is not None and size >= WRITEBACK_FROM:
                start_writeback(self._fd, offset, size)
        except OSError as exc:
            needed = None if self.size is None else max(0, self.size - self.written)
            raise storage_error(exc, self.partial.data, needed=needed) from None

    # -- hashing in order ------------------------------------------------------------------

    def _kick_hasher(self) -> None:
        idle = self._hashing is None or self._hashing.done()
        if idle and self.spans.contiguous_from(self._frontier) > self._frontier:
            self._hashing = asyncio.ensure_future(self._hash_forward())

    async def _hash_forward(self) -> None:
        try:
            while True:
                end = self.spans.contiguous_from(self._frontier)
                if end <= self._frontier:
                    return
                batch = self._ready.pop(self._frontier, None)
                if batch is not None:
                    size = sum(len(c) for c in batch)
                    await asyncio.to_thread(self._hash_chunks, batch)
                    self._frontier += size
                    self._lag -= size
                    self._caught_up.set()
                    continue
                # Read back up to the next batch still in memory, never past it.
                upcoming = [o for o in self._ready if o > self._frontier]
                stop = min([end, self._frontier + READ_BACK, *upcoming])
                step = stop - self._frontier
                await asyncio.to_thread(self._hash_from_disk, self._frontier, step)
                self._frontier += step
        except BaseException as exc:  # reported by the next write or by finish()
            self._failure = exc
            self._caught_up.set()

    def _hash_chunks(self, chunks: Chunks) -> None:
        for chunk in chunks:
            self.digests.update(chunk)

    def _hash_from_disk(self, offset: int, length: int) -> None:
        try:
            data = os.pread(self._fd, length, offset)
        except OSError as exc:
            raise storage_error(exc, self.partial.data) from None
        if len(data) != length:
            raise StorageError(f"{self.partial.data}: read back {len(data)} of {length} bytes")
        self.digests.update(data)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    # -- control file ----------------------------------------------------------------------

    def _schedule_save(self) -> None:
        self._unsaved = True
        if self._save_handle is None:
            loop = asyncio.get_running_loop()
            self._save_handle = loop.call_later(SAVE_EVERY, self._save_now)

    def _save_now(self) -> None:
        """Save the control file in a worker thread; one save at a time, the latest wins."""
        self._save_handle = None
        if not self._unsaved or self._closed or self._saving is not None:
            return
        self._unsaved = False
        snapshot = Spans(list(self.spans))
        self._saving = asyncio.ensure_future(asyncio.to_thread(self._save, snapshot))
        self._saving.add_done_callback(self._saved)

    def _saved(self, _future: asyncio.Future[None]) -> None:
        self._saving = None
        if self._unsaved and not self._closed:
            self._schedule_save()

    def _save(self, spans: Spans) -> None:
        try:
            self.partial.save(self.identity, spans)
        except StorageError as exc:  # losing the control file only costs a resume
            log.warning("%s", exc)

    async def flush_control(self) -> None:
        """Write the control file now, with every range written so far."""
        if self._save_handle is not None:
            self._save_handle.cancel()
            self._save_handle = None
        saving = self._saving
        if saving is not None:
            # Wait for the save under way (an older state). Awaiting a future that is done
            # already does not yield, so its callback may not have run: clear it here.
            await asyncio.gather(asyncio.shield(saving), return_exceptions=True)
            if self._saving is saving:
                self._saving = None
        self._unsaved = False
        await asyncio.to_thread(self._save, Spans(list(self.spans)))

    async def forget(self, start: int, end: int, fresh: Callable[[], Digests]) -> None:
        """Bytes [start, end) must not be used: they will be fetched again.

        When some of them were already hashed, hashing starts over from the first byte with
        `fresh()` digests (reading back what is on disk), since a digest cannot be unfed.
        """
        self.spans.remove(start, end)
        self.written = self.spans.total
        if start < self._frontier:
            await self._settle()
            self.digests = fresh()
            self._frontier = 0
            self._ready.clear()
            self._lag = 0
            self._failure = None
            self._caught_up.set()
            self._kick_hasher()
        await self.flush_control()

    # -- the end ---------------------------------------------------------------------------

    async def finish(self) -> Verified:
        """Wait for the hashing to reach the end, check every digest, make the data durable."""
        while True:
            if self._hashing is not None:
                await self._hashing
            self._raise_failure()
            if self.spans.contiguous_from(self._frontier) <= self._frontier:
                break
            self._kick_hasher()
        verified = self.digests.verify()
        await asyncio.to_thread(self._sync)
        return verified

    def _sync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise storage_error(exc, self.partial.data) from None

    async def rehash(self, digests: Digests) -> Verified:
        """Hash the whole data file afresh into `digests` (after some ranges were replaced)."""
        await self._settle()
        self.digests = digests
        self._frontier = 0
        self._ready.clear()
        self._lag = 0
        self._failure = None
        self._kick_hasher()
        return await self.finish()

    async def _settle(self) -> None:
        """Let the hashing job stop (a thread may be reading the file)."""
        if self._hashing is not None:
            await asyncio.gather(self._hashing, return_exceptions=True)

    async def aclose(self) -> None:
        """Save the control file and close the data file (idempotent).

        The hashing job is waited for, not cancelled: its thread may be reading the file, and
        closing the descriptor under it could make it read another file that reused the number.
        """
        if self._closed:
            return
        try:
            await self.flush_control()
        except StorageError as exc:
            log.warning("%s", exc)
        self._closed = True
        await self._settle()
        os.close(self._fd)
