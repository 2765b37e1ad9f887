"""One file's transfer: connections over ranked origins, hedged, stealing work, resumable.

A file of at least 2 x `min_segment` is cut into pieces fetched over up to `connections`
connections spread over every candidate origin (least used first, best ranked first); a
smaller one is one piece over one connection. Each connection streams its piece into the
`Assembler` in batches of at most `flush_bytes` or `flush_every` seconds (what a `kill -9`
can lose). When an origin gives no first byte within `hedge_delay`, the next origin is raced
for the same bytes: the first to deliver wins, the other is closed. A refused connection or
an unknown host ends that origin for the whole run at once, without a pause. A connection
that finishes takes half of the slowest remaining piece, so slow origins end up with little.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..config import TransferSettings
from ..errors import (
    ConnectFailed,
    HTTPStatus,
    ModelfetchError,
    SizeMismatch,
    SourceError,
    Stalled,
    VerificationError,
)
from ..hashes import Digests
from ..httpclient import Client
from ..sources.base import ByteStream, Origin
from .assemble import Assembler
from .origins import OriginPicker, RunState
from .plan import Piece, Plan

log = logging.getLogger(__name__)

UNKNOWN_END = 1 << 62  # the end of a piece of a file whose size nobody announced
FAN_IN_AFTER = 0.3  # s of transfer before deciding whether many connections are worth it
ONE_IS_ENOUGH = 256e6  # bytes/s: one connection this fast saturates what can be verified


class Observer(Protocol):
    """What the engine hears of a transfer (it turns these into events and records)."""

    def request_failed(
        self, origin: Origin, error: ModelfetchError, started: float, got: int
    ) -> None:
        """One request to `origin` failed after receiving `got` bytes."""

    def progress(self, written: int, origin: Origin) -> None:
        """`written` bytes of the file are on disk; `origin` is sending now."""


@dataclass
class OriginTally:
    """What one origin contributed to one file."""

    origin: Origin
    bytes: int = 0
    requests: int = 0
    first_byte_ms: float | None = None
    started: float = field(default_factory=time.monotonic)
    busy_s: float = 0.0  # time spent receiving from it
    failed_bytes: int = 0  # of `bytes`, those received by requests that then failed


class NoOrigin(Exception):
    """Every candidate origin is down, distrusted or out of tries (the report has why)."""


@dataclass
class _Opened:
    origin: Origin
    stream: ByteStream
    body: AsyncIterator[bytes | memoryview]
    first: bytes | memoryview | None  # None: the body was empty
    started: float
    first_byte_at: float
    end: int  # the end of the range asked for (the piece may have shrunk since)


class Transfer:
    """Fills `assembler` with the file's bytes from `candidates` (ranked best first)."""

    def __init__(
        self,
        client: Client,
        candidates: Sequence[Origin],
        assembler: Assembler,
        settings: TransferSettings,
        run: RunState,
        observer: Observer,
        fresh_digests: Callable[[], Digests],
    ) -> None:
        self.client = client
        self.fresh_digests = fresh_digests
        self.assembler = assembler
        self.settings = settings
        self.state = run
        self.observer = observer
        self.size = assembler.size
        self.picker = OriginPicker(candidates, run, max_per_origin=settings.connections)
        self.tallies: dict[str, OriginTally] = {}
        self._received = assembler.spans.total  # bytes of the file at hand, for progress
        self._rates: dict[object, float] = {}  # connection -> bytes/s, for work stealing
        size = self.size if self.size is not None else UNKNOWN_END
        done = [(s.start, s.end) for s in assembler.spans]
        connections = settings.connections if self.size is not None else 1
        self.plan = Plan(
            size,
            connections=connections,
            min_segment=settings.min_segment,
            min_steal=settings.min_steal,
            done=done,
        )

    async def run(self) -> None:
        """Fetch every missing byte; raises NoOrigin when no origin can deliver the rest."""
        count = self.plan.initial_pieces()
        workers = {i: asyncio.ensure_future(self._worker(i)) for i in range(count)}
        dropped: set[int] = set()
        monitor = asyncio.ensure_future(self._fan_in(workers, dropped)) if count > 1 else None
        try:
            results = await asyncio.gather(*workers.values(), return_exceptions=True)
        finally:
            for w in (*workers.values(), *([monitor] if monitor else [])):
                w.cancel()
            await asyncio.gather(*workers.values(), return_exceptions=True)
        for wid, result in zip(workers, results, strict=True):
            if wid in dropped and isinstance(result, asyncio.CancelledError):
                continue
            if isinstance(result, BaseException) and not isinstance(result, NoOrigin):
                raise result
        if not self.plan.complete:
            raise NoOrigin("no origin could deliver the rest of the file")

    async def _fan_in(self, workers: Mapping[int, asyncio.Future[None]], dropped: set[int]) -> None:
        """When one connection alone runs faster than the file can be verified, the others
        only cost CPU and memory (and hashing out of order): keep the fastest, stop the rest.
        Their pieces go back to the plan, the kept connection takes them in file order."""
        await asyncio.sleep(FAN_IN_AFTER)
        if not self._rates:
            return
        fastest, rate = max(self._rates.items(), key=lambda item: item[1])
        if rate < ONE_IS_ENOUGH:
            return
        log.info("one connection runs at %.0f MB/s: the others are stopped", rate / 1e6)
        for wid, worker in workers.items():
            if wid != fastest and not worker.done():
                dropped.add(wid)
                worker.cancel()

    # -- one connection ------------------------------------------------------------------

    async def _worker(self, wid: int) -> None:
        while True:
            piece = self.plan.take(wid, self._rates)
            if piece is None:
                return
            try:
                await self._fill(wid, piece)
            except BaseException:
                self.plan.release(piece)
                raise
            self._rates.pop(wid, None)

    async def _fill(self, wid: int, piece: Piece) -> None:
        """Get `piece` from whichever origins will deliver it."""
        while not piece.done:
            origin = await self._wait_for_origin(piece)
            opened = await self._open_hedged(origin, piece)
            if opened is None:
                continue  # failures recorded; pick again
            await self._stream(wid, piece, opened)

    async def _wait_for_origin(self, piece: Piece) -> Origin:
        while True:
            origin = self.picker.pick(ranged=piece.pos > 0)
            if origin is not None:
                return origin
            ready = self.picker.next_ready()
            if ready is None:
                raise NoOrigin("every origin failed for this file")
            await asyncio.sleep(max(0.01, ready - time.monotonic()))

    async def _open_hedged(self, origin: Origin, piece: Piece) -> _Opened | None:
        """Open `piece` on `origin`; race the next origin if no first byte comes in time."""
        racing: dict[asyncio.Task[_Opened], Origin] = {}

        def start(o: Origin) -> None:
            self.picker.use(o).active += 1
            racing[asyncio.ensure_future(self._open(o, piece))] = o

        start(origin)
        hedge_at = time.monotonic() + self.settings.hedge_delay
        winner: _Opened | None = None
        try:
            while racing and winner is None:
                timeout = max(0.0, hedge_at - time.monotonic()) if hedge_at else None
                done, _ = await asyncio.wait(
                    racing, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:  # the hedge delay passed without a first byte
                    hedge_at = 0.0
                    other = self.picker.pick(excluding=list(racing.values()), ranged=piece.pos > 0)
                    if other is not None:
                        log.info(
                            "%s: no first byte in %gs, racing %s",
                            origin.base_url,
                            self.settings.hedge_delay,
                            other.base_url,
                        )
                        start(other)
                    continue
                for task in done:
                    o = racing.pop(task)
                    self.picker.use(o).active -= 1
                    exc = task.exception()
                    if exc is None:
                        if winner is None:
                            winner = task.result()
                            self.picker.use(o).active += 1
                        else:
                            winner_close(task.result())
                    elif isinstance(exc, ModelfetchError):
                        self._failed(o, exc, time.monotonic(), 0)
                    else:
                        raise exc
                if winner is None and not racing:
                    return None
        finally:
            for task, o in racing.items():
                task.cancel()
                self.picker.use(o).active -= 1
                if winner is not None:
                    self.state.slow.add(o.base_url)
                    self.observer.request_failed(
                        o,
                        Stalled(
                            f"no first byte within {self.settings.hedge_delay:g} s; "
                            f"{winner.origin.base_url} answered first"
                        ),
                        time.monotonic(),
                        0,
                    )
            if racing:
                await asyncio.gather(*racing, return_exceptions=True)
        return winner

    async def _open(self, origin: Origin, piece: Piece) -> _Opened:
        started = time.monotonic()
        end = None if piece.end >= UNKNOWN_END else piece.end
        stream = await origin.open(self.client, piece.pos, end)
        try:
            self._check_length(stream, piece.pos, end)
        except BaseException:
            stream.close()
            raise
        body = aiter(stream.chunks())
        try:
            try:
                first: bytes | memoryview | None = await anext(body)
            except StopAsyncIteration:
                first = None
        except BaseException:
            stream.close()
            raise
        asked = UNKNOWN_END if end is None else end
        return _Opened(origin, stream, body, first, started, time.monotonic(), asked)

    def _check_length(self, stream: ByteStream, start: int, end: int | None) -> None:
        """An answer announcing another length than the bytes asked for is another file
        (an error page, a truncated object): rejected before any byte is used."""
        if stream.length is None:
            return
        if stream.offset == start and end is not None:
            expected = end - start
        elif stream.offset == 0 and self.size is not None:
            expected = self.size
        else:
            return
        if stream.length != expected:
            html = stream.content_type.startswith("text/html")
            what = "an HTML page" if html else "an answer"
            raise SizeMismatch(
                f"{stream.url} sent {what} of {stream.length:,} bytes for "
                f"{expected:,} bytes of the file ({stream.content_type or 'no Content-Type'}): "
                "not this file"
            )

    async def _stream(self, wid: int, piece: Piece, opened: _Opened) -> None:
        """Copy the opened body into the file until the piece ends (or is cut by a steal)."""
        origin, stream = opened.origin, opened.stream
        tally = self.tallies.setdefault(origin.base_url, OriginTally(origin))
        tally.requests += 1
        if tally.first_byte_ms is None:
            tally.first_byte_ms = (opened.first_byte_at - opened.started) * 1000
        skip = piece.pos - stream.offset  # bytes before the piece: the origin ignored Range
        if skip:
            self.picker.use(origin).no_ranges = True
        sink = _Sink(self.assembler, piece.pos, origin.base_url, self.settings)
        began = time.monotonic()
        got = 0  # piece bytes from this request
        raw = 0  # body bytes read, skipped ones included
        error: ModelfetchError | None = None
        opened_at = piece.pos
        asked_end = opened.end
        overrun = False
        try:
            chunk = opened.first
            while chunk is not None:
                data = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
                raw += len(data)
                if skip:
                    cut = min(skip, len(data))
                    skip -= cut
                    data = data[cut:]
                if len(data) > piece.end - piece.pos and piece.end == asked_end:
                    overrun = True  # more than was asked for: this origin is not to be used
                data = data[: piece.end - piece.pos]
                if data:
                    piece.pos += len(data)
                    got += len(data)
                    tally.bytes += len(data)
                    self._received += len(data)
                    await sink.add(data)
                    elapsed = time.monotonic() - began
                    if elapsed > 0.05:
                        self._rates[wid] = got / elapsed
                    self.observer.progress(self._received, origin)
                if piece.pos >= piece.end:
                    break
                try:
                    chunk = await anext(opened.body)
                except StopAsyncIteration:
                    chunk = None
            else:
                if piece.end >= UNKNOWN_END:  # the size was never announced: this is the end
                    piece.end = piece.pos
                    self.plan.size = piece.pos
        except (SourceError, VerificationError) as exc:
            error = exc
        finally:
            self.picker.use(origin).active -= 1
            tally.busy_s += time.monotonic() - began
            # The body should be over: reading its end returns the connection to the pool,
            # and lets a verified CAR check that nothing follows the blocks it needed.
            at_end = error is None and piece.end == asked_end and piece.pos >= piece.end
            if at_end and (stream.length == raw or getattr(stream, "checks_at_end", False)):
                try:
                    overrun = await _body_continues(opened.body) or overrun
                except (SourceError, VerificationError) as exc:
                    error = exc
            stream.close()  # (a no-op once the body was read to its end)
            if isinstance(error, VerificationError):
                # A request that failed verification contributes nothing, not even the bytes
                # that looked right before the failure.
                await sink.drop()
                await self.assembler.forget(opened_at, piece.pos, self.fresh_digests)
                self._received -= piece.pos - opened_at
                piece.pos = opened_at
                got = 0
            else:
                await sink.close()  # what arrived before an error is good to keep
        if overrun and error is None:
            error = SizeMismatch(
                f"{stream.url} sent more than the {asked_end - stream.offset:,} bytes asked for: "
                "cut off; the bytes before the cut are checked like any others"
            )
        if error is not None or piece.pos < piece.end:
            tally.failed_bytes += got
        if error is not None:
            self._failed(origin, error, began, got)
        elif piece.pos < piece.end:
            self._failed(
                origin,
                ConnectFailed(f"{stream.url} ended the body {piece.end - piece.pos:,} bytes early"),
                began,
                got,
            )

    def _failed(self, origin: Origin, exc: ModelfetchError, started: float, got: int) -> None:
        """Record a failed request and decide what the origin is worth now."""
        self.observer.request_failed(origin, exc, started, got)
        base = origin.base_url
        if isinstance(exc, ConnectFailed) and exc.origin_down:
            self.state.mark_down(base, str(exc))
            return
        if isinstance(exc, VerificationError):
            if getattr(origin, "distrustable", True):
                self.state.distrust(base, f"{type(exc).__name__}: {exc}")
            else:
                self.picker.use(origin).failures = origin.tries
            return
        if isinstance(exc, HTTPStatus) and exc.status == 429:
            cap = self.state.connection_cap.get(base, self.settings.connections)
            self.state.connection_cap[base] = max(1, cap // 2)
        retryable = isinstance(exc, SourceError) and exc.retryable
        if not retryable:
            self.picker.use(origin).failures = origin.tries
            return
        assert isinstance(exc, SourceError)
        self.picker.failed(origin, origin.delay(self.picker.use(origin).failures, exc))


def winner_close(opened: _Opened) -> None:
    """A second origin answered after the race was decided: drop its answer."""
    opened.stream.close()


async def _body_continues(body: AsyncIterator[bytes | memoryview]) -> bool:
    """Read the end of a body expected to be over; True if it sends more bytes instead."""
    try:
        extra = await anext(body)
    except StopAsyncIteration:
        return False
    return len(extra) > 0


class _Sink:
    """One connection's bytes on their way to the disk: batches of at most `flush_bytes`
    or `flush_every` seconds, the next one received while the previous one is written."""

    def __init__(self, assembler: Assembler, at: int, origin: str, settings: TransferSettings):
        self._assembler = assembler
        self._at = at
        self._origin = origin
        self._max_bytes = settings.flush_bytes
        self._max_age = settings.flush_every
        self._batch: list[bytes | memoryview] = []
        self.pending = 0
        self._since = time.monotonic()
        self._writing: asyncio.Future[None] | None = None

    async def add(self, data: memoryview) -> None:
        if not self._batch:
            self._since = time.monotonic()
        self._batch.append(data)
        self.pending += len(data)
        if self.pending >= self._max_bytes or time.monotonic() - self._since >= self._max_age:
            await self.flush()

    async def flush(self) -> None:
        if self._writing is not None:
            writing, self._writing = self._writing, None
            await writing
        if self._batch:
            batch, at = self._batch, self._at
            self._batch = []
            self._at += self.pending
            self.pending = 0
            self._writing = asyncio.ensure_future(self._assembler.write(at, batch, self._origin))

    async def close(self) -> None:
        await self.flush()
        await self.flush()

    async def drop(self) -> None:
        """Throw away what is not written yet; wait for the write under way."""
        self._batch, self.pending = [], 0
        if self._writing is not None:
            writing, self._writing = self._writing, None
            await writing
