"""The write queue of a `Records` and the background thread that writes it to SQLite.

`Writer.put` (behind `Records.listener`) only puts the event on an in-memory queue and
returns: it never touches the disk and never raises. One background thread per `Records`
writes the queue in short batched transactions (`BEGIN IMMEDIATE`, WAL mode, 10 s busy
timeout, retried when another process holds the lock), so several processes can share one
file. Progress updates of a transfer are coalesced to at most one UPDATE per file per
`progress_interval` (0.5 s); the final state of a download is always written. When writing
fails at runtime (disk full, file made read-only, damaged) one warning is logged, the
affected records are dropped and counted in `dropped`, and downloads go on. `flush()` waits
until everything queued so far is written; `close()` flushes and stops. Rows older than
`retention` (24 h) are pruned by the writer thread at start, every `prune_every` seconds
(300) and every 1000 inserted attempts. Other writes (`call`, `submit`) run in the same
thread, in order with the events queued before them.
"""

from __future__ import annotations

import atexit
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

from ..errors import StorageError
from ..events import AttemptEvent, Event, ProgressEvent
from . import rows
from .database import connect, retry_busy, storage_error, write_error
from .schema import is_recordable, now_ms
from .throttle import ProgressThrottle

logger = logging.getLogger(__name__)

T = TypeVar("T")

_BATCH_MAX: Final = 1000
_QUEUE_MAX: Final = 100_000
_PRUNE_EVERY_INSERTS: Final = 1000
_ROWS_REMEMBERED: Final = 10_000  # beyond this, forget the download rows that are finished


@dataclass
class _Call:
    """Run `fn(conn)` in the writer thread (in a transaction unless told not to)."""

    fn: Callable[[sqlite3.Connection], Any] | None
    future: Future[Any]
    transaction: bool = True
    wait: bool = True  # False: nobody waits, so failures are logged


_STOP: Final = object()


