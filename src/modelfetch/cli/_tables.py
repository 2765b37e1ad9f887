"""The `metrics` tables, drawn with rich: imported only when a table is printed."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ._common import human_bytes

_STATUS_STYLE = {
    "hit": "green",
    "success": "green",
    "healthy": "green",
    "error": "red",
    "exhausted": "bold red",
    "down": "bold red",
    "degraded": "yellow",
    "unknown": "dim",
}


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _table() -> Table:
    return Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)


def print_attempts(rows: list[dict[str, Any]]) -> None:
    """Recorded attempts (the rows of `Records.attempts`), one line each."""
    table = _table()
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("model/file", overflow="fold", ratio=2)
    table.add_column("source", overflow="fold", ratio=2)
    table.add_column("status", no_wrap=True)
    table.add_column("latency", justify="right", no_wrap=True)
    table.add_column("bytes", justify="right", no_wrap=True)
    table.add_column("error", overflow="fold", ratio=3)
    for row in rows:
        error = ": ".join(str(x) for x in (row["error_type"], row["error_message"]) if x)
        latency = row["latency_ms"]
        gateway = str(row["gateway"] or "").split("://", 1)[-1]
        source = " ".join(x for x in (row["layer"] or "all layers", gateway) if x)
        status = str(row["status"])
        table.add_row(
            str(row["timestamp"]).replace("T", " ")[5:19],
            Text(f"{row['model']}/{row['file']}"),
            Text(source),
            Text(status, style=_STATUS_STYLE.get(status, "")),
            "" if latency is None else f"{latency:,.0f} ms",
            human_bytes(int(row["bytes_downloaded"])) if row["bytes_downloaded"] else "",
            Text(error),
        )
    _console().print(table)


def print_summary(summary: dict[str, Any]) -> None:
    """`Records.summary()` as a table per layer and a line of totals."""
    table = _table()
    table.add_column("layer")
    table.add_column("success", justify="right")
    table.add_column("error", justify="right")
    table.add_column("avg latency", justify="right")
    for layer in ("ipfs", "huggingface"):
        entry = summary.get(layer, {})
        table.add_row(
            layer,
            str(entry.get("success", 0)),
            str(entry.get("error", 0)),
            f"{entry.get('avg_latency', 0):,.1f} ms",
        )
    table.add_row(
        "cache",
        f"{summary['cache_hits']} hits",
        f"{summary.get('cache_misses', 0)} misses",
        "",
    )
    console = _console()
    console.print(table)
    console.print(
        f"{summary['total']} attempt(s) in the last {summary.get('window_hours', 24):g} h; "
        f"{summary.get('exhausted', 0)} file(s) failed on every layer; "
        f"{human_bytes(int(summary.get('bytes_downloaded', 0)))} downloaded",
        markup=False,
    )


def print_health(health: dict[str, Any]) -> None:
    """`Records.health()` as a table per layer and gateway and a line for the cache."""
    table = _table()
    table.add_column("layer / gateway")
    table.add_column("status")
    table.add_column("success", justify="right")
    table.add_column("avg latency", justify="right")
    table.add_column("p95 latency", justify="right")
    table.add_column("attempts", justify="right")
    table.add_column("score", justify="right")

    def row(label: str, entry: dict[str, Any]) -> None:
        status = str(entry.get("status", "unknown"))
        score = entry.get("score")
        table.add_row(
            Text(label),
            Text(status, style=_STATUS_STYLE.get(status, "")),
            f"{entry.get('success_rate', 0):.1f} %",
            f"{entry.get('avg_latency_ms', 0):,.1f} ms",
            f"{entry.get('p95_latency_ms', 0):,.1f} ms",
            str(entry.get("attempts", 0)),
            "" if score is None else f"{score:.1f}",
        )

    for layer in ("ipfs", "huggingface"):
        entry = health.get(layer, {})
        row(layer, entry)
        for gateway, gw_entry in entry.get("gateways", {}).items():
            row(f"  {gateway}", gw_entry)
    console = _console()
    console.print(table)
    cache = health.get("cache", {})
    console.print(
        f"cache hit rate {cache.get('hit_rate', 0):.1f} % "
        f"({cache.get('hits', 0)} hits, {cache.get('misses', 0)} misses)",
        markup=False,
    )
