"""Durable records of download attempts, downloads and IPFS CIDs in SQLite.

One SQLite file (normally `<models_dir>/.modelfetch/records.sqlite3`) holds three tables:

- `attempts`: one row per try of one layer for one file, as reported by the engine's
  `AttemptEvent`s (cache hits and misses, every gateway try, every hub try, and a final
  `exhausted` row when every layer failed). Source of `summary()`, `health()`, `attempts()`.
- `downloads`: one row per download of one file, kept current from `ProgressEvent`s.
- `ipfs_cids`: CIDs known for a model, with per-CID success and failure counts.

How it is written
-----------------
`Records.listener` is an engine `Listener`. It only puts the event on an in-memory queue
and returns: it never touches the disk and never raises. One background thread per
`Records` writes the queue in short batched transactions (`BEGIN IMMEDIATE`, WAL mode,
10 s busy timeout, retried when another process holds the lock), so several processes can
share one file. Progress updates of a transfer are coalesced to at most one UPDATE per
file per `progress_interval` (0.5 s); the final state of a download is always written.
When writing fails at runtime (disk full, file made read-only, damaged) one warning is
logged, the affected records are dropped and counted in `dropped_events`, and downloads go
on. `flush()` waits until everything queued so far is written; `close()` flushes and stops.
Rows older than `retention` (24 h) are pruned by the writer thread at start, every
`prune_every` seconds (300) and every 1000 inserted attempts; `prune()` does it at once.

Opening never destroys data: a file that is not a SQLite database, is damaged, cannot be
read or written, or was written by a newer modelfetch (a higher `PRAGMA user_version`)
raises `StorageError` naming the file and saying to move it aside; the file is left
byte-for-byte as it was. Older schema versions are migrated in one transaction by the
ordered `MIGRATIONS`.

What the engine must emit
-------------------------
- A cache lookup that finds a usable file: `AttemptEvent(layer="cache", status="hit")`.
- A cache lookup that finds nothing usable is a **miss**:
  `AttemptEvent(layer="cache", status="error", error_type="CacheMiss")` when the file is
  absent, or `error_type` = the verification error's name (`SizeMismatch`,
  `HashMismatch`, ...) when a present file was rejected (moved to `.bak`). Every cache row
  with status `error` counts as a miss: `cache.hit_rate = 100 * hits / (hits + misses)`.
- One `AttemptEvent(layer="ipfs"|"huggingface", status="success"|"error", gateway=<base
  URL actually used>, latency_ms=<duration of the try>)` per try; a skipped layer (no CID,
  no hub source) emits nothing.
- `AttemptEvent(layer=None, status="exhausted")` when every layer failed for a file; it
  also closes that file's failed `downloads` row (a later `attempting` starts a new row).

Health rules (`health()`, over the retention window; `HealthRules` holds the numbers)
--------------------------------------------------------------------------------
For each layer `ipfs` and `huggingface`, and for each gateway (IPFS gateway base URL, hub
base URL as recorded in `gateway`), over its `success`/`error` attempts:

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
nearest-rank 95th percentile over successful attempts (0 when there is none).

Example::

    records = Records(models_dir / ".modelfetch" / "records.sqlite3")
    engine.add_listener(records.listener)
    ...
    records.flush()
    print(records.health()["ipfs"]["status"])
    records.close()
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from .errors import DiskFull, ReadOnly, StorageError
from .events import AttemptEvent, Event, ProgressEvent

__all__ = [
    "MIGRATIONS",
    "HealthRules",
    "Records",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# -- schema -----------------------------------------------------------------------------

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
]
"""Ordered schema migrations: applying `MIGRATIONS[i]` takes `user_version` from i to i + 1.

