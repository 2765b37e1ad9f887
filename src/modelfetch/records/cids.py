"""The `ipfs_cids` table: CIDs known for each model, with their fetch counts."""

from __future__ import annotations

import sqlite3
from typing import Any


def upsert(
    conn: sqlite3.Connection,
    model: str,
    cid: str,
    *,
    model_type: str | None,
    model_hash: str | None,
    gateway_url: str | None,
    now: str,
) -> None:
    """Add the (model, CID) pair, or update its given fields; `last_accessed_at` = `now`."""
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


def count_fetch(
    conn: sqlite3.Connection,
    model: str,
    cid: str,
    *,
    ok: bool,
    gateway_url: str | None,
    now: str,
) -> None:
    """Count one fetch; only a success moves `gateway_url` and `last_accessed_at`."""
    good, bad = (1, 0) if ok else (0, 1)
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


def latest_cid(conn: sqlite3.Connection, model: str, model_type: str | None = None) -> str | None:
    """The CID of `model` used most recently (newest `last_accessed_at`), or None."""
    sql = "SELECT cid FROM ipfs_cids WHERE model_name = ?"
    args: list[Any] = [model]
    if model_type is not None:
        sql += " AND model_type = ?"
        args.append(model_type)
    sql += " ORDER BY last_accessed_at DESC, id DESC LIMIT 1"
    row = conn.execute(sql, args).fetchone()
    return None if row is None else str(row[0])


def rows(conn: sqlite3.Connection, model: str | None = None) -> list[dict[str, Any]]:
    """Every CID row (optionally of one model) as a dict, most recently used first."""
    sql = (
        "SELECT id, cid, model_name, model_type, model_hash, gateway_url, cached_at,"
        " last_accessed_at, success_count, failure_count FROM ipfs_cids"
    )
    args: list[Any] = []
    if model is not None:
        sql += " WHERE model_name = ?"
        args.append(model)
    sql += " ORDER BY last_accessed_at DESC, id DESC"
    return [dict(row) for row in conn.execute(sql, args)]
