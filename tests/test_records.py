"""Tests of records.py: the SQLite records of attempts, downloads and IPFS CIDs."""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import ATTEMPT_RECORD_KEYS
from modelfetch import records as records_mod
from modelfetch.errors import StorageError
from modelfetch.events import AttemptEvent, Layer, Listener, ProgressEvent
from modelfetch.records import MIGRATIONS, HealthRules, Records

IPFS = "https://ipfs.io"
DWEB = "https://dweb.link"
HF = "https://huggingface.co"
TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "models" / ".modelfetch" / "records.sqlite3"


@pytest.fixture
def rec(db_path: Path) -> Iterator[Records]:
    records = Records(db_path)
    yield records
    records.close()


def ago(**delta: float) -> datetime:
    return datetime.now(UTC) - timedelta(**delta)


def attempt(
    layer: Layer | None,
    status: Any,
    *,
    gateway: str | None = None,
    latency: float | None = None,
    when: datetime | None = None,
    file: str = "f.onnx",
    **kw: Any,
) -> AttemptEvent:
    return AttemptEvent(
        "whisper-base",
        file,
        layer,
        status,
        gateway=gateway,
        latency_ms=latency,
        timestamp=when or datetime.now(UTC),
        **kw,
    )


def emit(records: Records, *events: AttemptEvent | ProgressEvent) -> None:
    for event in events:
        records.listener(event)
    assert records.flush(timeout=10)


def outcomes(
    records: Records, layer: Layer, results: str, *, gateway: str = IPFS, latency: float = 100.0
) -> None:
    """Emit one attempt per character of `results` ('s' success, 'e' error), oldest first."""
    start = ago(minutes=30)
    emit(
        records,
        *(
            attempt(
                layer,
                "success" if r == "s" else "error",
                gateway=gateway,
                latency=latency,
                when=start + timedelta(seconds=i),
            )
            for i, r in enumerate(results)
        ),
    )


