"""The records' tables: their migrations, the values their columns accept, their time format."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Final

from ..events import AttemptEvent, ProgressEvent

MIGRATIONS: list[tuple[str, ...]] = [
    # version 1
    (
        """
        CREATE TABLE attempts (
            id               INTEGER PRIMARY KEY,
            ts_ms            INTEGER NOT NULL,          -- Unix time in ms, for range queries
            timestamp        TEXT    NOT NULL,          -- UTC ISO-8601 with ms and Z
            model            TEXT    NOT NULL,
            file             TEXT    NOT NULL,
            layer            TEXT CHECK (layer IN ('cache', 'ipfs', 'huggingface')),
            gateway          TEXT,
            status           TEXT    NOT NULL
                             CHECK (status IN ('hit', 'success', 'error', 'exhausted')),
            latency_ms       REAL,
            bytes_downloaded INTEGER NOT NULL DEFAULT 0,
            error_type       TEXT,
            error_message    TEXT
        )
        """,
        "CREATE INDEX attempts_by_time ON attempts (ts_ms)",
        "CREATE INDEX attempts_by_layer ON attempts (layer, ts_ms)",
        """
        CREATE TABLE downloads (
            id               INTEGER PRIMARY KEY,
            model            TEXT    NOT NULL,
            file             TEXT    NOT NULL,
            layer            TEXT,
            gateway          TEXT,
            status           TEXT    NOT NULL
                             CHECK (status IN ('pending', 'in_progress', 'success', 'failed')),
            downloaded_bytes INTEGER NOT NULL DEFAULT 0,
            total_bytes      INTEGER,
            error_message    TEXT,
            started_at       TEXT    NOT NULL,
            completed_at     TEXT,
            updated_ms       INTEGER NOT NULL           -- last change, for pruning
        )
        """,
        "CREATE INDEX downloads_by_file ON downloads (model, file, status)",
        "CREATE INDEX downloads_by_time ON downloads (updated_ms)",
        """
        CREATE TABLE ipfs_cids (
            id               INTEGER PRIMARY KEY,
            cid              TEXT    NOT NULL,
            model_name       TEXT    NOT NULL,
            model_type       TEXT,
            model_hash       TEXT,
            gateway_url      TEXT,
            cached_at        TEXT    NOT NULL,
            last_accessed_at TEXT    NOT NULL,
            success_count    INTEGER NOT NULL DEFAULT 0,
            failure_count    INTEGER NOT NULL DEFAULT 0,
            UNIQUE (model_name, cid)
        )
        """,
        "CREATE INDEX ipfs_cids_by_model ON ipfs_cids (model_name, last_accessed_at)",
    ),
    # version 2: `attempts.ttfb_ms` (time to first byte, for origin scores) and the status
    # `skipped` (an origin or layer not asked, and why). A CHECK constraint cannot be
    # altered in SQLite, so the table is rebuilt, ids kept; `_migrate` runs all of it in one
    # transaction, so a failure leaves version 1 as it was.
    (
        """
        CREATE TABLE attempts_v2 (
            id               INTEGER PRIMARY KEY,
            ts_ms            INTEGER NOT NULL,          -- Unix time in ms, for range queries
            timestamp        TEXT    NOT NULL,          -- UTC ISO-8601 with ms and Z
            model            TEXT    NOT NULL,
            file             TEXT    NOT NULL,
            layer            TEXT CHECK (layer IN ('cache', 'ipfs', 'huggingface')),
            gateway          TEXT,
            status           TEXT    NOT NULL
                             CHECK (status IN ('hit', 'success', 'error', 'exhausted',
                                               'skipped')),
            latency_ms       REAL,
            bytes_downloaded INTEGER NOT NULL DEFAULT 0,
            error_type       TEXT,
            error_message    TEXT,
            ttfb_ms          REAL                       -- time to first byte, on success
        )
        """,
        "INSERT INTO attempts_v2 (id, ts_ms, timestamp, model, file, layer, gateway, status,"
        " latency_ms, bytes_downloaded, error_type, error_message)"
        " SELECT id, ts_ms, timestamp, model, file, layer, gateway, status,"
        " latency_ms, bytes_downloaded, error_type, error_message FROM attempts",
        "DROP TABLE attempts",  # its indexes go with it
        "ALTER TABLE attempts_v2 RENAME TO attempts",
        "CREATE INDEX attempts_by_time ON attempts (ts_ms)",
        "CREATE INDEX attempts_by_layer ON attempts (layer, ts_ms)",
        "CREATE INDEX attempts_by_gateway ON attempts (gateway, ts_ms)",  # the scores' query
    ),
]
"""Ordered schema migrations: applying `MIGRATIONS[i]` takes `user_version` from i to i + 1.

Append new entries; never edit a released one."""

SCHEMA_VERSION: Final = len(MIGRATIONS)

# -- the values the columns accept --------------------------------------------------------
# The one place that says which layers and statuses are recorded: the writer drops events
# outside these sets and the queries refuse other filters. They match the CHECK constraints
# of the latest schema; a migration that widens a constraint widens the set here with it.

NETWORK_LAYERS: Final = ("ipfs", "huggingface")
"""The layers that fetch over the network, the ones `summary()` and `health()` report."""

LAYERS: Final = frozenset({"cache", *NETWORK_LAYERS})
"""Every value of `attempts.layer` (NULL aside: the `exhausted` row of a file)."""

ATTEMPT_STATUSES: Final = frozenset({"hit", "success", "error", "exhausted", "skipped"})
"""Every value of `attempts.status` (`skipped` since schema version 2)."""

DOWNLOAD_STATUS: Final[dict[str, str]] = {
    "attempting": "pending",
    "downloading": "in_progress",
    "success": "success",
    "completed": "success",
    "error": "failed",
}
"""The `downloads.status` a `ProgressEvent.status` moves its file's row to."""


def is_recordable(event: AttemptEvent | ProgressEvent) -> bool:
    """True when the event's layer, status and timestamp fit the columns they go to."""
    if isinstance(event, AttemptEvent):
        return (
            event.status in ATTEMPT_STATUSES
            and (event.layer is None or event.layer in LAYERS)
            and isinstance(event.timestamp, datetime)
        )
    return event.status in DOWNLOAD_STATUS and isinstance(event.timestamp, int)


def check_layer(layer: str | None) -> None:
    """Raise ValueError unless `layer` is None or a recorded layer (a query's filter)."""
    if layer is not None and layer not in LAYERS:
        raise ValueError(f"layer {layer!r}: use one of {', '.join(sorted(LAYERS))}")


# -- time columns: `*_ms` are Unix milliseconds, text times are ISO-8601 UTC with ms and Z --

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def dt_to_ms(dt: datetime) -> int:
    """Exact Unix milliseconds of `dt` (a naive datetime is taken as UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def ms_to_iso(ms: int) -> str:
    """`2024-05-01T10:00:00.123Z`, the shape of JavaScript's `Date.toISOString()`."""
    dt = _EPOCH + timedelta(milliseconds=ms)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def now_ms() -> int:
    """The current Unix time in milliseconds."""
    return time.time_ns() // 1_000_000
