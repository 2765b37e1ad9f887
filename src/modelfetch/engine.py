"""The chain: a file's identity, the cache, the origins of every layer, install, events.

For each file: the cache (verified in place, no network) first; then the expected identity
is settled once from the best evidence (manifest, the hub's metadata, the IPFS CID); then the
origins of every network layer in `order`, each layer's origins ranked, become the candidates
of one transfer (`transfer.fetch`): a small file comes from the best of them (others raced
only by hedging), a large one is spread over all. What a run learns about an origin (down,
lying, slow) holds for every file of the run. A failure names every layer and origin, tried
or skipped, with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path

from .attempts import FileLog, blame, report_liar, report_senders, unverifiable_reason
from .cachecheck import from_destination, from_hf_cache
from .catalog import ModelSpec
from .config import Settings, load_settings
from .destination import Destination, ModelsDir
from .errors import (
    DOWN_EARLIER,
    AllSourcesFailed,
    ModelfetchError,
    NotCached,
    SourceError,
    StorageError,
    VerificationError,
)
from .events import AttemptEvent, Event, Listener, ProgressEvent
from .hashes import Digests, Identity
from .httpclient import Client
from .records import Records, open_records
from .results import FileResult, ModelResult
from .scores import Scores
from .sources.base import FileRequest, Origin, Source
from .store import Store, stream_checks
from .transfer import NoOrigin, PartialFile, RunState, WrongBytes, fetch, limit_malloc_arenas

log = logging.getLogger(__name__)

__all__ = ["Fetcher", "FileResult", "ModelResult"]

EVIDENCE_RANK = {"huggingface": 0, "ipfs": 1}


class Fetcher:
    """Gets model files into the models dir from whichever origins deliver verified bytes.

    Use as an async context manager (it owns an HTTP client), or call `aclose()`.
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
        limit_malloc_arenas()
        self.settings = settings or load_settings()
        self.store = Store(self.settings.models_dir)
        self._listeners: list[Listener] = list(listeners)
        self._own_records = records is True
        retention = timedelta(hours=self.settings.retention_hours)
        self.records = (
            open_records(self.settings.records_path, retention=retention)
            if records is True
            else records or None
        )
        if self.records is not None:
            self._listeners.append(self.records.listener)
        self.scores = Scores.load(self.records)  # what earlier runs learnt of each origin
        self._listeners.append(self.scores.listener)  # and what this one learns
        self._given_sources = sources
        self._built_sources: dict[str, Source] | None = None
        self._client: Client | None = None
        self._closed = False
        self._inflight: dict[Path, asyncio.Task[FileResult]] = {}
        self._slots = asyncio.Semaphore(self.settings.concurrency)

    @property
    def _sources(self) -> dict[str, Source]:
        """The layers' sources, built at the first cache miss: an all-cached pull never
        imports what talks to the network."""
        if self._built_sources is None:
            known = self._given_sources
            if known is None:
                from .sources.huggingface import HuggingFaceSource
                from .sources.ipfs import IPFSGatewaySource

                known = (
                    IPFSGatewaySource(self.settings.ipfs),
                    HuggingFaceSource(self.settings.huggingface),
                )
            self._built_sources = {s.layer: s for s in known}
        return self._built_sources

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
        if self._client is not None:
            await self._client.aclose()
            self._client = None
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

    def _http(self) -> Client:
        if self._closed:
            raise RuntimeError("this Fetcher is closed")
        if self._client is None:
            self._client = Client()
        return self._client

    # -- models --------------------------------------------------------------------------

    async def pull(self, names: Sequence[str]) -> list[ModelResult]:
        """Pull each model; unknown names raise UnknownModel before any transfer.

        One run: an origin found down or lying is not asked again for any file of any model.
        """
        specs = [self.settings.model(n) for n in names]
        run = RunState()
        return [await self.pull_model(spec, run=run) for spec in specs]

    async def pull_model(
        self,
        model: ModelSpec | str,
        *,
        run: RunState | None = None,
        destination: Destination | None = None,
        identities: Mapping[str, Identity] | None = None,
    ) -> ModelResult:
        """Get every file of `model` into `destination` (default: the models dir).

        `identities`: what each file must be, when the caller already knows (a hub listing).
        """
        spec = self.settings.model(model) if isinstance(model, str) else model
        run = run or RunState()
        dest = destination or ModelsDir(self.store, spec)
        known = identities or {}
        result = ModelResult(spec.name, self.settings.models_dir / spec.dir)
        done = [0]

        async def one(path: str) -> FileResult:
            async with self._slots:
                got = await self.fetch_file(
                    spec, path, done=done, run=run, identity=known.get(path), destination=dest
                )
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
        self,
        model: ModelSpec,
        path: str,
        *,
        done: list[int] | None = None,
        run: RunState | None = None,
        identity: Identity | None = None,
        destination: Destination | None = None,
    ) -> FileResult:
        """Get one file; concurrent requests for the same file share one download.

        `identity`: what the file must be, when the caller already knows (a hub listing).
        `destination`: where it goes (default: the models dir's layout).
        """
        dest = destination or ModelsDir(self.store, model)
        final = dest.final_path(path)
        task = self._inflight.get(final)
        if task is None:
            file_log = FileLog(self._emit, model, path, done or [0])
            task = asyncio.ensure_future(
                self._fetch_once(
                    model, path, file_log, run or RunState(), identity or Identity(), dest
                )
            )
            self._inflight[final] = task
            task.add_done_callback(lambda _t: self._inflight.pop(final, None))
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.settings.wait_timeout)
        except TimeoutError:
            raise StorageError(
                f"{model.name}: {path}: gave up waiting {self.settings.wait_timeout:g} s "
                "for the download already in progress"
            ) from None

    async def _fetch_once(
        self,
        model: ModelSpec,
        path: str,
        file_log: FileLog,
        run: RunState,
        known: Identity,
        dest: Destination,
    ) -> FileResult:
        request = FileRequest(model, path, await self._model_cid(model), known)
        hit = await self._cached_quick(request, file_log, dest)
        if hit is not None:
            return hit
        # Everything past here may touch the network or the final path: one process at a time
        # per file. A process that waited finds the file installed and verified by the other.
        lock = dest.lock(path)
        await self.store.acquire(lock, self.settings.wait_timeout)
        try:
            return await self._through_layers(request, file_log, run, dest)
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

    async def _cached_quick(
        self, request: FileRequest, file_log: FileLog, dest: Destination
    ) -> FileResult | None:
        """Fast path: a file whose identity is known without the network (the manifest, a
        hub listing), verified in place (no lock, no network)."""
        if "cache" not in self.settings.order:
            return None
        identity = await asyncio.to_thread(dest.known_identity, request.path, request.identity)
        if identity is None:
            return None
        return await from_destination(request, identity, file_log, dest, final=False)

    async def _through_layers(
        self, request: FileRequest, file_log: FileLog, run: RunState, dest: Destination
    ) -> FileResult:
        model, path = request.model, request.path
        identity = await self._settle_identity(request, file_log, run)
        if "cache" in self.settings.order:
            hit = await from_destination(request, identity, file_log, dest)
            if hit is None:
                hit = await from_hf_cache(self.settings, request, identity, file_log, dest)
            if hit is not None:
                return hit
        if self.settings.huggingface.offline:
            raise NotCached(
                f"{model.name}: {path} is not on disk (models dir {self.settings.models_dir}, "
                f"Hugging Face cache {self.settings.huggingface.cache_dir}), and offline mode "
                "(--offline or HF_HUB_OFFLINE) allows no download: pull it once online"
            )
        candidates = self._candidates(request, identity, file_log, run)
        if candidates:
            got = await self._transfer(request, identity, candidates, file_log, run, dest)
            if got is not None:
                return got
        file_log.emit(
            AttemptEvent(
                model.name,
                path,
                None,
                "exhausted",
                error_type="AllSourcesFailed",
                error_message=f"{len(file_log.attempts)} attempt(s) failed",
            )
        )
        raise AllSourcesFailed(model.name, path, file_log.attempts)

    async def _settle_identity(
        self, request: FileRequest, file_log: FileLog, run: RunState
    ) -> Identity:
        """The file's expected identity: what the caller knew, the manifest, then each
        source's metadata (in DESIGN's order of evidence: the hub's hashes before a CID).

        Every source may give evidence, even one left out of the layer order: a hash from
        the hub is what makes a gateway's bytes checkable.
        """
        identity = request.identity
        if identity.sha256:
            return identity
        entry = await asyncio.to_thread(self.store.manifest.entry, request.model.name, request.path)
        if entry is not None:
            return Identity(entry.size, entry.sha256, evidence="manifest")
        if identity.verifiable or self.settings.huggingface.offline:
            return identity  # offline: no metadata request either
        ranked = sorted(self._sources.values(), key=lambda s: EVIDENCE_RANK.get(s.layer, 9))
        for source in ranked:
            for origin in source.origins(request):
                reason = run.skip_reason(origin.base_url)
                if reason is not None:
                    file_log.skipped(origin.layer, origin.base_url, reason + DOWN_EARLIER)
                    continue
                started = time.monotonic()
                try:
                    found = await origin.identity(self._http())
                except (SourceError, VerificationError) as exc:
                    file_log.failed(origin.layer, origin.base_url, exc, started)
                    if isinstance(exc, VerificationError) and getattr(origin, "distrustable", True):
                        run.distrust(origin.base_url, f"{type(exc).__name__}: {exc}")
                    if getattr(exc, "origin_down", False):
                        run.mark_down(origin.base_url, str(exc))
                    continue
                if found is not None:
                    identity = identity.merged(found) if identity.evidence != "none" else found
                    if identity.verifiable:
                        return identity
        return identity

    def _candidates(
        self, request: FileRequest, identity: Identity, file_log: FileLog, run: RunState
    ) -> list[Origin]:
        """Every origin of every network layer in order that can serve this file, verified.

        What is left out is logged as skipped, with the reason, for the failure report.
        """
        candidates: list[Origin] = []
        for layer in self.settings.order:
            if layer == "cache":
                continue
            source = self._sources.get(layer)
            if source is None:
                continue
            origins = source.origins(request)
            if not origins:
                file_log.skipped(layer, None, source.why_none(request))
                continue
            usable = []
            ranked = sorted(self.scores.rank(origins, key=_base_url), key=_is_fallback)
            for origin in run.rank(ranked):
                reason = run.skip_reason(origin.base_url)
                if reason is None:
                    usable.append(origin)
                elif not any(a.origin == origin.base_url for a in file_log.attempts):
                    file_log.skipped(layer, origin.base_url, reason + DOWN_EARLIER)
            if usable and not identity.verifiable:
                reason = unverifiable_reason(layer, file_log.attempts, request, self._sources)
                file_log.skipped(layer, None, reason)
                continue
            candidates.extend(usable)
        return candidates

    async def _transfer(
        self,
        request: FileRequest,
        identity: Identity,
        candidates: list[Origin],
        file_log: FileLog,
        run: RunState,
        dest: Destination,
    ) -> FileResult | None:
        model, path = request.model, request.path
        data, control = dest.partial_paths(path)
        partial = PartialFile(data, control, f"{model.dir}/{path}")
        if identity.size is not None:
            dest.ensure_space(data, identity.size)

        def fresh() -> Digests:
            return Digests(identity, stream_checks(path), name=f"{model.name}/{path}")

        first = candidates[0]
        file_log.attempting(first.layer, first.base_url, 0, identity.size)
        ticker = asyncio.ensure_future(_tick_every_second(file_log))
        started = time.monotonic()
        excluded: set[str | None] = set()
        try:
            while True:  # once more without the origins of bytes that failed verification
                left = [o for o in candidates if o.base_url not in excluded]
                if not left:
                    return None
                try:
                    delivered = await fetch(
                        self._http(),
                        left,
                        partial,
                        identity,
                        fresh,
                        self.settings.transfer,
                        run,
                        file_log,
                    )
                    break
                except NoOrigin:
                    self._note_cid_fetches(request, left, run)
                    return None
                except WrongBytes as wrong:
                    blame(wrong, left, file_log, run, started)
                    excluded.update(wrong.contributors)
        finally:
            ticker.cancel()
        verdict = delivered.verdict
        if verdict is not None:
            report_liar(verdict, candidates, file_log, started)
        final = await asyncio.to_thread(
            dest.install, path, partial.data, partial.control, delivered.verified
        )
        if identity.dag is not None and isinstance(dest, ModelsDir):
            # the DAG that verified the file: its blocks can be served from it
            await asyncio.to_thread(self.store.save_block_index, model, path, identity.dag)
        on_disk = delivered.on_disk
        used = report_senders(delivered, file_log)
        self._note_cid_fetches(request, [t.origin for t in used if t.bytes], run, ok=True)
        main = used[0].origin if used else first
        fetched = sum(t.bytes for t in used)
        file_log.installed(main.layer, main.base_url, delivered.verified.size)
        return FileResult(
            path,
            final,
            delivered.verified.size,
            delivered.verified.sha256,
            main.layer,
            main.base_url,
            fetched,
            tuple(
                (t.origin.layer, t.origin.base_url, on_disk[t.origin.base_url])
                for t in used
                if on_disk.get(t.origin.base_url)
            ),
        )

    def _note_cid_fetches(
        self, request: FileRequest, origins: Sequence[Origin], run: RunState, *, ok: bool = False
    ) -> None:
        """Keep the ipfs_cids counts true: every fetch through a gateway counts."""
        if not request.ipfs_cid or self.records is None:
            return
        for origin in origins:
            if origin.layer == "ipfs":
                self.records.record_cid_fetch(
                    request.model.name, request.ipfs_cid, ok, gateway_url=origin.base_url
                )


def _is_fallback(origin: Origin) -> bool:
    """An origin asked only after the others of its layer, whatever its score."""
    return bool(getattr(origin, "fallback", False))


def _base_url(origin: Origin) -> str:
    return origin.base_url


async def _tick_every_second(file_log: FileLog) -> None:
    while True:
        await asyncio.sleep(1.0)
        file_log.tick()
