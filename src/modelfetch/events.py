"""Progress and attempt events the engine emits, in the shapes the service and records use."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

Layer = Literal["cache", "ipfs", "huggingface"]
ProgressStatus = Literal["attempting", "downloading", "success", "error", "completed"]
AttemptStatus = Literal["hit", "success", "error", "exhausted", "skipped"]


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class ProgressEvent:
    """A file's progress through one layer; `to_dict()` is agentgui's WebSocket shape."""

    model: str
    file: str
    source: Layer
    status: ProgressStatus
    gateway: str | None = None
    bytes_downloaded: int = 0
    total_bytes: int | None = None
    speed: float = 0.0  # bytes per second over the last interval
    retry_count: int = 0
    completed_files: int = 0
    total_files: int = 0
    error: str | None = None
    timestamp: int = field(default_factory=now_ms)

    @property
    def percent(self) -> float:
        if not self.total_bytes:
            return 100.0 if self.status in ("success", "completed") else 0.0
        return round(min(100.0, 100.0 * self.bytes_downloaded / self.total_bytes), 2)

    @property
    def eta(self) -> float | None:
        if not self.total_bytes or self.speed <= 0:
            return None
        return round(max(0, self.total_bytes - self.bytes_downloaded) / self.speed, 1)

    def to_dict(self) -> dict[str, Any]:
        remaining = (
            max(0, self.total_bytes - self.bytes_downloaded)
            if self.total_bytes is not None
            else None
        )
        out: dict[str, Any] = {
            "type": "model_download_progress",
            "modelId": self.model,
            "file": self.file,
            "source": self.source,
            "status": self.status,
            "currentGateway": self.gateway,
            "bytesDownloaded": self.bytes_downloaded,
            "bytesRemaining": remaining,
            "totalBytes": self.total_bytes,
            "downloadSpeed": round(self.speed, 1),
            "eta": self.eta,
            "retryCount": self.retry_count,
            "percentComplete": self.percent,
            "completedFiles": self.completed_files,
            "totalFiles": self.total_files,
            "timestamp": self.timestamp,
        }
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class AttemptEvent:
    """The outcome of one try of one layer (or of the whole chain, status `exhausted`)."""

    model: str
    file: str
    layer: Layer | None  # None only for `exhausted`
    status: AttemptStatus
    gateway: str | None = None  # base URL of the gateway or hub used; None for cache
    latency_ms: float | None = None
    bytes_downloaded: int = 0
    error_type: str | None = None
    error_message: str | None = None
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    ttfb_ms: float | None = None  # time to the first byte of the first request, on success

    def to_dict(self) -> dict[str, Any]:
        return {
            "timestamp": self.timestamp.isoformat().replace("+00:00", "Z"),
            "model": self.model,
            "file": self.file,
            "layer": self.layer,
            "gateway": self.gateway,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "bytes_downloaded": self.bytes_downloaded,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "ttfb_ms": self.ttfb_ms,
        }


Event = ProgressEvent | AttemptEvent
Listener = Callable[[Event], None]


class ProgressMeter:
    """Turns byte counts into throttled progress events with a speed."""

    def __init__(self, emit: Listener, base: ProgressEvent) -> None:
        self._emit = emit
        self.base = base
        self.bytes = base.bytes_downloaded
        self._t = time.monotonic()
        self._b = self.bytes
        self.speed = 0.0

    def update(self, total: int) -> None:
        self.bytes = total
        self.tick()

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._t >= 0.2:
            rate = (self.bytes - self._b) / (now - self._t)
            self.speed = rate if self.speed == 0 else 0.5 * self.speed + 0.5 * rate
            self._t, self._b = now, self.bytes
        self._emit(
            replace(
                self.base,
                status="downloading",
                bytes_downloaded=self.bytes,
                speed=self.speed,
                timestamp=now_ms(),
            )
        )
