"""Prometheus metrics of one server, fed by an engine listener, in their own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from ..events import AttemptEvent, Event, ProgressEvent

LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)

EXHAUSTED_LAYER = "all"
"""The `layer` label of an attempt row that says every layer failed for a file."""


class ServerMetrics:
    """Counters of attempts and bytes, attempt latency, files in flight, WebSocket health.

    Labels: `layer` = cache|ipfs|huggingface (`all` for "every layer failed"), `gateway` =
    base URL of the gateway or hub used ("" for the cache), `status` = hit|success|error|
    exhausted. Only configured origins appear as gateways, so label sets stay small.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.attempts = Counter(
            "modelfetch_attempts",
            "Tries of one layer (and gateway) for one file, by outcome.",
            ["layer", "gateway", "status"],
            registry=self.registry,
        )
        self.bytes = Counter(
            "modelfetch_bytes_downloaded",
            "Bytes received from sources, counted when each try ends.",
            ["layer", "gateway"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "modelfetch_attempt_latency_seconds",
            "Duration of each try of one layer for one file.",
            ["layer"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "modelfetch_downloads_in_flight",
            "Files being downloaded now.",
            registry=self.registry,
        )
        self.ws_clients = Gauge(
            "modelfetch_websocket_clients",
            "Connected WebSocket clients.",
            registry=self.registry,
        )
        self.ws_dropped = Counter(
            "modelfetch_websocket_messages_dropped",
            "Messages a WebSocket client was too slow to receive (dropped from its outbox).",
            registry=self.registry,
        )
        self._transferring: set[tuple[str, str]] = set()

    def listener(self, event: Event) -> None:
        """An engine listener: cheap, never raises."""
        if isinstance(event, AttemptEvent):
            self._attempt(event)
        elif isinstance(event, ProgressEvent):
            self._progress(event)

    def _attempt(self, event: AttemptEvent) -> None:
        layer = event.layer or EXHAUSTED_LAYER
        gateway = event.gateway or ""
        self.attempts.labels(layer, gateway, event.status).inc()
        if event.bytes_downloaded:
            self.bytes.labels(layer, gateway).inc(event.bytes_downloaded)
        if event.latency_ms is not None and event.layer is not None:
            self.latency.labels(layer).observe(event.latency_ms / 1000.0)

    def _progress(self, event: ProgressEvent) -> None:
        if event.source == "cache":
            if not event.file:  # a model's pull ended: none of its files is in flight
                self._transferring = {k for k in self._transferring if k[0] != event.model}
                self.in_flight.set(len(self._transferring))
            return
        key = (event.model, event.file)
        if event.status in ("attempting", "downloading"):
            self._transferring.add(key)
        else:
            self._transferring.discard(key)
        self.in_flight.set(len(self._transferring))

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The metrics in the format `accept` asks for (Prometheus text by default)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
