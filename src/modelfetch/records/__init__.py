"""Durable records of download attempts, downloads and IPFS CIDs in SQLite.

One SQLite file (normally `<models_dir>/.modelfetch/records.sqlite3`) holds three tables:

- `attempts`: one row per try of one layer for one file, as reported by the engine's
  `AttemptEvent`s (cache hits and misses, every gateway try, every hub try, and a final
  `exhausted` row when every layer failed). Source of `summary()`, `health()`, `attempts()`
  and of the origin scores (`modelfetch.scores`).
- `downloads`: one row per download of one file, kept current from `ProgressEvent`s.
- `ipfs_cids`: CIDs known for a model, with per-CID success and failure counts.

`Records` is the way in. Its `listener` only queues events; a background thread writes them
(`writer`: batching, throttled progress, what happens when the disk fails, pruning). Opening
never destroys data: a file it cannot use raises `StorageError` and is left untouched
(`database`). The modules, one concept each:

- `schema`: the tables, `MIGRATIONS`, which layers and statuses are recorded, time format
- `database`: checking, opening and migrating the file; reader connections; SQLite errors
- `writer`: the queue and the writer thread; `throttle`: coalescing progress updates
- `rows`: the row each event writes, the `downloads` row's states, pruning
- `queries`: attempts, downloads, summary
- `health`: `HealthRules` and the health of each layer and gateway (the rules are there)
- `cids`: the `ipfs_cids` table

What the engine must emit
-------------------------
- A cache lookup that finds a usable file: `AttemptEvent(layer="cache", status="hit")`.
- A cache lookup that finds nothing usable is a **miss**:
  `AttemptEvent(layer="cache", status="error", error_type="CacheMiss")` when the file is
  absent, or `error_type` = the verification error's name (`SizeMismatch`,
  `HashMismatch`, ...) when a present file was rejected (moved to `.bak`). Every cache row
  with status `error` counts as a miss: `cache.hit_rate = 100 * hits / (hits + misses)`.
- One `AttemptEvent(layer="ipfs"|"huggingface", status="success"|"error", gateway=<base
  URL actually used>, latency_ms=<duration of the try>, ttfb_ms=<time to first byte>)`
  per try.
- `AttemptEvent(layer, status="skipped", gateway=<origin or None>, error_message=<why>)`
  for a layer or origin not asked (no CID, no hub source, bytes that cannot be checked, an
  origin found down or distrusted earlier in the run). Health and scores leave these out;
  `summary()` counts them in `skipped`.
- `AttemptEvent(layer=None, status="exhausted")` when every layer failed for a file; it
  also closes that file's failed `downloads` row (a later `attempting` starts a new row).

Events whose layer or status is not one of `schema`'s are dropped (counted in
`dropped_events`, logged once).

Example::

    records = Records(models_dir / ".modelfetch" / "records.sqlite3")
    engine.add_listener(records.listener)
    ...
    records.flush()
    print(records.health()["ipfs"]["status"])
    records.close()
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from ..errors import StorageError
from ..events import Event
from . import cids, health, queries, rows
from .database import open_and_migrate, reader
from .health import HealthRules
from .schema import MIGRATIONS, ms_to_iso, now_ms
from .writer import Writer

__all__ = [
    "MIGRATIONS",
    "HealthRules",
    "Records",
    "open_records",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Records:
    """Durable records of attempts, downloads and IPFS CIDs in one SQLite file.

    Parameters:
        path: the database file, normally `<models_dir>/.modelfetch/records.sqlite3`;
            missing parent directories are created.
        retention: how long attempts and download rows are kept (and the window of
            `summary()` and `health()`).
        progress_interval: at most one progress UPDATE per file per this many seconds.
        prune_every: seconds between automatic prunes in the writer thread.
        health_rules: thresholds of `health()`.

    Raises:
        StorageError: the file is not a usable records database (not SQLite, damaged,
            unreadable or unwritable, or from a newer modelfetch). It is left untouched.

    Example::

        with Records(tmp / "records.sqlite3") as records:
            records.listener(AttemptEvent("whisper-base", "config.json", "cache", "hit"))
            records.flush()
            assert records.summary()["cache_hits"] == 1
    """

    def __init__(
        self,
        path: Path,
        *,
        retention: timedelta = timedelta(hours=24),
        progress_interval: float = 0.5,
        prune_every: float = 300.0,
        health_rules: HealthRules | None = None,
    ) -> None:
        if retention <= timedelta(0):
            raise ValueError("retention must be positive")
        self.path = Path(path).absolute()
        self.retention = retention
        self.progress_interval = progress_interval
        self.prune_every = prune_every
        self.health_rules = health_rules or HealthRules()
        # The list `modelfetch.records.MIGRATIONS` names when a Records is made is the one
        # applied (the migration tests put a longer one there).
        open_and_migrate(self.path, MIGRATIONS)
        self._writer = Writer(
            self.path,
            retention=retention,
            progress_interval=progress_interval,
            prune_every=prune_every,
        )

    # -- writing ------------------------------------------------------------------------

    @property
    def dropped_events(self) -> int:
        """Events not recorded (queue full, invalid, or writing failed); 0 normally."""
        return self._writer.dropped

    def listener(self, event: Event) -> None:
        """Queue `event` for writing; never blocks on disk, never raises (a `Listener`)."""
        self._writer.put(event)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued before this call is written (or has failed).

        Returns False when `timeout` seconds passed first. Pending throttled progress
        updates are written too.
        """
        return self._writer.flush(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Write everything queued, then stop the writer thread. Idempotent."""
        self._writer.close(timeout)

    def __enter__(self) -> Records:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Records({str(self.path)!r}, retention={self.retention!r})"

    def _call(self, fn: Callable[[sqlite3.Connection], T], *, transaction: bool = True) -> T:
        """Run `fn(conn)` in the writer thread, after everything queued; its result."""
        return self._writer.call(fn, transaction=transaction)

    # -- maintenance --------------------------------------------------------------------

    def prune(self) -> int:
        """Delete attempts and download rows older than `retention`; return how many.

        The writer thread also does this by itself periodically.
        """
        return int(self._call(self._writer.prune))

    def reset(self) -> None:
        """Forget every attempt and every finished download (running ones stay).

        Events queued before the call are written first, then deleted with the rest.
        """
        self._call(rows.reset)

    # -- IPFS CIDs ----------------------------------------------------------------------

    def upsert_cid(
        self,
        model: str,
        cid: str,
        *,
        model_type: str | None = None,
        model_hash: str | None = None,
        gateway_url: str | None = None,
    ) -> None:
        """Record that `model` is available under `cid` (one row per model and CID).

        A known pair keeps its counters; given fields replace stored ones and
        `last_accessed_at` is set to now, so `cid_for_model` returns this CID next.
        Raises StorageError when the database cannot be written.
        """
        if not cid or not model:
            raise ValueError("upsert_cid needs a model name and a CID")
        now = ms_to_iso(now_ms())
        self._call(
            lambda conn: cids.upsert(
                conn,
                model,
                cid,
                model_type=model_type,
                model_hash=model_hash,
                gateway_url=gateway_url,
                now=now,
            )
        )

    def record_cid_fetch(
        self, model: str, cid: str, ok: bool, gateway_url: str | None = None
    ) -> None:
        """Count one fetch of `cid` for `model` through `gateway_url`; never blocks or raises.

        A success bumps `success_count`, sets `gateway_url` to the gateway that served it
        and `last_accessed_at` to now; a failure bumps `failure_count` only, so a CID
        that keeps failing does not become the one `cid_for_model` prefers. An unknown
        pair is added. Written by the writer thread (see `flush()`).
        """
        now = ms_to_iso(now_ms())
        try:
            self._writer.submit(
                lambda conn: cids.count_fetch(
                    conn, model, cid, ok=ok, gateway_url=gateway_url, now=now
                ),
                wait=False,
            )
        except Exception:
            logger.debug("records: CID fetch not recorded", exc_info=True)

    def cid_for_model(self, model: str, model_type: str | None = None) -> str | None:
        """The CID of `model` used most recently (newest `last_accessed_at`), or None."""
        with reader(self.path) as conn:
            return cids.latest_cid(conn, model, model_type)

    def cids(self, model: str | None = None) -> list[dict[str, Any]]:
        """Every known CID row (optionally of one model), most recently used first."""
        with reader(self.path) as conn:
            return cids.rows(conn, model)

    # -- queries ------------------------------------------------------------------------

    def attempts(
        self,
        since: datetime | None = None,
        layer: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Recorded attempts, newest first, in the original metrics record shape.

        Parameters:
            since: only attempts at or after this time (naive = UTC).
            layer: only `cache`, `ipfs` or `huggingface` attempts.
            limit: at most this many rows.

        Each row: `timestamp` (ISO-8601 UTC with Z), `model`, `file`, `layer`, `gateway`,
        `status`, `latency_ms` (float or None), `bytes_downloaded` (int), `error_type`,
        `error_message`, `ttfb_ms` (time to first byte of a success, or None). Only what
        is written is seen: `flush()` first if needed.
        """
        with reader(self.path) as conn:
            return queries.attempts(conn, since, layer, limit)

    def downloads(self, active_only: bool = False) -> list[dict[str, Any]]:
        """Download rows, newest first; `active_only` keeps `pending` and `in_progress`.

        Each row: `id`, `model`, `file`, `layer`, `gateway`, `status`,
        `downloaded_bytes`, `total_bytes`, `error_message`, `started_at`, `completed_at`.
        """
        with reader(self.path) as conn:
            return queries.downloads(conn, active_only)

    def summary(self) -> dict[str, Any]:
        """Counts over the retention window, in the original `/summary` shape.

        `{"total", "cache_hits", "ipfs": {"success", "error", "avg_latency"},
        "huggingface": {...}}` plus `cache_misses`, `exhausted`, `skipped` (layers and
        origins not asked; not in `total`), `bytes_downloaded` and `window_hours`.
        `avg_latency` is the mean latency (ms) of successes, 0 when none.
        """
        with reader(self.path) as conn:
            return queries.summary(conn, self._cutoff_ms(), self.retention / timedelta(hours=1))

    def health(self) -> dict[str, Any]:
        """Health of each layer and gateway over the retention window (rules: `health`).

        `{"ipfs": {"status", "success_rate", "avg_latency_ms", "p95_latency_ms",
        "attempts", "gateways": {url: {same but gateways}}}, "huggingface": {...},
        "cache": {"hit_rate", "hits", "misses", "lookups"}}`; rates are numbers 0-100.
        """
        with reader(self.path) as conn:
            return health.report(conn, self._cutoff_ms(), self.health_rules)

    def recent_outcomes(
        self, per_origin: int = queries.OUTCOMES_PER_ORIGIN
    ) -> list[tuple[str, str, bool, int, float | None, int, float | None]]:
        """Each network origin's newest successes and failures in the window, oldest first.

        Rows `(gateway, layer, ok, ts_ms, latency_ms, bytes_downloaded, ttfb_ms)`: what
        `modelfetch.scores.Scores.load` reads (one query).
        """
        with reader(self.path) as conn:
            return queries.recent_outcomes(conn, self._cutoff_ms(), per_origin)

    def _cutoff_ms(self) -> int:
        """The oldest time, in Unix ms, inside the retention window."""
        return now_ms() - self.retention // timedelta(milliseconds=1)


def open_records(path: Path, *, retention: timedelta) -> Records | None:
    """The records at `path`, or None (with a warning) when they cannot be opened: a pull
    goes on without its records rather than fail for them."""
    try:
        return Records(path, retention=retention)
    except StorageError as exc:
        logger.warning("download records are off: %s", exc)
        return None