def sql(path: Path, query: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(query, args).fetchall()
    finally:
        conn.close()


# -- schema, migrations, refusing bad files ---------------------------------------------


def test_creates_schema_and_directories(db_path: Path) -> None:
    with Records(db_path):
        pass
    assert db_path.is_file()
    assert sql(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert sql(db_path, "PRAGMA journal_mode") == [("wal",)]
    tables = {row[0] for row in sql(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"attempts", "downloads", "ipfs_cids"} <= tables
    indexes = {r[0] for r in sql(db_path, "SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"attempts_by_time", "attempts_by_layer"} <= indexes


def test_migrates_an_older_version_keeping_rows(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Records(db_path) as old:
        emit(old, attempt("ipfs", "success", gateway=IPFS, latency=5))
    latest = len(MIGRATIONS)
    assert sql(db_path, "PRAGMA user_version") == [(latest,)]
    step = ("ALTER TABLE attempts ADD COLUMN note TEXT", "UPDATE attempts SET note = 'migrated'")
    monkeypatch.setattr(records_mod, "MIGRATIONS", [*MIGRATIONS, step])
    with Records(db_path) as new:
        assert new.attempts()[0]["gateway"] == IPFS
    assert sql(db_path, "PRAGMA user_version") == [(latest + 1,)]
    assert sql(db_path, "SELECT note FROM attempts") == [("migrated",)]


def test_a_version_1_database_is_migrated_in_place(db_path: Path) -> None:
    """A records file of the first released schema: rows kept (ids too), new columns empty,
    the widened status constraint in force, the scores' index there."""
    db_path.parent.mkdir(parents=True)
    conn = sqlite3.connect(db_path)
    for step in MIGRATIONS[0]:
        conn.execute(step)
    conn.execute(
        "INSERT INTO attempts (id, ts_ms, timestamp, model, file, layer, gateway, status,"
        " latency_ms, bytes_downloaded) VALUES (7, ?, '2026-01-01T00:00:00.000Z', 'm', 'f',"
        " 'ipfs', ?, 'success', 12.5, 100)",
        (int(time.time() * 1000), IPFS),
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    with pytest.raises(sqlite3.IntegrityError):  # version 1 refuses the new status
        conn.execute(
            "INSERT INTO attempts (ts_ms, timestamp, model, file, status)"
            " VALUES (0, '', 'm', 'f', 'skipped')"
        )
    conn.close()

    with Records(db_path) as records:
        assert sql(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
        (row,) = records.attempts()
        assert row["gateway"] == IPFS and row["latency_ms"] == 12.5 and row["ttfb_ms"] is None
        emit(
            records,
            attempt("ipfs", "skipped", gateway=DWEB, error_message="down: refused"),
            attempt("ipfs", "success", gateway=DWEB, latency=3.0, ttfb_ms=1.5),
        )
        assert records.dropped_events == 0
        assert [r["status"] for r in records.attempts()] == ["success", "skipped", "success"]
        assert records.attempts()[0]["ttfb_ms"] == 1.5
        summary = records.summary()
        assert summary["skipped"] == 1 and summary["total"] == 2  # tries only
        assert records.health()["ipfs"]["attempts"] == 2
    assert sql(db_path, "SELECT id FROM attempts WHERE gateway = ?", IPFS) == [(7,)]
    indexes = {r[0] for r in sql(db_path, "SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"attempts_by_time", "attempts_by_layer", "attempts_by_gateway"} <= indexes
    tables = {r[0] for r in sql(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert "attempts_v2" not in tables
    assert sql(db_path, "PRAGMA integrity_check") == [("ok",)]


def test_a_table_rebuild_that_fails_halfway_leaves_version_1_whole(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_path.parent.mkdir(parents=True)
    conn = sqlite3.connect(db_path)
    for step in MIGRATIONS[0]:
        conn.execute(step)
    conn.execute(
        "INSERT INTO attempts (ts_ms, timestamp, model, file, status) VALUES (1, 't', 'm', 'f',"
        " 'hit')"
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    before = sql(db_path, "SELECT * FROM sqlite_master ORDER BY name")
    broken = (*MIGRATIONS[1], "THIS IS NOT SQL")  # fails after the old table is dropped
    monkeypatch.setattr(records_mod, "MIGRATIONS", [MIGRATIONS[0], broken])
    with pytest.raises(StorageError, match="migration"):
        Records(db_path)
    assert sql(db_path, "PRAGMA user_version") == [(1,)]
    assert sql(db_path, "SELECT * FROM sqlite_master ORDER BY name") == before
    assert sql(db_path, "SELECT status FROM attempts") == [("hit",)]


def test_a_failing_migration_changes_nothing(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Records(db_path).close()
    broken = ("ALTER TABLE attempts ADD COLUMN note TEXT", "THIS IS NOT SQL")
    monkeypatch.setattr(records_mod, "MIGRATIONS", [*MIGRATIONS, broken])
    with pytest.raises(StorageError, match="migration"):
        Records(db_path)
    assert sql(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    columns = [row[1] for row in sql(db_path, "PRAGMA table_info(attempts)")]
    assert "note" not in columns


def test_a_newer_version_is_refused_and_kept(db_path: Path) -> None:
    with Records(db_path) as records:
        emit(records, attempt("cache", "hit"))
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    before = db_path.read_bytes()
    with pytest.raises(StorageError, match="newer") as info:
        Records(db_path)
    assert str(db_path) in str(info.value)
    assert db_path.read_bytes() == before
    assert sql(db_path, "SELECT count(*) FROM attempts") == [(1,)]


@pytest.mark.parametrize("header", [b"", b"SQLite format 3\x00"], ids=["random", "bad-pages"])
def test_a_corrupt_file_is_refused_and_untouched(db_path: Path, header: bytes) -> None:
    db_path.parent.mkdir(parents=True)
    content = header + random.Random(7).randbytes(8192)
    db_path.write_bytes(content)
    with pytest.raises(StorageError) as info:
        Records(db_path)
    message = str(info.value)
    assert str(db_path) in message
    assert "move it aside" in message.lower()
    assert db_path.read_bytes() == content
    assert sorted(p.name for p in db_path.parent.iterdir()) == [db_path.name]


def test_a_damaged_page_is_refused_and_untouched(db_path: Path) -> None:
    with Records(db_path) as records:
        emit(
            records,
            *(attempt("ipfs", "error", error_message="x" * 200, file=f"{i}") for i in range(2000)),
        )
    content = bytearray(db_path.read_bytes())
    page = int.from_bytes(content[16:18], "big")
    content[10 * page : 12 * page] = random.Random(1).randbytes(2 * page)
    db_path.write_bytes(content)
    with pytest.raises(StorageError, match="damaged") as info:
        Records(db_path)
    assert str(db_path) in str(info.value)
    assert db_path.read_bytes() == content


def test_a_directory_in_place_of_the_file_is_refused(db_path: Path) -> None:
    db_path.mkdir(parents=True)
    with pytest.raises(StorageError, match="not a regular file"):
        Records(db_path)
    assert db_path.is_dir()
    assert list(db_path.iterdir()) == []


def test_an_unreadable_file_is_refused_and_untouched(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Records(db_path).close()
    before = db_path.read_bytes()
    real_open = Path.open

    def deny(self: Path, *args: Any, **kw: Any) -> Any:
        if self == db_path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kw)

    monkeypatch.setattr(Path, "open", deny)
    with pytest.raises(StorageError, match="cannot be read") as info:
        Records(db_path)
    assert str(db_path) in str(info.value)
    monkeypatch.undo()
    assert db_path.read_bytes() == before


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
@pytest.mark.parametrize("mode", [0o000, 0o444], ids=["unreadable", "read-only"])
def test_permissions_are_refused_and_untouched(db_path: Path, mode: int) -> None:
    Records(db_path).close()
    before = db_path.read_bytes()
    db_path.chmod(mode)
    try:
        with pytest.raises(StorageError) as info:
            Records(db_path)
        assert str(db_path) in str(info.value)
    finally:
        db_path.chmod(0o644)
    assert db_path.read_bytes() == before


# -- concurrency ------------------------------------------------------------------------


def test_several_processes_write_without_losing_a_row(db_path: Path) -> None:
    writers, count = 4, 500
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    start_at = time.time() + 1.5  # all start together, on a database none has created yet
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(TESTS / "_records_writer.py"),
                str(db_path),
                str(w),
                str(count),
                str(start_at),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for w in range(writers)
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    with Records(db_path) as records:
        files = {row["file"] for row in records.attempts()}
        downloads = records.downloads()
    expected = {f"w{w}-{i}" for w in range(writers) for i in range(count)}
    assert len(files) == len(expected)
    assert files == expected
    assert sql(db_path, "SELECT count(*) FROM attempts") == [(writers * count,)]
    assert len(downloads) == writers * count
    assert {d["status"] for d in downloads} == {"success"}
    assert {d["file"] for d in downloads} == expected


def test_the_listener_does_not_wait_for_a_locked_database(rec: Records, db_path: Path) -> None:
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        start = time.perf_counter()
        for i in range(2000):
            rec.listener(attempt("ipfs", "success", gateway=IPFS, latency=i, file=f"f{i}"))
        elapsed = time.perf_counter() - start
        time.sleep(0.2)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert elapsed < 0.5
    assert rec.flush(timeout=20)
    assert len(rec.attempts()) == 2000
    assert rec.dropped_events == 0


# -- failing disks ----------------------------------------------------------------------


def test_the_listener_survives_an_unwritable_database(
    rec: Records, caplog: pytest.LogCaptureFixture
) -> None:
    emit(rec, attempt("cache", "hit"))

    def freeze(conn: sqlite3.Connection) -> None:  # "disk full": the file may not grow
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")

    rec._call(freeze, transaction=False)
    big = "x" * 20_000
    with caplog.at_level(logging.WARNING, logger="modelfetch.records"):
        for i in range(50):
            rec.listener(attempt("ipfs", "error", gateway=IPFS, error_message=big, file=f"{i}"))
            rec.listener(ProgressEvent("m", f"{i}", "ipfs", "error", error=big))
            assert rec.flush(timeout=10)
        rec.listener("not an event")  # type: ignore[arg-type]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "full" in warnings[0].getMessage()
    assert rec.dropped_events >= 50
    assert len(rec.attempts()) == 1

    rec._call(lambda conn: conn.execute("PRAGMA max_page_count = 1073741823"), transaction=False)
    emit(rec, attempt("cache", "hit"))
    assert len(rec.attempts()) == 2  # writing works again without a restart


def test_the_listener_never_raises_after_close(db_path: Path) -> None:
    records = Records(db_path)
    records.close()
    records.listener(attempt("cache", "hit"))
    records.record_cid_fetch("m", "Qm", True, IPFS)
    records.close()
    assert records.flush(timeout=1)
    with pytest.raises(StorageError, match="closed"):
        records.reset()


async def test_the_listener_works_from_the_event_loop(rec: Records) -> None:
    listener: Listener = rec.listener
    listener(attempt("huggingface", "success", gateway=HF, latency=3.0))
    assert rec.flush(timeout=10)
    assert rec.attempts()[0]["layer"] == "huggingface"


# -- retention --------------------------------------------------------------------------


def test_prune_removes_only_rows_older_than_retention(db_path: Path) -> None:
    with Records(db_path, retention=timedelta(hours=1)) as records:
        emit(
            records,
            attempt("ipfs", "success", gateway=IPFS, latency=1, when=ago(hours=3)),
            attempt("ipfs", "error", gateway=IPFS, when=ago(minutes=61)),
            attempt("ipfs", "success", gateway=IPFS, latency=1, when=ago(minutes=59)),
            attempt("cache", "hit"),
        )
        old_ms = int(ago(hours=2).timestamp() * 1000)
        emit(
            records,
            ProgressEvent("m", "old", "huggingface", "success", timestamp=old_ms),
            ProgressEvent("m", "new", "huggingface", "success"),
        )
        assert records.summary()["total"] == 2  # outside the window: not counted
        assert len(records.attempts()) == 4  # but still stored until pruned
        assert records.prune() == 3
        assert [a["layer"] for a in records.attempts()] == ["cache", "ipfs"]
        assert [d["file"] for d in records.downloads()] == ["new"]
        assert records.prune() == 0


def test_the_writer_prunes_by_itself(db_path: Path) -> None:
    with Records(db_path, retention=timedelta(minutes=1), prune_every=0.05) as records:
        emit(records, attempt("cache", "hit", when=ago(minutes=2)), attempt("cache", "hit"))
        deadline = time.monotonic() + 5
        while len(records.attempts()) > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(records.attempts()) == 1


def test_reset_keeps_only_running_downloads(rec: Records) -> None:
    emit(
        rec,
        attempt("cache", "hit"),
        ProgressEvent("m", "done", "ipfs", "success"),
        ProgressEvent("m", "running", "ipfs", "downloading", bytes_downloaded=5),
    )
    rec.reset()
    assert rec.attempts() == []
    assert [(d["file"], d["status"]) for d in rec.downloads()] == [("running", "in_progress")]
    emit(rec, ProgressEvent("m", "running", "ipfs", "success", bytes_downloaded=9))
    assert [(d["file"], d["status"]) for d in rec.downloads()] == [("running", "success")]


# -- queries ----------------------------------------------------------------------------


def test_attempts_are_filtered_newest_first_with_numbers(rec: Records) -> None:
    emit(
        rec,
        attempt("cache", "error", error_type="CacheMiss", when=ago(minutes=3)),
        attempt(
            "ipfs",
            "success",
            gateway=IPFS,
            latency=12.5,
            when=ago(minutes=2),
            bytes_downloaded=1000,
        ),
        attempt(
            "huggingface",
            "error",
            gateway=HF,
            latency=7,
            when=ago(minutes=1),
            error_type="HTTPStatus",
            error_message="503",
        ),
        attempt(None, "exhausted", error_type="AllSourcesFailed"),
    )
    rows = rec.attempts()
    assert [r["status"] for r in rows] == ["exhausted", "error", "success", "error"]
    assert set(rows[0]) == ATTEMPT_RECORD_KEYS
    ipfs = rec.attempts(layer="ipfs")
    assert len(ipfs) == 1
    assert ipfs[0]["latency_ms"] == 12.5
    assert ipfs[0]["bytes_downloaded"] == 1000
    assert ipfs[0]["timestamp"].endswith("Z")
    datetime.fromisoformat(ipfs[0]["timestamp"].replace("Z", "+00:00"))
    assert len(rec.attempts(since=ago(minutes=2, seconds=30))) == 3
    assert len(rec.attempts(since=ago(minutes=2, seconds=30).replace(tzinfo=None))) == 3
    assert [r["layer"] for r in rec.attempts(limit=2)] == [None, "huggingface"]
    with pytest.raises(ValueError):
        rec.attempts(layer="ftp")


def test_summary_shape_and_average_latency(rec: Records) -> None:
    assert rec.summary()["ipfs"] == {"success": 0, "error": 0, "avg_latency": 0}
    emit(
        rec,
        attempt("cache", "hit"),
        attempt("cache", "hit"),
        attempt("cache", "error", error_type="CacheMiss"),
        attempt("ipfs", "success", gateway=IPFS, latency=100),
        attempt("ipfs", "success", gateway=DWEB, latency=201),
        attempt("ipfs", "error", gateway=IPFS, latency=30_000, error_type="Stalled"),
        attempt("huggingface", "error", gateway=HF, latency=50),
        attempt(None, "exhausted"),
    )
    summary = rec.summary()
    assert summary["total"] == 8
    assert summary["cache_hits"] == 2
    assert summary["cache_misses"] == 1
    assert summary["exhausted"] == 1
    assert summary["ipfs"] == {"success": 2, "error": 1, "avg_latency": 150.5}
    assert summary["huggingface"] == {"success": 0, "error": 1, "avg_latency": 0}


def test_health_of_an_empty_database(rec: Records) -> None:
    health = rec.health()
    assert health["ipfs"]["status"] == "unknown"
    assert health["huggingface"]["gateways"] == {}
    assert health["cache"] == {"hit_rate": 0, "hits": 0, "misses": 0, "lookups": 0}


@pytest.mark.parametrize(
    ("results", "status"),
    [
        ("s", "unknown"),  # one success does not make a layer healthy
        ("ss", "unknown"),
        ("sss", "healthy"),
        ("s" * 10, "healthy"),
        ("ee" + "s" * 8, "degraded"),  # 80 %
        ("e" * 9 + "s", "down"),  # 10 %
        ("s" * 20 + "eee", "down"),  # 87 %, but the last three failed
        ("s" * 15 + "ees", "degraded"),  # 89 %
        ("eee", "down"),
    ],
)
def test_health_status_rules(rec: Records, results: str, status: str) -> None:
    outcomes(rec, "huggingface", results, gateway=HF)
    health = rec.health()["huggingface"]
    assert health["status"] == status
    assert health["attempts"] == len(results)
    assert isinstance(health["success_rate"], float)
    assert health["success_rate"] == round(100 * results.count("s") / len(results), 1)
    assert health["gateways"][HF]["status"] == status


def test_health_p95_latency(rec: Records) -> None:
    start = ago(minutes=10)
    emit(
        rec,
        *(
            attempt(
                "ipfs",
                "success",
                gateway=IPFS,
                latency=float(ms),
                when=start + timedelta(seconds=ms),
            )
            for ms in range(1, 101)
        ),
    )
    ipfs = rec.health()["ipfs"]
    assert ipfs["p95_latency_ms"] == 95.0
    assert ipfs["avg_latency_ms"] == 50.5
    assert ipfs["success_rate"] == 100.0
    assert ipfs["status"] == "healthy"


def test_health_slow_p95_is_degraded(rec: Records) -> None:
    limit = HealthRules().degraded_p95_ms
    outcomes(rec, "ipfs", "s" * 19, latency=100)
    outcomes(rec, "ipfs", "s", latency=limit + 1)
    assert rec.health()["ipfs"]["status"] == "healthy"  # 1 slow of 20: p95 is the 19th, fast
    outcomes(rec, "ipfs", "s", latency=limit + 1)
    ipfs = rec.health()["ipfs"]
    assert ipfs["p95_latency_ms"] == limit + 1
    assert ipfs["status"] == "degraded"


def test_health_per_gateway_and_window(db_path: Path) -> None:
    with Records(db_path, retention=timedelta(hours=1)) as records:
        outcomes(records, "ipfs", "ssss", gateway=IPFS)
        outcomes(records, "ipfs", "eeee", gateway=DWEB)
        emit(
            records, *(attempt("ipfs", "error", gateway=IPFS, when=ago(hours=2)) for _ in range(5))
        )
        ipfs = records.health()["ipfs"]
    assert ipfs["attempts"] == 8
    assert ipfs["success_rate"] == 50.0
    assert ipfs["gateways"][IPFS]["status"] == "healthy"
    assert ipfs["gateways"][IPFS]["attempts"] == 4
    assert ipfs["gateways"][DWEB]["status"] == "down"
    assert ipfs["gateways"][DWEB]["avg_latency_ms"] == 0


def test_health_custom_rules(db_path: Path) -> None:
    rules = HealthRules(min_attempts=1, degraded_below_rate=100.0)
    with Records(db_path, health_rules=rules) as records:
        outcomes(records, "ipfs", "s")
        assert records.health()["ipfs"]["status"] == "healthy"
        outcomes(records, "ipfs", "e")
        assert records.health()["ipfs"]["status"] == "degraded"


def test_cache_hit_rate_counts_misses(rec: Records) -> None:
    emit(
        rec,
        attempt("cache", "hit"),
        attempt("cache", "hit"),
        attempt("cache", "hit"),
        attempt("cache", "error", error_type="CacheMiss"),
        attempt("ipfs", "success", gateway=IPFS, latency=1),
    )
    assert rec.health()["cache"] == {"hit_rate": 75.0, "hits": 3, "misses": 1, "lookups": 4}


# -- downloads --------------------------------------------------------------------------


def only_row(records: Records) -> dict[str, Any]:
    assert records.flush(timeout=10)
    rows = records.downloads()
    assert len(rows) == 1, rows
    return rows[0]


def test_download_rows_follow_progress_events(rec: Records) -> None:
    def ev(source: Layer, status: Any, **kw: Any) -> None:
        rec.listener(ProgressEvent("whisper-base", "onnx/enc.onnx", source, status, **kw))

    ev("cache", "attempting")
    ev("cache", "error", error="not cached")
    assert rec.flush(timeout=10)
    assert rec.downloads() == []  # cache lookups are attempts, not downloads

    ev("ipfs", "attempting", gateway=IPFS, total_bytes=1000)
    row = only_row(rec)
    assert row["status"] == "pending"
    assert (row["layer"], row["gateway"], row["total_bytes"]) == ("ipfs", IPFS, 1000)
    assert row["started_at"].endswith("Z")
    assert row["completed_at"] is None
    assert rec.downloads(active_only=True) == [row]

    ev("ipfs", "downloading", gateway=IPFS, bytes_downloaded=300, total_bytes=1000)
    row = only_row(rec)
    assert (row["status"], row["downloaded_bytes"]) == ("in_progress", 300)

    ev("ipfs", "error", gateway=IPFS, bytes_downloaded=300, error="Stalled: no bytes for 30 s")
    row = only_row(rec)
    assert row["status"] == "failed"
    assert row["error_message"] == "Stalled: no bytes for 30 s"
    assert row["completed_at"] is not None

    ev("huggingface", "attempting", gateway=HF)
    row = only_row(rec)
    assert (row["status"], row["layer"], row["gateway"]) == ("pending", "huggingface", HF)
    assert row["downloaded_bytes"] == 0
    assert row["completed_at"] is None

    ev("huggingface", "downloading", bytes_downloaded=600, total_bytes=1000)
    row = only_row(rec)
    assert (row["status"], row["gateway"], row["downloaded_bytes"]) == ("in_progress", HF, 600)

    ev("huggingface", "success", gateway=HF, bytes_downloaded=1000, total_bytes=1000)
    ev("huggingface", "completed", gateway=HF, bytes_downloaded=1000, total_bytes=1000)
    row = only_row(rec)
    assert row["status"] == "success"
    assert (row["downloaded_bytes"], row["total_bytes"]) == (1000, 1000)
    assert row["error_message"] is None
    assert row["completed_at"] is not None
    assert rec.downloads(active_only=True) == []

    ev("ipfs", "attempting", gateway=IPFS)  # a later download of the same file: a new row
    assert rec.flush(timeout=10)
    assert [d["status"] for d in rec.downloads()] == ["pending", "success"]


def test_an_exhausted_file_closes_its_failed_download(rec: Records) -> None:
    emit(
        rec,
        ProgressEvent("m", "a.onnx", "ipfs", "attempting", gateway=IPFS),
        ProgressEvent("m", "a.onnx", "ipfs", "downloading", bytes_downloaded=10),
        AttemptEvent("m", "a.onnx", None, "exhausted", error_message="all layers failed"),
    )
    row = only_row(rec)
    assert (row["status"], row["error_message"]) == ("failed", "all layers failed")
    emit(rec, ProgressEvent("m", "a.onnx", "ipfs", "attempting", gateway=IPFS))
    assert [d["status"] for d in rec.downloads()] == ["pending", "failed"]
    emit(  # a row already failed keeps its layer's error, which says more
        rec,
        ProgressEvent("m", "a.onnx", "ipfs", "error", error="HTTPStatus: 504"),
        AttemptEvent("m", "a.onnx", None, "exhausted", error_message="2 attempt(s) failed"),
    )
    assert [d["error_message"] for d in rec.downloads()] == ["HTTPStatus: 504", "all layers failed"]


def test_an_unfinished_row_of_an_earlier_run_is_marked_interrupted(db_path: Path) -> None:
    with Records(db_path) as first:
        emit(first, ProgressEvent("m", "a.onnx", "ipfs", "downloading", bytes_downloaded=5))
    with Records(db_path) as second:
        emit(second, ProgressEvent("m", "a.onnx", "huggingface", "attempting"))
        rows = second.downloads()
    assert [r["status"] for r in rows] == ["pending", "failed"]
    assert "interrupted" in rows[1]["error_message"]


def test_progress_writes_are_throttled_but_the_last_state_is_kept(rec: Records) -> None:
    statements: list[str] = []
    rec._call(lambda conn: conn.set_trace_callback(statements.append), transaction=False)
    emit(rec, ProgressEvent("m", "big.onnx", "ipfs", "attempting", gateway=IPFS))
    statements.clear()
    for i in range(1, 301):
        rec.listener(ProgressEvent("m", "big.onnx", "ipfs", "downloading", bytes_downloaded=i))
    deadline = time.monotonic() + 5  # no more events: the last one is still written
    while only_row_bytes(rec) != 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert only_row_bytes(rec) == 300
    updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE DOWNLOADS")]
    assert 1 <= len(updates) <= 4, updates


def only_row_bytes(records: Records) -> int:
    (row,) = records.downloads()
    return int(row["downloaded_bytes"])


# -- IPFS CIDs --------------------------------------------------------------------------


def test_cids_are_unique_per_model_and_counted(rec: Records) -> None:
    rec.upsert_cid("whisper-base", "QmA", model_type="stt", model_hash="h1")
    rec.upsert_cid("whisper-base", "QmA", gateway_url=IPFS)  # same pair: no duplicate row
    rec.upsert_cid("tts-models", "QmA", model_type="voice")  # same CID, other model: fine
    rows = rec.cids("whisper-base")
    assert len(rows) == 1
    assert (rows[0]["model_type"], rows[0]["model_hash"], rows[0]["gateway_url"]) == (
        "stt",
        "h1",
        IPFS,
    )
    assert len(rec.cids()) == 2

    rec.record_cid_fetch("whisper-base", "QmA", True, DWEB)
    rec.record_cid_fetch("whisper-base", "QmA", True, DWEB)
    rec.record_cid_fetch("whisper-base", "QmA", False, IPFS)
    assert rec.flush(timeout=10)
    (row,) = rec.cids("whisper-base")
    assert (row["success_count"], row["failure_count"]) == (2, 1)
    assert row["gateway_url"] == DWEB  # the gateway that actually served it


def test_cid_for_model_prefers_the_most_recently_used(rec: Records) -> None:
    assert rec.cid_for_model("whisper-base") is None
    rec.upsert_cid("whisper-base", "QmOld", model_type="stt")
    time.sleep(0.005)
    rec.upsert_cid("whisper-base", "QmNew", model_type="stt")
    rec.upsert_cid("whisper-base", "QmOnnx", model_type="onnx")
    assert rec.cid_for_model("whisper-base", "stt") == "QmNew"
    assert rec.cid_for_model("whisper-base") == "QmOnnx"
    assert rec.cid_for_model("whisper-base", "voice") is None
    time.sleep(0.005)
    rec.record_cid_fetch("whisper-base", "QmOld", True, IPFS)
    assert rec.flush(timeout=10)
    assert rec.cid_for_model("whisper-base", "stt") == "QmOld"
    time.sleep(0.005)
    rec.record_cid_fetch("whisper-base", "QmNew", False, IPFS)  # a failure does not promote
    assert rec.flush(timeout=10)
    assert rec.cid_for_model("whisper-base", "stt") == "QmOld"


def test_record_cid_fetch_adds_an_unknown_pair(rec: Records) -> None:
    rec.record_cid_fetch("m", "bafyX", False, IPFS)
    assert rec.flush(timeout=10)
    (row,) = rec.cids("m")
    assert (row["cid"], row["success_count"], row["failure_count"]) == ("bafyX", 0, 1)
