"""What happens to one file, told once: attempt events, progress events and the failure list.

The engine and the transfer report every lookup, request and skipped origin here; `FileLog`
turns each into the events the records, the service and the progress bars consume, and keeps
the `Attempt`s an `AllSourcesFailed` lists when every source failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from .catalog import ModelSpec
from .errors import Attempt, HashMismatch, ModelfetchError, error_type, same_failure
from .events import AttemptEvent, Event, Layer, Listener, ProgressEvent, ProgressMeter, now_ms
from .sources.base import FileRequest, Origin, Source

if TYPE_CHECKING:
    from .transfer import Delivered, OriginTally, RunState, Verdict, WrongBytes

log = logging.getLogger(__name__)

PROGRESS_EVERY = 0.25  # s between two progress events of a file while bytes arrive


class FileLog:
    """The attempts of one file of one model, and their events."""

    def __init__(self, emit: Listener, model: ModelSpec, path: str, done: list[int]) -> None:
        self._emit = emit
        self.model = model
        self.path = path
        self.done = done  # files of the model finished so far (shared by its files)
        self.attempts: list[Attempt] = []
        self._meter: ProgressMeter | None = None
        self._last: tuple[str, str] | None = None  # (layer, base URL) of the sending origin
        self._last_progress = 0.0

    def emit(self, event: Event) -> None:
        self._emit(event)

    def skipped(self, layer: Layer, origin: str | None, reason: str) -> None:
        """A layer or origin that was not asked, and why: in the failure report, and a
        `skipped` attempt event (recorded; scores and health leave it out)."""
        self.attempts.append(Attempt(layer, origin, "Skipped", reason))
        self._emit(
            AttemptEvent(
                self.model.name,
                self.path,
                layer,
                "skipped",
                gateway=origin,
                error_type="Skipped",
                error_message=reason,
            )
        )

    def failed(
        self,
        layer: Layer,
        origin: str | None,
        exc: ModelfetchError,
        started: float | None,
        fetched: int = 0,
    ) -> None:
        """One try of one origin failed: an attempt event, a progress event, a report line."""
        kind, message = error_type(exc), str(exc)
        self.attempts.append(Attempt(layer, origin, kind, message))
        latency = (time.monotonic() - started) * 1000 if started else None
        self._emit(
            AttemptEvent(
                self.model.name,
                self.path,
                layer,
                "error",
                gateway=origin,
                latency_ms=latency,
                bytes_downloaded=fetched,
                error_type=kind,
                error_message=message,
            )
        )
        if self._meter is not None:
            self._emit(
                replace(
                    self._meter.base,
                    source=layer,
                    gateway=origin,
                    status="error",
                    error=message,
                    timestamp=now_ms(),
                )
            )
        log.info(
            "%s/%s: %s %s: %s: %s", self.model.name, self.path, layer, origin or "", kind, message
        )

    # -- the transfer's observer ---------------------------------------------------------

    def request_failed(
        self, origin: Origin, error: ModelfetchError, started: float, got: int
    ) -> None:
        self.failed(origin.layer, origin.base_url, error, started, got)

    def progress(self, received: int, origin: Origin) -> None:
        """Called for every piece of body: an event at most every PROGRESS_EVERY seconds."""
        meter = self._meter
        if meter is None:
            return
        meter.bytes = received
        now = time.monotonic()
        if now - self._last_progress < PROGRESS_EVERY:
            return
        self._last_progress = now
        where = (origin.layer, origin.base_url)
        if where != self._last:
            self._last = where
            meter.base = replace(meter.base, source=origin.layer, gateway=origin.base_url)
        meter.tick()

    # -- progress ------------------------------------------------------------------------

    def attempting(self, layer: Layer, origin: str | None, kept: int, total: int | None) -> None:
        """The transfer starts (with `kept` bytes resumed): the first progress event."""
        base = ProgressEvent(
            self.model.name,
            self.path,
            layer,
            "attempting",
            gateway=origin,
            bytes_downloaded=kept,
            total_bytes=total,
            completed_files=self.done[0],
            total_files=len(self.model.files),
        )
        self._emit(base)
        self._meter = ProgressMeter(self._emit, base)

    def tick(self) -> None:
        if self._meter is not None:
            self._meter.tick()

    def succeeded(
        self, layer: Layer, origin: str, latency_ms: float, fetched: int, ttfb_ms: float | None
    ) -> None:
        """`origin` delivered `fetched` bytes of the file (one event per origin used)."""
        self._emit(
            AttemptEvent(
                self.model.name,
                self.path,
                layer,
                "success",
                gateway=origin,
                latency_ms=latency_ms,
                bytes_downloaded=fetched,
                ttfb_ms=ttfb_ms,
            )
        )

    def installed(self, layer: Layer, origin: str | None, size: int) -> None:
        """The file is in place, verified: the last progress event of its transfer."""
        base = self._meter.base if self._meter is not None else None
        if base is None:
            return
        self._emit(
            replace(
                base,
                source=layer,
                gateway=origin,
                status="success",
                bytes_downloaded=size,
                total_bytes=size,
                completed_files=self.done[0] + 1,
                timestamp=now_ms(),
            )
        )


def blame(
    wrong: WrongBytes,
    origins: Sequence[Origin],
    file_log: FileLog,
    run: RunState,
    started: float,
) -> None:
    """Bytes that failed verification and no single liar: every sender is suspect."""
    for origin in origins:
        if origin.base_url not in wrong.contributors:
            continue
        file_log.failed(origin.layer, origin.base_url, wrong.error, started)
        if getattr(origin, "distrustable", True):
            run.distrust(origin.base_url, f"{type(wrong.error).__name__}: {wrong.error}")
    if None in wrong.contributors:
        log.info("bytes kept from an earlier run were part of a file that failed: discarded")


def report_liar(
    verdict: Verdict, candidates: Sequence[Origin], file_log: FileLog, started: float
) -> None:
    """The origin found to have sent wrong bytes (and fetched again elsewhere) gets its row."""
    liar = next((o for o in candidates if o.base_url == verdict.liar), None)
    if verdict.liar is None or liar is None:
        return
    ranges = ", ".join(f"{s:,}-{e:,}" for s, e in verdict.wrong_ranges[:3])
    file_log.failed(
        liar.layer,
        liar.base_url,
        HashMismatch(
            f"{verdict.failure}; the wrong bytes were at {ranges}, from this origin "
            f"(found by fetching them again from {verdict.referee.base_url}): "
            "not asked again in this run"
        ),
        started,
    )


def report_senders(delivered: Delivered, file_log: FileLog) -> list[OriginTally]:
    """A success row for each origin with bytes in the file from a request that completed
    (a liar's bytes are not on disk any more); the origins used, most bytes on disk first."""
    on_disk = delivered.on_disk
    used = sorted(delivered.tallies.values(), key=lambda t: -on_disk.get(t.origin.base_url, 0))
    for tally in used:
        completed = tally.bytes - tally.failed_bytes  # the failed requests have their rows
        if on_disk.get(tally.origin.base_url) and completed > 0:
            file_log.succeeded(
                tally.origin.layer,
                tally.origin.base_url,
                tally.busy_s * 1000,
                completed,
                tally.first_byte_ms,
            )
    return used


def unverifiable_reason(
    layer: Layer, attempts: Sequence[Attempt], request: FileRequest, sources: Mapping[str, Source]
) -> str:
    """Why a layer's bytes cannot be checked: nothing says what the file must be.

    A model with an IPFS CID is told why the CID did not help (a source's
    `why_unverifiable`: e.g. no trustless gateway to give the DAG the CID names).
    """
    failed = [same_failure(a) for a in attempts if a.error_type != "CacheMiss"]
    failed = [f for f in failed if f[2] != "Skipped"]
    if failed:
        why = "; ".join(f"{layer}: {kind}" for layer, _, kind, _ in failed[:3])
        cause = f"no hash known: the metadata lookups failed ({why})"
    elif request.ipfs_cid:
        cause = "no manifest entry and no hash from the hub"
    else:
        cause = "no manifest entry, no hash from the hub and no IPFS CID"
    if request.ipfs_cid:
        details = [
            getattr(s, "why_unverifiable", lambda _r: None)(request) for s in sources.values()
        ]
        cause += "".join(f"; {d}" for d in details if d)
        advice = "or configure a trustless gateway (one that serves ?format=raw blocks)"
    else:
        advice = "or give the model a Hugging Face source or an IPFS CID"
    what = "gateways'" if layer == "ipfs" else "the hub's"
    return (
        f"{what} bytes can't be checked ({cause}): the file cannot be verified; add it with "
        f"`modelfetch manifest generate`, {advice}"
    )
