"""What each event writes: an `attempts` row, or a step of its file's `downloads` row.

A file's `downloads` row goes `pending` (attempting) -> `in_progress` (downloading) ->
`success` or `failed`. The writer remembers each file's current row in a `RowMap`, so that
progress of one download updates one row; a new `attempting` after a final state, an
`exhausted` attempt, or a row pruned meanwhile starts a new one. These functions run in the
writer thread, inside its transaction, and change the `RowMap` they are given.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Final, Literal

from ..events import AttemptEvent, ProgressEvent
from .schema import DOWNLOAD_STATUS, dt_to_ms, ms_to_iso

_INTERRUPTED: Final = "interrupted: a newer download of this file started"


@dataclass(frozen=True)
class DownloadRow:
    """The writer's memory of one file's current `downloads` row."""

    id: int
    state: Literal["open", "succeeded", "closed"]


RowMap = dict[tuple[str, str], DownloadRow]
"""(model, file) -> the file's current `downloads` row."""


def only_open(rows: RowMap) -> RowMap:
    """The rows still being written to (the rest need not be remembered)."""
    return {key: row for key, row in rows.items() if row.state == "open"}


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def insert_attempt(conn: sqlite3.Connection, ev: AttemptEvent, rows: RowMap) -> None:
    """Insert `ev` into `attempts`; an `exhausted` one also closes its file's download row."""
    ms = dt_to_ms(ev.timestamp)
    conn.execute(
        "INSERT INTO attempts (ts_ms, timestamp, model, file, layer, gateway, status,"
        " latency_ms, bytes_downloaded, error_type, error_message, ttfb_ms)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            ms,
            ms_to_iso(ms),
            str(ev.model),
            str(ev.file),
            ev.layer,
            _str_or_none(ev.gateway),
            ev.status,
            None if ev.latency_ms is None else float(ev.latency_ms),
            int(ev.bytes_downloaded or 0),
            _str_or_none(ev.error_type),
            _str_or_none(ev.error_message),
            None if ev.ttfb_ms is None else float(ev.ttfb_ms),
        ),
    )
    if ev.status != "exhausted":
        return
    # Every layer failed: the file's download row is finished, as failed.
    key = (ev.model, ev.file)
    row = rows.get(key)
    if row is None or row.state != "open":
        return
    conn.execute(
        "UPDATE downloads SET status = 'failed',"
        " error_message = CASE WHEN status = 'failed' AND error_message IS NOT NULL"
        "   THEN error_message ELSE COALESCE(?, 'all download layers exhausted') END,"
        " completed_at = COALESCE(completed_at, ?), updated_ms = MAX(updated_ms, ?)"
        " WHERE id = ? AND status != 'success'",
        (_str_or_none(ev.error_message), ms_to_iso(ms), ms, row.id),
    )
    rows[key] = DownloadRow(row.id, "closed")


def apply_progress(conn: sqlite3.Connection, ev: ProgressEvent, rows: RowMap) -> None:
    """Move the file's `downloads` row to the state `ev` reports, or start a new row."""
    key = (ev.model, ev.file)
    status = DOWNLOAD_STATUS[ev.status]
    ms = int(ev.timestamp)
    iso = ms_to_iso(ms)
    layer = str(ev.source)
    gateway = _str_or_none(ev.gateway)
    nbytes = int(ev.bytes_downloaded or 0)
    total = None if ev.total_bytes is None else int(ev.total_bytes)
    error = (_str_or_none(ev.error) or "download failed") if status == "failed" else None

    row = rows.get(key)
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
            rows[key] = DownloadRow(row.id, "succeeded" if status == "success" else "open")
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
    rows[key] = DownloadRow(row_id, "succeeded" if status == "success" else "open")


def delete_older_than(conn: sqlite3.Connection, cutoff_ms: int) -> int:
    """Delete attempts and download rows last changed before `cutoff_ms`; return how many."""
    deleted = conn.execute("DELETE FROM attempts WHERE ts_ms < ?", (cutoff_ms,)).rowcount
    deleted += conn.execute("DELETE FROM downloads WHERE updated_ms < ?", (cutoff_ms,)).rowcount
    return int(deleted)


def reset(conn: sqlite3.Connection) -> None:
    """Delete every attempt and every finished download row (running ones stay)."""
    conn.execute("DELETE FROM attempts")
    conn.execute("DELETE FROM downloads WHERE status IN ('success', 'failed')")