class Writer:
    """The queue of one records file and the thread that writes it (see the module doc)."""

    def __init__(
        self, path: Path, *, retention: timedelta, progress_interval: float, prune_every: float
    ) -> None:
        self.path = path
        self.retention = retention
        self.prune_every = prune_every
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
        self._rows: rows.RowMap = {}
        self._throttle = ProgressThrottle(progress_interval)
        self._inserts_since_prune = 0

        self._thread = threading.Thread(
            target=self._run, name=f"modelfetch-records-{path.name}", daemon=True
        )
        self._thread.start()
        atexit.register(self.close)

    # -- the calling threads' side ------------------------------------------------------

    @property
    def dropped(self) -> int:
        """Events not recorded (queue full, invalid, or writing failed)."""
        return self._dropped

    def put(self, event: Event) -> None:
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

    def submit(
        self,
        fn: Callable[[sqlite3.Connection], Any] | None,
        *,
        transaction: bool = True,
        wait: bool = True,
    ) -> Future[Any]:
        """Queue `fn(conn)` after everything queued so far; None is a flush barrier.

        `wait=False`: nobody waits for the result, so a failure is logged. Raises
        StorageError once closed.
        """
        if self._closed:
            raise StorageError(f"records database {self.path}: already closed")
        call = _Call(fn, Future(), transaction=transaction, wait=wait)
        self._queue.put(call)
        return call.future

    def call(self, fn: Callable[[sqlite3.Connection], T], *, transaction: bool = True) -> T:
        """Run `fn(conn)` in the writer thread after everything queued so far; its result."""
        result: T = self.submit(fn, transaction=transaction).result()
        return result

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued before this call is written (or has failed).

        Returns False when `timeout` seconds passed first. Pending throttled progress
        updates are written too.
        """
        if self._closed:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        future = self.submit(None)
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

    def prune(self, conn: sqlite3.Connection) -> int:
        """Delete the rows older than `retention` (run it with `call`); return how many."""
        return rows.delete_older_than(conn, now_ms() - self.retention // timedelta(milliseconds=1))

    # -- the writer thread --------------------------------------------------------------

    def _run(self) -> None:
        """The writer thread: batch queued items into short transactions until `_STOP`."""
        next_prune = time.monotonic()  # prune once at start
        while True:
            items: list[object] = []
            try:
                if time.monotonic() >= next_prune:
                    self._auto_prune()
                    next_prune = time.monotonic() + self.prune_every
                deadline = self._throttle.next_due(next_prune)
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
                    self._throttle.release(staged, everything=True)
                self._write(staged)
                staged = []
                self._run_call(item)
            elif item is _STOP:
                self._throttle.release(staged, everything=True)
                self._write(staged)
                self._stop()
                return True
        self._throttle.release(staged, everything=False)
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

    def _stage(self, event: AttemptEvent | ProgressEvent, staged: list[Event]) -> None:
        """Add a valid event to `staged` (progress through the throttle); count the rest."""
        if not is_recordable(event):
            self._dropped += 1
            if not self._invalid_warned:
                self._invalid_warned = True
                logger.warning("records: ignoring an invalid event (logged once): %r", event)
            return
        if isinstance(event, AttemptEvent):
            staged.append(event)
        elif event.source != "cache" and event.file:  # cache lookups are attempts only
            self._throttle.stage(event, staged)

    def _drop(self, count: int, why: str) -> None:
        self._dropped += count
        self._warn(f"{why}; {count} record(s) dropped")

    def _warn(self, why: str) -> None:
        if not self._write_warned:
            self._write_warned = True
            logger.warning(
                "records database %s: %s (downloads are not affected; further failures are "
                "not logged until writing works again)",
                self.path,
                why,
            )

    def _connection(self) -> sqlite3.Connection | None:
        """The writer's connection, opened when first needed; None (warned) if it cannot be."""
        if self._conn is None:
            try:
                self._conn = connect(self.path)
            except sqlite3.Error as exc:
                self._warn(f"cannot be opened for writing ({exc})")
                return None
        return self._conn

    def _write(self, events: list[Event]) -> None:
        """Write `events` in one transaction; all of them are dropped if it fails."""
        if not events:
            return
        conn = self._connection()
        if conn is None:
            self._drop(len(events), "no connection")
            return

        def transaction() -> tuple[int, rows.RowMap]:
            files = dict(self._rows)  # kept only when the transaction commits
            conn.execute("BEGIN IMMEDIATE")
            try:
                inserted = 0
                for event in events:
                    if isinstance(event, AttemptEvent):
                        rows.insert_attempt(conn, event, files)
                        inserted += 1
                    elif isinstance(event, ProgressEvent):
                        rows.apply_progress(conn, event, files)
                conn.execute("COMMIT")
                return inserted, files
            except BaseException:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

        try:
            inserted, self._rows = retry_busy(transaction)
        except (sqlite3.Error, ValueError, TypeError, OverflowError) as exc:
            self._drop(len(events), f"writing failed ({type(exc).__name__}: {exc})")
            return
        self._inserts_since_prune += inserted
        if self._write_warned:
            self._write_warned = False
            logger.info("records database %s: writing works again", self.path)
        if len(self._rows) > _ROWS_REMEMBERED:
            self._rows = rows.only_open(self._rows)

    def _run_call(self, call: _Call) -> None:
        """Run one queued call and settle its future."""
        future = call.future
        fn = call.fn
        if fn is None:  # a flush barrier: everything before it is written
            future.set_result(None)
            return
        conn = self._connection()
        if conn is None:
            future.set_exception(storage_error(self.path, "cannot be opened for writing"))
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
            result = retry_busy(run)
        except sqlite3.Error as exc:
            if not call.wait:
                self._warn(f"writing failed ({type(exc).__name__}: {exc})")
            future.set_exception(write_error(self.path, exc))
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)

    def _auto_prune(self) -> None:
        self._inserts_since_prune = 0
        if self._connection() is None:
            return
        call = _Call(self.prune, Future(), wait=False)
        self._run_call(call)
        with suppress(Exception):
            deleted = call.future.result(0)
            if deleted:
                logger.debug("records database %s: pruned %d old rows", self.path, deleted)