Append new entries; never edit a released one."""

SCHEMA_VERSION: Final = len(MIGRATIONS)

BUSY_TIMEOUT_S: Final = 10.0
_BUSY_RETRIES: Final = 5
_BATCH_MAX: Final = 1000
_QUEUE_MAX: Final = 100_000
_PRUNE_EVERY_INSERTS: Final = 1000
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"

_LAYERS: Final = frozenset({"cache", "ipfs", "huggingface"})
_ATTEMPT_STATUSES: Final = frozenset({"hit", "success", "error", "exhausted"})
_HEALTH_LAYERS: Final = ("ipfs", "huggingface")

# SQLite primary result codes (sqlite3.Error.sqlite_errorcode & 0xFF)
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED = 3, 5, 6
_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CORRUPT = 8, 10, 11
_SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 13, 14, 26


@dataclass(frozen=True)
class HealthRules:
    """The thresholds `Records.health()` applies (see the module docstring)."""

    min_attempts: int = 3
    down_below_rate: float = 20.0
    down_after_failures: int = 3
    degraded_below_rate: float = 90.0
    degraded_p95_ms: float = 30_000.0


# -- time helpers -------------------------------------------------------------------------

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _dt_to_ms(dt: datetime) -> int:
    """Exact Unix milliseconds of `dt` (a naive datetime is taken as UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def _ms_to_iso(ms: int) -> str:
    """`2024-05-01T10:00:00.123Z`, the shape of JavaScript's `Date.toISOString()`."""
    dt = _EPOCH + timedelta(milliseconds=ms)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- writer queue items -------------------------------------------------------------------


@dataclass
class _Call:
    """Run `fn(conn)` in the writer thread (in a transaction unless told not to)."""

    fn: Callable[[sqlite3.Connection], Any] | None
    future: Future[Any]
    transaction: bool = True
    wait: bool = True  # False: nobody waits, so failures are logged


_STOP: Final = object()


@dataclass(frozen=True)
class _Row:
    """The writer's memory of one file's current `downloads` row."""

    id: int
    state: Literal["open", "succeeded", "closed"]


def _errcode(exc: BaseException) -> int:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else -1


def _is_busy(exc: BaseException) -> bool:
    if _errcode(exc) in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return True
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text


def _retry_busy(fn: Callable[[], T], *, tries: int = _BUSY_RETRIES) -> T:
    """Call `fn`, again after a pause while SQLite says another connection holds a lock."""
    for attempt in range(tries):
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or attempt == tries - 1:
                raise
            time.sleep(min(2.0, 0.05 * 2**attempt))
    raise AssertionError("unreachable")  # pragma: no cover


def _percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of `values` (0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return float(ordered[rank - 1])


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

        self._open_and_migrate()

        self._queue: queue.Queue[object] = queue.Queue(maxsize=_QUEUE_MAX)
        self._closed = False
        self._close_lock = threading.Lock()
        self._dropped = 0
        self._queue_full_warned = False
        self._listener_warned = False
        # writer-thread state
        self._conn: sqlite3.Connection | None = None
        self._write_warned = False
        self._invalid_warned = False
        self._rows: dict[tuple[str, str], _Row] = {}
        self._pending: dict[tuple[str, str], ProgressEvent] = {}
        self._last_progress: dict[tuple[str, str], float] = {}
        self._inserts_since_prune = 0

        self._thread = threading.Thread(
            target=self._run, name=f"modelfetch-records-{self.path.name}", daemon=True
        )
        self._thread.start()
        atexit.register(self.close)

    # -- opening ------------------------------------------------------------------------

    def _fail(
        self, what: str, exc: BaseException | None = None, *, advice: str | None = None
    ) -> StorageError:
        """A StorageError naming the file, what is wrong and what to do about it."""
        code = _errcode(exc) if exc is not None else -1
        said = f"records database {self.path} {what}" + (f": {exc}" if exc is not None else "")
        aside = f"mv '{self.path}' '{self.path}.broken'"
        if code == _SQLITE_FULL:
            return DiskFull(f"{said}. Free some disk space and try again.")
        if code in (_SQLITE_READONLY, _SQLITE_PERM) or isinstance(exc, PermissionError):
            return ReadOnly(
                f"{said}. Make the file and its directory readable and writable by this user, "
                f"or move the file aside ({aside}) and a new one is created on the next run."
            )
        advice = advice or (
            f"Move it aside ({aside}) and a new one is created on the next run "
            "(the records in the old file are then no longer shown)."
        )
        return StorageError(f"{said}. The file was left untouched. {advice}")

    def _connect(self, *, create: bool = False) -> sqlite3.Connection:
        mode = "rwc" if create else "rw"
        conn = sqlite3.connect(
            f"{self.path.as_uri()}?mode={mode}",
            uri=True,
            timeout=BUSY_TIMEOUT_S,
            isolation_level=None,  # autocommit: transactions are explicit and short
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA synchronous = FULL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_file(self) -> None:
        """Refuse, without changing a byte, a path that is not a readable SQLite file."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._fail("cannot create its directory", exc) from exc
        if not os.path.lexists(self.path):
            return
        if not self.path.is_file():
            raise self._fail("exists but is not a regular file")
        try:
            with self.path.open("rb") as fh:
                header = fh.read(len(_SQLITE_MAGIC))
        except OSError as exc:
            raise self._fail("cannot be read", exc) from exc
        if header and header != _SQLITE_MAGIC:
            raise self._fail("is not a SQLite database (damaged or another file)")
        if not os.access(self.path, os.R_OK | os.W_OK):
            raise self._fail("is not writable", PermissionError(13, "Permission denied"))

    def _open_and_migrate(self) -> None:
        self._check_file()
        try:
            conn = self._connect(create=True)
        except sqlite3.Error as exc:
            raise self._fail("cannot be opened", exc) from exc
        try:
            # Read-only checks first: nothing is written to a file we refuse.
            version = self._inspect(conn)
            latest = len(MIGRATIONS)
            if version > latest:
                raise self._fail(
                    f"was written by a newer modelfetch (schema version {version}; this "
                    f"version knows versions up to {latest})",
                    advice=f"Upgrade modelfetch to use it, or move it aside "
                    f"(mv '{self.path}' '{self.path}.newer') to start a new one.",
                )
            try:
                mode = _retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
                if str(mode).lower() != "wal":
                    logger.warning(
                        "records database %s: WAL mode unavailable (journal_mode=%s); "
                        "writes from several processes will wait for each other longer",
                        self.path,
                        mode,
                    )
                if version < latest:
                    _retry_busy(lambda: self._migrate(conn))
            except sqlite3.Error as exc:
                raise self._fail("cannot be prepared (migration failed)", exc) from exc
        finally:
            conn.close()

    def _inspect(self, conn: sqlite3.Connection) -> int:
        """Schema version of a readable, undamaged database; StorageError otherwise."""
        try:
            version = int(_retry_busy(lambda: conn.execute("PRAGMA user_version").fetchone()[0]))
            result = _retry_busy(lambda: conn.execute("PRAGMA quick_check(1)").fetchone()[0])
        except sqlite3.Error as exc:
            raise self._fail("is damaged or not a SQLite database", exc) from exc
        if result != "ok":
            raise self._fail(f"is damaged (integrity check: {result})")
        return version

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Apply every pending migration in one transaction (another process may race)."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            latest = len(MIGRATIONS)
            for steps in MIGRATIONS[version:]:
                for sql in steps:
                    conn.execute(sql)
            if version < latest:
                conn.execute(f"PRAGMA user_version = {latest}")
            conn.execute("COMMIT")
        except BaseException:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    # -- the listener and the writer thread --------------------------------------------

    @property
    def dropped_events(self) -> int:
        """Events not recorded (queue full, or writing failed); 0 normally."""
        return self._dropped

    def listener(self, event: Event) -> None:
        """Queue `event` for writing; never blocks on disk, never raises (a `Listener`)."""
        try:
            if self._closed or not isinstance(event, AttemptEvent | ProgressEvent):
                return
            self._queue.put_nowait(event)
        except queue.Full:
            self._dropped += 1
            if not self._queue_full_warned:
                self._queue_full_warned = True
                logger.warning(
                    "records database %s: the write queue is full (the disk is too slow or "
                    "blocked); download records are being dropped, downloads go on",
                    self.path,
                )
        except Exception:  # records must never break a download
            if not self._listener_warned:
                self._listener_warned = True
                logger.warning("records: could not queue an event", exc_info=True)

    def _submit(
        self,
        fn: Callable[[sqlite3.Connection], Any] | None,
        *,
        transaction: bool = True,
        wait: bool = True,
    ) -> Future[Any]:
        if self._closed:
            raise StorageError(f"records database {self.path}: already closed")
        call = _Call(fn, Future(), transaction=transaction, wait=wait)
        self._queue.put(call)
        return call.future

    def _call(self, fn: Callable[[sqlite3.Connection], T], *, transaction: bool = True) -> T:
        result: T = self._submit(fn, transaction=transaction).result()
        return result

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued before this call is written (or has failed).

        Returns False when `timeout` seconds passed first. Pending throttled progress
        updates are written too.
        """
        if self._closed:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        future = self._submit(None)
        try:
            future.result(timeout)
        except TimeoutError:
            return False
        return True

    def close(self, timeout: float | None = 30.0) -> None:
        """Write everything queued, then stop the writer thread. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.close)
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            logger.warning("records database %s: writer not responding at close", self.path)
            return
        self._thread.join(timeout)

    def __enter__(self) -> Records:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Records({str(self.path)!r}, retention={self.retention!r})"

    def _run(self) -> None:
        """The writer thread: batch queued items into short transactions until `_STOP`."""
        next_prune = time.monotonic()  # prune once at start
        while True:
            items: list[object] = []
            try:
                if time.monotonic() >= next_prune:
                    self._auto_prune()
                    next_prune = time.monotonic() + self.prune_every
                deadline = next_prune
                for key in self._pending:
                    deadline = min(deadline, self._last_progress[key] + self.progress_interval)
                try:
                    items.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                    while len(items) < _BATCH_MAX:
                        items.append(self._queue.get_nowait())
                except queue.Empty:
                    pass
                if self._process(items):
                    return
                if self._inserts_since_prune >= _PRUNE_EVERY_INSERTS:
                    next_prune = time.monotonic()
            except Exception as exc:  # keep the writer alive whatever happens
                logger.exception("records database %s: writer error", self.path)
                for item in items:
                    if isinstance(item, _Call) and not item.future.done():
                        item.future.set_exception(exc)
                time.sleep(0.1)

    def _process(self, items: list[object]) -> bool:
        """Write a batch of queue items in order; True when told to stop."""
        staged: list[Event] = []
        for item in items:
            if isinstance(item, AttemptEvent | ProgressEvent):
                self._stage(item, staged)
            elif isinstance(item, _Call):
                if item.fn is None:  # flush barrier: throttled progress too
                    self._stage_pending(staged, everything=True)
                self._write(staged)
                staged = []
                self._run_call(item)
            elif item is _STOP:
                self._stage_pending(staged, everything=True)
                self._write(staged)
                self._stop()
                return True
        self._stage_pending(staged, everything=False)
        self._write(staged)
        return False

    def _stop(self) -> None:
        """Close the connection; fail calls that raced with `close()`."""
        if self._conn is not None:
            with suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Call) and not item.future.done():
                item.future.set_exception(
                    StorageError(f"records database {self.path}: already closed")
                )

    # staging: validation and progress throttling

    def _stage(self, event: AttemptEvent | ProgressEvent, staged: list[Event]) -> None:
        if isinstance(event, AttemptEvent):
            if (
                event.status not in _ATTEMPT_STATUSES
                or (event.layer is not None and event.layer not in _LAYERS)
                or not isinstance(event.timestamp, datetime)
            ):
                self._invalid(event)
                return
            staged.append(event)
            return
        if event.status not in _PROGRESS_STATUS or not isinstance(event.timestamp, int):
            self._invalid(event)
            return
        if event.source == "cache" or not event.file:
            return  # cache lookups are attempts, not downloads
        key = (event.model, event.file)
        if event.status == "downloading":
            last = self._last_progress.get(key)
            now = time.monotonic()
            if key not in self._pending and (last is None or now - last >= self.progress_interval):
                self._last_progress[key] = now
                staged.append(event)
            else:
                self._pending[key] = event
                self._last_progress.setdefault(key, now)
            return
        pending = self._pending.pop(key, None)
        if pending is not None:
            staged.append(pending)
        self._last_progress.pop(key, None)
        staged.append(event)

    def _stage_pending(self, staged: list[Event], *, everything: bool) -> None:
        now = time.monotonic()
        for key in list(self._pending):
            if everything or now - self._last_progress[key] >= self.progress_interval:
                staged.append(self._pending.pop(key))
                self._last_progress[key] = now

    # writing

    def _invalid(self, event: Event) -> None:
        self._dropped += 1
        if not self._invalid_warned:
            self._invalid_warned = True
            logger.warning("records: ignoring an invalid event (logged once): %r", event)

    def _drop(self, count: int, why: str) -> None:
        self._dropped += count
        self._warn(f"{why}; {count} record(s) dropped")

    def _writer_conn(self) -> sqlite3.Connection | None:
        if self._conn is None:
            try:
                self._conn = self._connect()
            except sqlite3.Error as exc:
                self._warn(f"cannot be opened for writing ({exc})")
                return None
        return self._conn

    def _write(self, events: list[Event]) -> None:
        if not events:
            return
        conn = self._writer_conn()
        if conn is None:
            self._drop(len(events), "no connection")
            return
        snapshot = dict(self._rows)

        def transaction() -> int:
            self._rows = dict(snapshot)
            conn.execute("BEGIN IMMEDIATE")
            try:
                inserted = 0
                for event in events:
                    if isinstance(event, AttemptEvent):
                        self._insert_attempt(conn, event)
                        inserted += 1
                    else:
                        self._apply_progress(conn, event)
                conn.execute("COMMIT")
                return inserted
            except BaseException:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

        try:
            inserted = _retry_busy(transaction)
        except (sqlite3.Error, ValueError, TypeError, OverflowError) as exc:
            self._rows = snapshot
            self._drop(len(events), f"writing failed ({type(exc).__name__}: {exc})")
            return
        self._inserts_since_prune += inserted
        if self._write_warned:
            self._write_warned = False
            logger.info("records database %s: writing works again", self.path)
        if len(self._rows) > 10_000:
            self._rows = {k: r for k, r in self._rows.items() if r.state == "open"}

    def _insert_attempt(self, conn: sqlite3.Connection, ev: AttemptEvent) -> None:
        ms = _dt_to_ms(ev.timestamp)
        conn.execute(
            "INSERT INTO attempts (ts_ms, timestamp, model, file, layer, gateway, status,"
            " latency_ms, bytes_downloaded, error_type, error_message)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ms,
                _ms_to_iso(ms),
                str(ev.model),
                str(ev.file),
                ev.layer,
                _str_or_none(ev.gateway),
                ev.status,
                None if ev.latency_ms is None else float(ev.latency_ms),
                int(ev.bytes_downloaded or 0),
                _str_or_none(ev.error_type),
                _str_or_none(ev.error_message),
            ),
        )
        if ev.status != "exhausted":
            return
        # Every layer failed: the file's download row is finished, as failed.
        key = (ev.model, ev.file)
        row = self._rows.get(key)
        if row is None or row.state != "open":
            return
        conn.execute(
            "UPDATE downloads SET status = 'failed',"
            " error_message = CASE WHEN status = 'failed' AND error_message IS NOT NULL"
            "   THEN error_message ELSE COALESCE(?, 'all download layers exhausted') END,"
            " completed_at = COALESCE(completed_at, ?), updated_ms = MAX(updated_ms, ?)"
            " WHERE id = ? AND status != 'success'",
            (_str_or_none(ev.error_message), _ms_to_iso(ms), ms, row.id),
        )
        self._rows[key] = _Row(row.id, "closed")

    def _apply_progress(self, conn: sqlite3.Connection, ev: ProgressEvent) -> None:
        """Move the file's `downloads` row to the state `ev` reports (writer thread)."""
        key = (ev.model, ev.file)
        status = _PROGRESS_STATUS[ev.status]
        ms = int(ev.timestamp)
        iso = _ms_to_iso(ms)
        layer = str(ev.source)
        gateway = _str_or_none(ev.gateway)
        nbytes = int(ev.bytes_downloaded or 0)
        total = None if ev.total_bytes is None else int(ev.total_bytes)
        error = (_str_or_none(ev.error) or "download failed") if status == "failed" else None

        row = self._rows.get(key)
        if row is not None and (
            row.state == "open" or (status == "success" and row.state == "succeeded")
        ):
            # The gateway stays when an event of the same layer does not name one.
            common = (
                "gateway = CASE WHEN layer IS ? THEN COALESCE(?, gateway) ELSE ? END,"
                " layer = ?, total_bytes = COALESCE(?, total_bytes), updated_ms = ?"
            )
            common_args: tuple[Any, ...] = (layer, gateway, gateway, layer, total, ms)
            if status in ("pending", "in_progress"):
                cur = conn.execute(
                    f"UPDATE downloads SET status = ?, {common}, downloaded_bytes = ?,"
                    " completed_at = NULL WHERE id = ?",
                    (status, *common_args, nbytes, row.id),
                )
            elif status == "success":
                cur = conn.execute(
                    f"UPDATE downloads SET {common},"
                    " downloaded_bytes = MAX(?, downloaded_bytes), error_message = NULL,"
                    " completed_at = CASE WHEN status = 'success' AND completed_at IS NOT NULL"
                    " THEN completed_at ELSE ? END, status = 'success' WHERE id = ?",
                    (*common_args, nbytes, iso, row.id),
                )
            else:
                cur = conn.execute(
                    f"UPDATE downloads SET status = 'failed', {common},"
                    " downloaded_bytes = MAX(?, downloaded_bytes), error_message = ?,"
                    " completed_at = ? WHERE id = ?",
                    (*common_args, nbytes, error, iso, row.id),
                )
            if cur.rowcount:
                self._rows[key] = _Row(row.id, "succeeded" if status == "success" else "open")
                return
            # The row was pruned or reset meanwhile: start a new one.

        # A new download of this file: a row another run left unfinished is stale now
        # (cross-process locks let only one downloader work on a file at a time).
        conn.execute(
            "UPDATE downloads SET status = 'failed', error_message = ?, completed_at = ?,"
            " updated_ms = ? WHERE model = ? AND file = ? AND status IN ('pending', 'in_progress')",
            (_INTERRUPTED, iso, ms, ev.model, ev.file),
        )
        final = status in ("success", "failed")
        cur = conn.execute(
            "INSERT INTO downloads (model, file, layer, gateway, status, downloaded_bytes,"
            " total_bytes, error_message, started_at, completed_at, updated_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ev.model,
                ev.file,
                layer,
                gateway,
                status,
                nbytes,
                total,
                error,
                iso,
                iso if final else None,
                ms,
            ),
        )
        row_id = cur.lastrowid
        assert row_id is not None
        self._rows[key] = _Row(row_id, "succeeded" if status == "success" else "open")

    def _warn(self, why: str) -> None:
        if not self._write_warned:
            self._write_warned = True
            logger.warning(
                "records database %s: %s (downloads are not affected; further failures are "
                "not logged until writing works again)",
                self.path,
                why,
            )

    def _run_call(self, call: _Call) -> None:
        future = call.future
        fn = call.fn
        if fn is None:  # a flush barrier: everything before it is written
            future.set_result(None)
            return
        conn = self._writer_conn()
        if conn is None:
            future.set_exception(self._fail("cannot be opened for writing"))
            return

        def run() -> Any:
            if not call.transaction:
                return fn(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            return result

        try:
            result = _retry_busy(run)
        except sqlite3.Error as exc:
            if not call.wait:
                self._warn(f"writing failed ({type(exc).__name__}: {exc})")
            future.set_exception(self._runtime_error(exc))
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)

    def _runtime_error(self, exc: sqlite3.Error) -> StorageError:
        code = _errcode(exc)
        where = f"records database {self.path}"
        if code == _SQLITE_FULL:
            return DiskFull(f"{where}: {exc}. Free some disk space.")
        if code in (_SQLITE_READONLY, _SQLITE_PERM, _SQLITE_CANTOPEN):
            return ReadOnly(f"{where}: {exc}. Make the file and its directory writable.")
        if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            return self._fail("is damaged", exc)
        return StorageError(f"{where}: {exc}")

    def _auto_prune(self) -> None:
        self._inserts_since_prune = 0
        conn = self._writer_conn()
        if conn is None:
            return
        call = _Call(self._prune_in, Future(), wait=False)
        self._run_call(call)
        with suppress(Exception):
            deleted = call.future.result(0)
            if deleted:
                logger.debug("records database %s: pruned %d old rows", self.path, deleted)

    def _prune_in(self, conn: sqlite3.Connection) -> int:
        cutoff = _now_ms() - self._retention_ms
        deleted = conn.execute("DELETE FROM attempts WHERE ts_ms < ?", (cutoff,)).rowcount
        deleted += conn.execute("DELETE FROM downloads WHERE updated_ms < ?", (cutoff,)).rowcount
        return int(deleted)

    @property
    def _retention_ms(self) -> int:
        return self.retention // timedelta(milliseconds=1)

    # -- maintenance --------------------------------------------------------------------

    def prune(self) -> int:
        """Delete attempts and download rows older than `retention`; return how many.

        The writer thread also does this by itself periodically.
        """
        return int(self._call(self._prune_in))

    def reset(self) -> None:
        """Forget every attempt and every finished download (running ones stay).

        Events queued before the call are written first, then deleted with the rest.
        """

        def reset(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM attempts")
            conn.execute("DELETE FROM downloads WHERE status IN ('success', 'failed')")

        self._call(reset)

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
        now = _ms_to_iso(_now_ms())

        def upsert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO ipfs_cids (cid, model_name, model_type, model_hash, gateway_url,"
                " cached_at, last_accessed_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (model_name, cid) DO UPDATE SET"
                " model_type = COALESCE(excluded.model_type, model_type),"
                " model_hash = COALESCE(excluded.model_hash, model_hash),"
                " gateway_url = COALESCE(excluded.gateway_url, gateway_url),"
                " last_accessed_at = excluded.last_accessed_at",
                (cid, model, model_type, model_hash, gateway_url, now, now),
            )

        self._call(upsert)

    def record_cid_fetch(
        self, model: str, cid: str, ok: bool, gateway_url: str | None = None
    ) -> None:
        """Count one fetch of `cid` for `model` through `gateway_url`; never blocks or raises.

        A success bumps `success_count`, sets `gateway_url` to the gateway that served it
        and `last_accessed_at` to now; a failure bumps `failure_count` only, so a CID
        that keeps failing does not become the one `cid_for_model` prefers. An unknown
        pair is added. Written by the writer thread (see `flush()`).
        """
        now = _ms_to_iso(_now_ms())
        good, bad = (1, 0) if ok else (0, 1)

        def record(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO ipfs_cids (cid, model_name, gateway_url, cached_at,"
                " last_accessed_at, success_count, failure_count) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (model_name, cid) DO UPDATE SET"
                " success_count = success_count + excluded.success_count,"
                " failure_count = failure_count + excluded.failure_count,"
                " gateway_url = CASE WHEN excluded.success_count > 0"
                "   THEN COALESCE(excluded.gateway_url, gateway_url) ELSE gateway_url END,"
                " last_accessed_at = CASE WHEN excluded.success_count > 0"
                "   THEN excluded.last_accessed_at ELSE last_accessed_at END",
                (cid, model, gateway_url if ok else None, now, now, good, bad),
            )

        try:
            self._submit(record, wait=False)
        except Exception:
            logger.debug("records: CID fetch not recorded", exc_info=True)

    def cid_for_model(self, model: str, model_type: str | None = None) -> str | None:
        """The CID of `model` used most recently (newest `last_accessed_at`), or None."""
        sql = "SELECT cid FROM ipfs_cids WHERE model_name = ?"
        args: list[Any] = [model]
        if model_type is not None:
            sql += " AND model_type = ?"
            args.append(model_type)
        sql += " ORDER BY last_accessed_at DESC, id DESC LIMIT 1"
        with self._reader() as conn:
            row = conn.execute(sql, args).fetchone()
        return None if row is None else str(row[0])

    def cids(self, model: str | None = None) -> list[dict[str, Any]]:
        """Every known CID row (optionally of one model), most recently used first."""
        sql = (
            "SELECT id, cid, model_name, model_type, model_hash, gateway_url, cached_at,"
            " last_accessed_at, success_count, failure_count FROM ipfs_cids"
        )
        args: list[Any] = []
        if model is not None:
            sql += " WHERE model_name = ?"
            args.append(model)
        sql += " ORDER BY last_accessed_at DESC, id DESC"
        with self._reader() as conn:
            return [dict(row) for row in conn.execute(sql, args)]

    # -- queries ------------------------------------------------------------------------

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """A short-lived read-only connection for the calling thread."""
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise self._fail("cannot be opened", exc) from exc
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA query_only = ON")
            yield conn
        except sqlite3.Error as exc:
            raise self._fail("cannot be read", exc) from exc
        finally:
            conn.close()

    def _cutoff_ms(self) -> int:
        return _now_ms() - self._retention_ms

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
        `error_message`. Only what is written is seen: `flush()` first if needed.
        """
        if layer is not None and layer not in _LAYERS:
            raise ValueError(f"layer {layer!r}: use one of {', '.join(sorted(_LAYERS))}")
        if limit is not None and limit <= 0:
            return []
        sql = (
            "SELECT timestamp, model, file, layer, gateway, status, latency_ms,"
            " bytes_downloaded, error_type, error_message FROM attempts"
        )
        where: list[str] = []
        args: list[Any] = []
        if since is not None:
            where.append("ts_ms >= ?")
            args.append(_dt_to_ms(since))
        if layer is not None:
            where.append("layer = ?")
            args.append(layer)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts_ms DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._reader() as conn:
            return [dict(row) for row in conn.execute(sql, args)]

    def downloads(self, active_only: bool = False) -> list[dict[str, Any]]:
        """Download rows, newest first; `active_only` keeps `pending` and `in_progress`.

        Each row: `id`, `model`, `file`, `layer`, `gateway`, `status`,
        `downloaded_bytes`, `total_bytes`, `error_message`, `started_at`, `completed_at`.
        """
        sql = (
            "SELECT id, model, file, layer, gateway, status, downloaded_bytes, total_bytes,"
            " error_message, started_at, completed_at FROM downloads"
        )
        if active_only:
            sql += " WHERE status IN ('pending', 'in_progress')"
        sql += " ORDER BY id DESC"
        with self._reader() as conn:
            return [dict(row) for row in conn.execute(sql)]

    def summary(self) -> dict[str, Any]:
        """Counts over the retention window, in the original `/summary` shape.

        `{"total", "cache_hits", "ipfs": {"success", "error", "avg_latency"},
        "huggingface": {...}}` plus `cache_misses`, `exhausted`, `bytes_downloaded` and
        `window_hours`. `avg_latency` is the mean latency (ms) of successes, 0 when none.
        """
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT layer, status, COUNT(*), AVG(latency_ms), TOTAL(bytes_downloaded)"
                " FROM attempts WHERE ts_ms >= ? GROUP BY layer, status",
                (self._cutoff_ms(),),
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
            "total": sum(counts.values()),
            "cache_hits": counts.get(("cache", "hit"), 0),
            "cache_misses": counts.get(("cache", "error"), 0),
            "exhausted": counts.get((None, "exhausted"), 0),
            "bytes_downloaded": total_bytes,
            "window_hours": self.retention / timedelta(hours=1),
        }
        for layer in _HEALTH_LAYERS:
            out[layer] = {
                "success": counts.get((layer, "success"), 0),
                "error": counts.get((layer, "error"), 0),
                "avg_latency": avg.get(layer, 0.0),
            }
        return out

    def health(self) -> dict[str, Any]:
        """Health of each layer and gateway over the retention window (rules: module doc).

        `{"ipfs": {"status", "success_rate", "avg_latency_ms", "p95_latency_ms",
        "attempts", "gateways": {url: {same but gateways}}}, "huggingface": {...},
        "cache": {"hit_rate", "hits", "misses", "lookups"}}`; rates are numbers 0-100.
        """
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT layer, gateway, status, latency_ms FROM attempts"
                " WHERE ts_ms >= ? AND layer IS NOT NULL AND status IN ('hit', 'success', 'error')"
                " ORDER BY ts_ms, id",
                (self._cutoff_ms(),),
            ).fetchall()
        outcomes: dict[str, list[tuple[bool, float | None]]] = {k: [] for k in _HEALTH_LAYERS}
        by_gateway: dict[str, dict[str, list[tuple[bool, float | None]]]] = {
            k: {} for k in _HEALTH_LAYERS
        }
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
        for layer in _HEALTH_LAYERS:
            entry = self._health_of(outcomes[layer])
            entry["gateways"] = {
                gw: self._health_of(seq) for gw, seq in sorted(by_gateway[layer].items())
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

    def _health_of(self, outcomes: Sequence[tuple[bool, float | None]]) -> dict[str, Any]:
        """Status, rate and latencies of a sequence of (ok, latency) oldest first."""
        rules = self.health_rules
        n = len(outcomes)
        ok = sum(1 for good, _ in outcomes if good)
        rate = round(100.0 * ok / n, 1) if n else 0.0
        latencies = [lat for good, lat in outcomes if good and lat is not None]
        mean = round(sum(latencies) / len(latencies), 1) if latencies else 0.0
        p95 = round(_percentile(latencies, 95.0), 1)
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


_PROGRESS_STATUS: Final[dict[str, str]] = {
    "attempting": "pending",
    "downloading": "in_progress",
    "success": "success",
    "completed": "success",
    "error": "failed",
}

_INTERRUPTED: Final = "interrupted: a newer download of this file started"


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)
