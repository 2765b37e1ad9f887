"""Health of each layer and gateway, from the recorded attempts, by the rules below.

For each layer `ipfs` and `huggingface`, and for each gateway (IPFS gateway base URL, hub
base URL as recorded in `gateway`), over its `success`/`error` attempts in the retention
window (`HealthRules` holds the numbers):

=========== ==========================================================================
status      rule (first that applies)
=========== ==========================================================================
unknown     fewer than `min_attempts` (3) attempts: one success is not "healthy"
down        success_rate < `down_below_rate` (20 %), or the last
            `down_after_failures` (3) attempts all failed
degraded    success_rate < `degraded_below_rate` (90 %), or the 95th percentile latency
            of successful attempts > `degraded_p95_ms` (30 000 ms)
healthy     otherwise
=========== ==========================================================================

`success_rate` is a number 0-100 (one decimal); latencies are milliseconds, mean and
nearest-rank 95th percentile over successful attempts (0 when there is none). The cache's
health is its hit rate: every cache row with status `error` counts as a miss.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .schema import NETWORK_LAYERS

Outcome = tuple[bool, float | None]
"""One attempt: whether it succeeded, and its latency in ms."""


@dataclass(frozen=True)
class HealthRules:
    """The thresholds `Records.health()` applies (see `modelfetch.records.health`)."""

    min_attempts: int = 3
    down_below_rate: float = 20.0
    down_after_failures: int = 3
    degraded_below_rate: float = 90.0
    degraded_p95_ms: float = 30_000.0


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of `values` (0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return float(ordered[rank - 1])


def report(conn: sqlite3.Connection, since_ms: int, rules: HealthRules) -> dict[str, Any]:
    """Health of each layer and gateway over the attempts at or after `since_ms`.

    The shape is `Records.health()`'s.
    """
    rows = conn.execute(
        "SELECT layer, gateway, status, latency_ms FROM attempts"
        " WHERE ts_ms >= ? AND layer IS NOT NULL AND status IN ('hit', 'success', 'error')"
        " ORDER BY ts_ms, id",
        (since_ms,),
    ).fetchall()
    outcomes: dict[str, list[Outcome]] = {k: [] for k in NETWORK_LAYERS}
    by_gateway: dict[str, dict[str, list[Outcome]]] = {k: {} for k in NETWORK_LAYERS}
    hits = misses = 0
    for layer, gateway, status, latency in rows:
        if layer == "cache":
            if status == "hit":
                hits += 1
            else:
                misses += 1
            continue
        if layer not in outcomes or status == "hit":
            continue
        outcome = (status == "success", None if latency is None else float(latency))
        outcomes[layer].append(outcome)
        if gateway is not None:
            by_gateway[layer].setdefault(str(gateway), []).append(outcome)
    out: dict[str, Any] = {}
    for layer in NETWORK_LAYERS:
        entry = health_of(outcomes[layer], rules)
        entry["gateways"] = {
            gw: health_of(seq, rules) for gw, seq in sorted(by_gateway[layer].items())
        }
        out[layer] = entry
    lookups = hits + misses
    out["cache"] = {
        "hit_rate": round(100.0 * hits / lookups, 1) if lookups else 0.0,
        "hits": hits,
        "misses": misses,
        "lookups": lookups,
    }
    return out


def health_of(outcomes: Sequence[Outcome], rules: HealthRules) -> dict[str, Any]:
    """Status, rate and latencies of a sequence of outcomes, oldest first."""
    n = len(outcomes)
    ok = sum(1 for good, _ in outcomes if good)
    rate = round(100.0 * ok / n, 1) if n else 0.0
    latencies = [lat for good, lat in outcomes if good and lat is not None]
    mean = round(sum(latencies) / len(latencies), 1) if latencies else 0.0
    p95 = round(percentile(latencies, 95.0), 1)
    recent = outcomes[-rules.down_after_failures :] if rules.down_after_failures > 0 else []
    status: str
    if n < rules.min_attempts:
        status = "unknown"
    elif rate < rules.down_below_rate or (recent and not any(g for g, _ in recent)):
        status = "down"
    elif rate < rules.degraded_below_rate or p95 > rules.degraded_p95_ms:
        status = "degraded"
    else:
        status = "healthy"
    return {
        "status": status,
        "success_rate": rate,
        "avg_latency_ms": mean,
        "p95_latency_ms": p95,
        "attempts": n,
    }
