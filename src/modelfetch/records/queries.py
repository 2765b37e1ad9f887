"""Reading the records: attempts and downloads as rows, and the summary counts."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

from .schema import NETWORK_LAYERS, check_layer, dt_to_ms


def attempts(
    conn: sqlite3.Connection,
    since: datetime | None = None,
    layer: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Recorded attempts, newest first, as dicts (see `Records.attempts`).

    `conn` must return `sqlite3.Row`s (as `database.reader` does). Raises ValueError for
    a layer that is not recorded.
    """
    check_layer(layer)
    if limit is not None and limit <= 0:
        return []
    sql = (
        "SELECT timestamp, model, file, layer, gateway, status, latency_ms,"
        " bytes_downloaded, error_type, error_message, ttfb_ms FROM attempts"
    )
    where: list[str] = []
    args: list[Any] = []
    if since is not None:
        where.append("ts_ms >= ?")
        args.append(dt_to_ms(since))
    if layer is not None:
        where.append("layer = ?")
        args.append(layer)
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY ts_ms DESC, id DESC"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(int(limit))
    return [dict(row) for row in conn.execute(sql, args)]


def downloads(conn: sqlite3.Connection, active_only: bool = False) -> list[dict[str, Any]]:
    """Download rows, newest first, as dicts (see `Records.downloads`)."""
    sql = (
        "SELECT id, model, file, layer, gateway, status, downloaded_bytes, total_bytes,"
        " error_message, started_at, completed_at FROM downloads"
    )
    if active_only:
        sql += " WHERE status IN ('pending', 'in_progress')"
    sql += " ORDER BY id DESC"
    return [dict(row) for row in conn.execute(sql)]


def summary(conn: sqlite3.Connection, since_ms: int, window_hours: float) -> dict[str, Any]:
    """Counts of the attempts at or after `since_ms` (see `Records.summary`)."""
    rows = conn.execute(
        "SELECT layer, status, COUNT(*), AVG(latency_ms), TOTAL(bytes_downloaded)"
        " FROM attempts WHERE ts_ms >= ? GROUP BY layer, status",
        (since_ms,),
    ).fetchall()
    counts: dict[tuple[str | None, str], int] = {}
    avg: dict[str | None, float] = {}
    total_bytes = 0
    for layer, status, count, mean, nbytes in rows:
        counts[(layer, status)] = int(count)
        total_bytes += int(nbytes)
        if status == "success" and mean is not None:
            avg[layer] = round(float(mean), 1)
    out: dict[str, Any] = {
        "total": sum(n for (_, status), n in counts.items() if status != "skipped"),
        "cache_hits": counts.get(("cache", "hit"), 0),
        "cache_misses": counts.get(("cache", "error"), 0),
        "exhausted": counts.get((None, "exhausted"), 0),
        "skipped": sum(n for (_, status), n in counts.items() if status == "skipped"),
        "bytes_downloaded": total_bytes,
        "window_hours": window_hours,
    }
    for layer in NETWORK_LAYERS:
        out[layer] = {
            "success": counts.get((layer, "success"), 0),
            "error": counts.get((layer, "error"), 0),
            "avg_latency": avg.get(layer, 0.0),
        }
    return out


OUTCOMES_PER_ORIGIN = 200
"""At most this many of each origin's newest attempts feed its score (older ones weigh
nothing anyway: see `modelfetch.scores`)."""


def recent_outcomes(
    conn: sqlite3.Connection, since_ms: int, per_origin: int = OUTCOMES_PER_ORIGIN
) -> list[tuple[str, str, bool, int, float | None, int, float | None]]:
    """The newest successes and failures of each network origin at or after `since_ms`.

    One query; rows `(gateway, layer, ok, ts_ms, latency_ms, bytes_downloaded, ttfb_ms)`,
    oldest first (the order `Scores` replays them in).
    """
    layers = ", ".join("?" for _ in NETWORK_LAYERS)
    # The origins by skipping through the (gateway, ts_ms) index, then each one's newest
    # rows through it: the cost follows the number of origins, not the size of the table.
    # Over 100,000 rows of 6 gateways (`Scores.load`, median of 5): 568 ms with a window
    # function, 55 ms with SELECT DISTINCT (it reads every index entry), 15 ms this way.
    rows = conn.execute(
        "WITH RECURSIVE o(gateway) AS ("
        " SELECT MIN(gateway) FROM attempts"
        " UNION ALL"
        " SELECT (SELECT MIN(gateway) FROM attempts WHERE gateway > o.gateway) FROM o"
        " WHERE o.gateway IS NOT NULL)"
        " SELECT a.gateway, a.layer, a.status, a.ts_ms, a.latency_ms, a.bytes_downloaded,"
        " a.ttfb_ms FROM o JOIN attempts AS a ON o.gateway IS NOT NULL AND a.id IN ("
        "  SELECT id FROM attempts WHERE gateway = o.gateway AND ts_ms >= ?"
        f"  AND layer IN ({layers}) AND status IN ('success', 'error')"
        "  ORDER BY ts_ms DESC, id DESC LIMIT ?"
        ") ORDER BY a.ts_ms, a.id",
        (since_ms, *NETWORK_LAYERS, int(per_origin)),
    ).fetchall()
    return [
        (
            str(gw),
            str(layer),
            status == "success",
            int(ts),
            None if lat is None else float(lat),
            int(nbytes or 0),
            None if ttfb is None else float(ttfb),
        )
        for gw, layer, status, ts, lat, nbytes, ttfb in rows
    ]
