"""The mirror's figures: requests, bytes served, hit ratio, pulls in flight, clients."""

from __future__ import annotations

import time
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge


class PullFigures(Protocol):
    """What the figures read of the pull-through."""

    @property
    def in_flight(self) -> int: ...

    started: int
    failed: int


CLIENT_WINDOW = 600.0  # s: a client counts while it asked something within this window


class MirrorStats:
    """Counters in the server's Prometheus registry, and the same as JSON for the dashboard.

    A *hit* is a file answer served from what the mirror held; a *miss* needed a pull
    from upstream. `clients` counts distinct client addresses of the last ten minutes.
    """

    def __init__(self, registry: CollectorRegistry, pulls: PullFigures) -> None:
        self._pulls = pulls
        self.requests = Counter(
            "modelfetch_mirror_requests",
            "Requests to the mirror's Hugging Face API, by route and outcome.",
            ["route", "outcome"],
            registry=registry,
        )
        self.bytes_served = Counter(
            "modelfetch_mirror_bytes_served",
            "File bytes the mirror sent to clients.",
            registry=registry,
        )
        Gauge(
            "modelfetch_mirror_pulls",
            "Pull-through transfers from upstream started since the server started.",
            registry=registry,
        ).set_function(lambda: float(self._pulls.started))
        Gauge(
            "modelfetch_mirror_pulls_failed",
            "Pull-through transfers that failed (nothing of them was served).",
            registry=registry,
        ).set_function(lambda: float(self._pulls.failed))
        Gauge(
            "modelfetch_mirror_pulls_in_flight",
            "Pull-through transfers from upstream running now.",
            registry=registry,
        ).set_function(lambda: float(self._pulls.in_flight))
        Gauge(
            "modelfetch_mirror_hit_ratio",
            "File answers served from what the mirror held, over all file answers.",
            registry=registry,
        ).set_function(lambda: self.hit_ratio)
        Gauge(
            "modelfetch_mirror_clients",
            "Distinct client addresses that asked the mirror in the last ten minutes.",
            registry=registry,
        ).set_function(lambda: float(self.clients()))
        self.hits = 0
        self.misses = 0
        self.total_requests = 0
        self.total_bytes = 0
        self._seen: dict[str, float] = {}

    def request(self, route: str, outcome: str, client: str | None) -> None:
        self.requests.labels(route, outcome).inc()
        self.total_requests += 1
        if outcome == "hit":
            self.hits += 1
        elif outcome == "miss":
            self.misses += 1
        now = time.monotonic()
        self._seen[client or "?"] = now
        if len(self._seen) > 4096:
            self._seen = {k: t for k, t in self._seen.items() if now - t < CLIENT_WINDOW}

    def sent(self, n: int) -> None:
        self.bytes_served.inc(n)
        self.total_bytes += n

    @property
    def hit_ratio(self) -> float:
        answered = self.hits + self.misses
        return self.hits / answered if answered else 0.0

    def clients(self) -> int:
        now = time.monotonic()
        return sum(1 for t in self._seen.values() if now - t < CLIENT_WINDOW)

    def snapshot(self) -> dict[str, Any]:
        """`GET /gm/api/mirror`: the same figures as /metrics, as one JSON object."""
        return {
            "requests": self.total_requests,
            "bytes_served": self.total_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "hit_ratio": round(self.hit_ratio, 4),
            "pulls_in_flight": self._pulls.in_flight,
            "pulls": self._pulls.started,
            "pulls_failed": self._pulls.failed,
            "clients": self.clients(),
        }
