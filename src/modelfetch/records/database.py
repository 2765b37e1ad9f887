"""Opening the records file safely: checks, migrations, connections, SQLite errors translated.

Opening never destroys data: a file that is not a SQLite database, is damaged, cannot be
read or written, or was written by a newer modelfetch (a higher `PRAGMA user_version`)
raises `StorageError` naming the file and saying to move it aside; the file is left
byte-for-byte as it was. Older schema versions are migrated in one transaction by the
ordered migrations (`schema.MIGRATIONS`). Connections wait up to `BUSY_TIMEOUT_S` for a
lock and `retry_busy` tries again after that, so several processes can share one file.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Final, TypeVar

from ..errors import DiskFull, ReadOnly, StorageError

logger = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_TIMEOUT_S: Final = 10.0
_BUSY_RETRIES: Final = 5
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"

# SQLite primary result codes (sqlite3.Error.sqlite_errorcode & 0xFF)
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED = 3, 5, 6
_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CORRUPT = 8, 10, 11
_SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 13, 14, 26


# -- errors -------------------------------------------------------------------------------


def _errcode(exc: BaseException) -> int:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else -1


def storage_error(
    path: Path, what: str, exc: BaseException | None = None, *, advice: str | None = None
) -> StorageError:
    """A StorageError naming the file, what is wrong with it and what to do about it."""
    code = _errcode(exc) if exc is not None else -1
    said = f"records database {path} {what}" + (f": {exc}" if exc is not None else "")
    aside = f"mv '{path}' '{path}.broken'"
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


def write_error(path: Path, exc: sqlite3.Error) -> StorageError:
    """The StorageError for a write that failed on an open database."""
    code = _errcode(exc)
    where = f"records database {path}"
    if code == _SQLITE_FULL:
        return DiskFull(f"{where}: {exc}. Free some disk space.")
    if code in (_SQLITE_READONLY, _SQLITE_PERM, _SQLITE_CANTOPEN):
        return ReadOnly(f"{where}: {exc}. Make the file and its directory writable.")
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return storage_error(path, "is damaged", exc)
    return StorageError(f"{where}: {exc}")


def _is_busy(exc: BaseException) -> bool:
    if _errcode(exc) in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return True
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text


def retry_busy(fn: Callable[[], T], *, tries: int = _BUSY_RETRIES) -> T:
    """Call `fn`, again after a pause while SQLite says another connection holds a lock."""
    for attempt in range(tries):
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or attempt == tries - 1:
                raise
            time.sleep(min(2.0, 0.05 * 2**attempt))
    raise AssertionError("unreachable")  # pragma: no cover


# -- connections --------------------------------------------------------------------------


def connect(path: Path, *, create: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), usable from any thread."""
    mode = "rwc" if create else "rw"
    conn = sqlite3.connect(
        f"{path.as_uri()}?mode={mode}",
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


@contextmanager
def reader(path: Path) -> Iterator[sqlite3.Connection]:
    """A short-lived read-only connection (rows as `sqlite3.Row`) for the calling thread."""
    try:
        conn = connect(path)
    except sqlite3.Error as exc:
        raise storage_error(path, "cannot be opened", exc) from exc
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA query_only = ON")
        yield conn
    except sqlite3.Error as exc:
        raise storage_error(path, "cannot be read", exc) from exc
    finally:
        conn.close()


# -- opening ------------------------------------------------------------------------------


def open_and_migrate(path: Path, migrations: Sequence[tuple[str, ...]]) -> None:
    """Check the file at `path`, create it or bring it to `len(migrations)`; StorageError if not."""
    _check_file(path)
    try:
        conn = connect(path, create=True)
    except sqlite3.Error as exc:
        raise storage_error(path, "cannot be opened", exc) from exc
    try:
        # Read-only checks first: nothing is written to a file we refuse.
        version = _inspect(path, conn)
        latest = len(migrations)
        if version > latest:
            raise storage_error(
                path,
                f"was written by a newer modelfetch (schema version {version}; this "
                f"version knows versions up to {latest})",
                advice=f"Upgrade modelfetch to use it, or move it aside "
                f"(mv '{path}' '{path}.newer') to start a new one.",
            )
        try:
            mode = retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if str(mode).lower() != "wal":
                logger.warning(
                    "records database %s: WAL mode unavailable (journal_mode=%s); "
                    "writes from several processes will wait for each other longer",
                    path,
                    mode,
                )
            if version < latest:
                retry_busy(lambda: _migrate(conn, migrations))
        except sqlite3.Error as exc:
            raise storage_error(path, "cannot be prepared (migration failed)", exc) from exc
    finally:
        conn.close()


def _check_file(path: Path) -> None:
    """Refuse, without changing a byte, a path that is not a readable SQLite file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(path, "cannot create its directory", exc) from exc
    if not os.path.lexists(path):
        return
    if not path.is_file():
        raise storage_error(path, "exists but is not a regular file")
    try:
        with path.open("rb") as fh:
            header = fh.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise storage_error(path, "cannot be read", exc) from exc
    if header and header != _SQLITE_MAGIC:
        raise storage_error(path, "is not a SQLite database (damaged or another file)")
    if not os.access(path, os.R_OK | os.W_OK):
        raise storage_error(path, "is not writable", PermissionError(13, "Permission denied"))


def _inspect(path: Path, conn: sqlite3.Connection) -> int:
    """Schema version of a readable, undamaged database; StorageError otherwise."""
    try:
        version = int(retry_busy(lambda: conn.execute("PRAGMA user_version").fetchone()[0]))
        result = retry_busy(lambda: conn.execute("PRAGMA quick_check(1)").fetchone()[0])
    except sqlite3.Error as exc:
        raise storage_error(path, "is damaged or not a SQLite database", exc) from exc
    if result != "ok":
        raise storage_error(path, f"is damaged (integrity check: {result})")
    return version


def _migrate(conn: sqlite3.Connection, migrations: Sequence[tuple[str, ...]]) -> None:
    """Apply every pending migration in one transaction (another process may race)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        latest = len(migrations)
        for steps in migrations[version:]:
            for sql in steps:
                conn.execute(sql)
        if version < latest:
            conn.execute(f"PRAGMA user_version = {latest}")
        conn.execute("COMMIT")
    except BaseException:
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
