"""The fallback chain: layer order, retries, single-flight downloads, events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp

from .catalog import ModelSpec
from .config import Settings, load_settings
from .errors import (
    AllSourcesFailed,
    Attempt,
    ConnectFailed,
    ModelfetchError,
    SizeMismatch,
    SourceError,
    StorageError,
    VerificationError,
    error_type,
)
from .events import AttemptEvent, Event, Layer, Listener, ProgressEvent, ProgressMeter, now_ms
from .hashes import Identity, Verified
from .records import Records
from .sources.base import ByteStream, FileRequest, Origin, Source
from .sources.huggingface import HuggingFaceSource
from .sources.ipfs import IPFSGatewaySource
from .store import Store
from .transfer import PartialWriter, Receiving, receive

log = logging.getLogger(__name__)

EVIDENCE_RANK = {"huggingface": 0, "ipfs": 1}


@dataclass(frozen=True)
class FileResult:
    """A file that is in place and verified, and where its bytes came from."""

    path: str
    local_path: Path
    size: int
    sha256: str
    source: Layer
    gateway: str | None
    bytes_downloaded: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "source": self.source,
            "gateway": self.gateway,
            "bytes_downloaded": self.bytes_downloaded,
        }


@dataclass
class ModelResult:
    """The outcome of pulling one model: files in place, and errors for the rest."""

    name: str
    dir: Path
    files: list[FileResult] = field(default_factory=list)
    errors: list[ModelfetchError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class Fetcher:
    """Gets model files into the models dir from the first layer that delivers verified bytes.

    Use as an async context manager (it owns an HTTP session), or call `aclose()`.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        listeners: Iterable[Listener] = (),
        sources: Sequence[Source] | None = None,
        records: Records | bool = True,
    ) -> None:
        """`records=True` keeps a record of every attempt in the models dir (False: none)."""
        self.settings = settings or load_settings()
        self.store = Store(self.settings.models_dir)
        self._listeners: list[Listener] = list(listeners)
        self._own_records = records is True
        self.records = open_records(self.settings) if records is True else records or None
        if self.records is not None:
            self._listeners.append(self.records.listener)
        known = (
            sources
            if sources is not None
            else (
                IPFSGatewaySource(self.settings.ipfs),
                HuggingFaceSource(self.settings.huggingface),
            )
        )
        self._sources: dict[str, Source] = {s.layer: s for s in known}
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._inflight: dict[Path, asyncio.Task[FileResult]] = {}
        self._slots = asyncio.Semaphore(self.settings.concurrency)

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop downloads still running (their partial data is kept) and release resources."""
        self._closed = True
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.records is not None and self._own_records:
            await asyncio.to_thread(self.records.close)
            self.records = None

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _emit(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken listener must never break a download
                log.exception("progress listener failed")

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("this Fetcher is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=32),
                read_bufsize=1 << 20,
                trust_env=True,
            )
        return self._session

    # -- models --------------------------------------------------------------------------

    async def pull(self, names: Sequence[str]) -> list[ModelResult]:
        """Pull each model; unknown names raise UnknownModel before any transfer."""
        specs = [self.settings.model(n) for n in names]
        return [await self.pull_model(spec) for spec in specs]

    async def pull_model(self, model: ModelSpec | str) -> ModelResult:
        spec = self.settings.model(model) if isinstance(model, str) else model
        result = ModelResult(spec.name, self.settings.models_dir / spec.dir)
        done = [0]

        async def one(path: str) -> FileResult:
            async with self._slots:
                got = await self.fetch_file(spec, path, done=done)
            done[0] += 1
            return got

        outcomes = await asyncio.gather(*(one(p) for p in spec.files), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, FileResult):
                result.files.append(outcome)
            elif isinstance(outcome, ModelfetchError):
                result.errors.append(outcome)
            else:
                raise outcome
        self._emit(
            ProgressEvent(
                spec.name,
                "",
                "cache",
                "completed" if result.ok else "error",
                completed_files=len(result.files),
                total_files=len(spec.files),
                error=None if result.ok else f"{len(result.errors)} file(s) failed",
            )
        )
        return result

    # -- one file ------------------------------------------------------------------------

    async def fetch_file(
        self, model: ModelSpec, path: str, *, done: list[int] | None = None
    ) -> FileResult:
        """Get one file; concurrent requests for the same file share one download."""
        final = self.store.final_path(model, path)
        task = self._inflight.get(final)
        if task is None:
            task = asyncio.ensure_future(self._fetch_once(model, path, done or [0]))
            self._inflight[final] = task
            task.add_done_callback(lambda _t: self._inflight.pop(final, None))
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.settings.wait_timeout)
        except TimeoutError:
            raise StorageError(
                f"{model.name}: {path}: gave up waiting {self.settings.wait_timeout:g} s "
                "for the download already in progress"
            ) from None

    async def _fetch_once(self, model: ModelSpec, path: str, done: list[int]) -> FileResult:
        request = FileRequest(model, path, await self._model_cid(model))
        known = await self._cached_by_manifest(request)
        if known is not None:
            return known
        # Everything past here may touch the network or the final path: one process at a time
        # per file. A process that waited finds the file installed and verified by the other.
        lock = self.store.file_lock(model, path)
        await self.store.acquire(lock, self.settings.wait_timeout)
        try:
            return await self._through_layers(request, done)
        finally:
            await asyncio.to_thread(lock.release)

    async def _model_cid(self, model: ModelSpec) -> str | None:
        """The model's IPFS directory CID: configured, published (manifest), or recorded."""
        if model.ipfs is not None:
            return model.ipfs.cid
        cid = await asyncio.to_thread(self.store.manifest.ipfs_cid, model.name)
        if cid is None and self.records is not None:
            cid = await asyncio.to_thread(self.records.cid_for_model, model.name)
        return cid

    async def _cached_by_manifest(self, request: FileRequest) -> FileResult | None:
        """Fast path: a file the manifest vouches for, verified in place (no lock, no network)."""
        if "cache" not in self.settings.order:
            return None
        entry = await asyncio.to_thread(self.store.manifest.entry, request.model.name, request.path)
        if entry is None:
            return None
        identity = Identity(entry.size, entry.sha256, evidence="manifest")
        return await self._from_cache(request, identity, [], final=False)

    async def _through_layers(self, request: FileRequest, done: list[int]) -> FileResult:
        model, path = request.model, request.path
        attempts: list[Attempt] = []
        identity = await self._settle_identity(request, attempts)
        unverifiable = False
        for layer in self.settings.order:
            if layer == "cache":
                hit = await self._from_cache(request, identity, attempts)
                if hit is not None:
                    return hit
                continue
            source = self._sources.get(layer)
            if source is None or not source.origins(request):
                continue
            if not identity.verifiable:
                unverifiable = True
                continue
            got = await self._download(request, source, identity, attempts, done)
            if got is not None:
                return got
        self._emit(
            AttemptEvent(
                model.name,
                path,
                None,
                "exhausted",
                error_type="AllSourcesFailed",
                error_message=f"{len(attempts)} attempt(s) failed",
            )
        )
        if unverifiable and all(a.layer == "cache" for a in attempts):
            attempts.append(Attempt("verify", None, "Unverifiable", _unverifiable_hint()))
        raise AllSourcesFailed(model.name, path, attempts)

    async def _settle_identity(self, request: FileRequest, attempts: list[Attempt]) -> Identity:
        """The file's expected identity: manifest first, then each source's metadata.

        Every source may give evidence, even one left out of the layer order: a hash from
        the hub is what makes a gateway's bytes checkable.
        """
        entry = await asyncio.to_thread(self.store.manifest.entry, request.model.name, request.path)
        identity = Identity(entry.size, entry.sha256, evidence="manifest") if entry else Identity()
        if identity.sha256:
            return identity
        # DESIGN's order of evidence: the hub's hashes before a CID, whatever the layer order.
        ranked = sorted(self._sources.values(), key=lambda s: EVIDENCE_RANK.get(s.layer, 9))
        for source in ranked:
            for origin in source.origins(request):
                started = time.monotonic()
                try:
                    found = await origin.identity(self._http())
                except (SourceError, VerificationError) as exc:
                    self._attempt_failed(
                        request, origin.layer, origin.base_url, exc, attempts, started, 0
                    )
                    if isinstance(exc, VerificationError):
                        source.distrust(origin.base_url)
                    continue
                if found is not None:
                    identity = identity.merged(found) if identity.evidence != "none" else found
                    if identity.verifiable:
                        return identity
        return identity

    async def _from_cache(
        self,
        request: FileRequest,
        identity: Identity,
        attempts: list[Attempt],
        *,
        final: bool = True,
    ) -> FileResult | None:
        """The cache layer. With `final=False` (a quick look) a miss is silent, moves nothing."""
        model, path = request.model, request.path
        started = time.monotonic()
        if not identity.verifiable:
            present = self.store.final_path(model, path).is_file()
            kind = "Unverifiable" if present else "CacheMiss"
            message = "present, but nothing to verify it against" if present else "not on disk"
            if present:
                attempts.append(Attempt("cache", None, kind, message))
            self._emit(
                AttemptEvent(
                    model.name, path, "cache", "error", error_type=kind, error_message=message
                )
            )
            return None
        found = await self.store.lookup(model, path, identity, move_corrupt=final)
        latency = (time.monotonic() - started) * 1000
        if found.status == "hit" and found.verified is not None:
            size, sha256 = found.verified.size, found.verified.sha256
            self._emit(AttemptEvent(model.name, path, "cache", "hit", latency_ms=latency))
            self._emit(
                ProgressEvent(
                    model.name, path, "cache", "success", bytes_downloaded=size, total_bytes=size
                )
            )
            return FileResult(path, found.path, size, sha256, "cache", None, 0)
        if not final:
            return None
        kind = found.error_type or "CacheMiss"
        message = found.reason or "not in the models dir"
        self._emit(
            AttemptEvent(
                model.name,
                path,
                "cache",
                "error",
                latency_ms=latency,
                error_type=kind,
                error_message=message,
            )
        )
        if found.status == "corrupt":
            attempts.append(Attempt("cache", None, kind, f"{message} (moved to .bak)"))
        return None

    async def _download(
        self,
        request: FileRequest,
        source: Source,
        identity: Identity,
        attempts: list[Attempt],
        done: list[int],
    ) -> FileResult | None:
        model, path = request.model, request.path
        receiving = Receiving(
            self.store.partial(model, path), identity, f"{model.name}/{path}", path
        )
        await receiving.resume_or_begin()
        if identity.size is not None:
            try:
                self.store.ensure_space(receiving.partial.data, identity.size - receiving.offset)
            except StorageError:
                if not receiving.offset:
                    await receiving.discard()
                raise
        for origin in source.origins(request):
            got = await self._from_origin(request, source, origin, receiving, attempts, done)
            if got is not None:
                return got
        if not receiving.offset:
            await receiving.discard()  # nothing worth resuming
        return None

    async def _from_origin(
        self,
        request: FileRequest,
        source: Source,
        origin: Origin,
        receiving: Receiving,
        attempts: list[Attempt],
        done: list[int],
    ) -> FileResult | None:
        """Up to `origin.tries` tries of one origin; wrong bytes end its turn at once."""
        model, path = request.model, request.path
        failures = 0
        while failures < origin.tries:
            base = ProgressEvent(
                model.name,
                path,
                origin.layer,
                "attempting",
                gateway=origin.base_url,
                bytes_downloaded=receiving.offset,
                total_bytes=receiving.identity.size,
                retry_count=failures,
                completed_files=done[0],
                total_files=len(model.files),
            )
            self._emit(base)
            started, fetched, resumed_from = time.monotonic(), [0], receiving.offset
            try:
                verified = await self._try_origin(origin, receiving, base, fetched)
            except (SourceError, VerificationError, StorageError) as exc:
                self._attempt_failed(
                    request, origin.layer, origin.base_url, exc, attempts, started, fetched[0], base
                )
                self._note_cid_fetch(request, origin, ok=False)
                if isinstance(exc, StorageError):
                    await receiving.discard()
                    raise
                if isinstance(exc, VerificationError):
                    await receiving.start_over()
                    if resumed_from:
                        continue  # the kept prefix may be what was wrong: once more from 0
                    source.distrust(origin.base_url)
                    return None
                failures += 1
                if not exc.retryable or failures == origin.tries:
                    return None
                await asyncio.sleep(origin.delay(failures - 1, exc))
                continue
            final = await asyncio.to_thread(
                self.store.install, model, path, receiving.partial, verified
            )
            latency = (time.monotonic() - started) * 1000
            self._note_cid_fetch(request, origin, ok=True)
            self._emit(
                AttemptEvent(
                    model.name,
                    path,
                    origin.layer,
                    "success",
                    gateway=origin.base_url,
                    latency_ms=latency,
                    bytes_downloaded=fetched[0],
                )
            )
            self._emit(
                replace(
                    base,
                    status="success",
                    bytes_downloaded=verified.size,
                    total_bytes=verified.size,
                    completed_files=done[0] + 1,
                    timestamp=now_ms(),
                )
            )
            return FileResult(
                path,
                final,
                verified.size,
                verified.sha256,
                origin.layer,
                origin.base_url,
                fetched[0],
            )
        return None

    def _note_cid_fetch(self, request: FileRequest, origin: Origin, *, ok: bool) -> None:
        """Keep the ipfs_cids counts true: every fetch through a gateway counts."""
        if origin.layer == "ipfs" and request.ipfs_cid and self.records is not None:
            self.records.record_cid_fetch(
                request.model.name, request.ipfs_cid, ok, gateway_url=origin.base_url
            )

    async def _try_origin(
        self, origin: Origin, receiving: Receiving, base: ProgressEvent, fetched: list[int]
    ) -> Verified:
        stream = await origin.open(self._http(), receiving.offset)
        if stream.offset != receiving.offset:
            log.info("%s ignored the Range request: starting over", origin.base_url)
            receiving.restart()
        start = stream.offset
        writer = PartialWriter(
            receiving.partial.data,
            receiving.digests,
            start=start,
            expected_size=receiving.identity.size,
        )
        meter = ProgressMeter(self._emit, base)
        ticker = asyncio.ensure_future(_tick_every_second(meter))
        expected = receiving.identity.size

        def progress(total: int) -> None:
            fetched[0] = total - start
            meter.update(total)

        try:
            await receive(stream, writer, expected_size=expected, progress=progress)
            if expected is not None and writer.written < expected:
                _short_body(stream, writer.written - start, writer.written, expected)
            verified = receiving.digests.verify()
            await asyncio.to_thread(writer.sync_and_close)
            return verified
        except VerificationError as exc:
            if stream.content_type.startswith("text/html"):
                raise type(exc)(
                    f"{stream.url} sent an HTML page (Content-Type {stream.content_type}) "
                    f"instead of the file: {exc}"
                ) from None
            raise
        finally:
            ticker.cancel()
            receiving.offset = writer.written
            writer.close()

    def _attempt_failed(
        self,
        request: FileRequest,
        layer: Layer,
        origin: str | None,
        exc: ModelfetchError,
        attempts: list[Attempt],
        started: float,
        fetched: int,
        base: ProgressEvent | None = None,
    ) -> None:
        kind, message = error_type(exc), str(exc)
        attempts.append(Attempt(layer, origin, kind, message))
        latency = (time.monotonic() - started) * 1000 if started else None
        self._emit(
            AttemptEvent(
                request.model.name,
                request.path,
                layer,
                "error",
                gateway=origin,
                latency_ms=latency,
                bytes_downloaded=fetched,
                error_type=kind,
                error_message=message,
            )
        )
        if base is not None:
            self._emit(replace(base, status="error", error=message, timestamp=now_ms()))
        log.info(
            "%s/%s: %s %s: %s: %s",
            request.model.name,
            request.path,
            layer,
            origin or "",
            kind,
            message,
        )


def open_records(settings: Settings) -> Records | None:
    """The models dir's records, or None (with a warning) when they cannot be opened."""
    try:
        return Records(settings.records_path, retention=timedelta(hours=settings.retention_hours))
    except StorageError as exc:
        log.warning("download records are off: %s", exc)
        return None


async def _tick_every_second(meter: ProgressMeter) -> None:
    while True:
        await asyncio.sleep(1.0)
        meter.tick()


def _short_body(stream: ByteStream, got: int, total: int, expected: int) -> None:
    """A body shorter than the file: a cut connection (resumable) or the wrong file."""
    if stream.length is not None and got == stream.length:
        raise SizeMismatch(
            f"{stream.url} sent a complete answer of {got:,} bytes, leaving the file at "
            f"{total:,} of {expected:,} bytes: not this file"
        )
    raise ConnectFailed(f"{stream.url} ended the body after {total:,} of {expected:,} bytes")


def _unverifiable_hint() -> str:
    return (
        "the file cannot be verified: no manifest entry and no hash from any source; "
        "add it with `modelfetch manifest generate`, give the model an IPFS CID, or a "
        "Hugging Face source"
    )
