"""`modelfetch metrics list|summary|health|reset`: tables by default, the API's JSON with --json."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from conftest import ATTEMPT_RECORD_KEYS
from modelfetch.cli import main
from modelfetch.events import AttemptEvent
from modelfetch.records import Records
from modelfetch.scores import Scores

GW1 = "https://gw-one.example"
GW2 = "https://gw-two.example"
HUB = "https://hub.example"


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """A models dir whose records hold a small, known history."""
    root = tmp_path / "models"
    now = datetime.now(UTC)
    events = [
        AttemptEvent("m", "a.bin", "cache", "error", error_type="CacheMiss"),
        AttemptEvent("m", "a.bin", "ipfs", "error", gateway=GW1, latency_ms=30.0,
                     error_type="Stalled", error_message="no bytes for 30 s"),
        AttemptEvent("m", "a.bin", "ipfs", "success", gateway=GW2, latency_ms=120.0,
                     bytes_downloaded=4096),
        AttemptEvent("m", "b.bin", "huggingface", "success", gateway=HUB, latency_ms=80.0,
                     bytes_downloaded=2048),
        AttemptEvent("m", "c.bin", "cache", "hit", latency_ms=1.0),
        AttemptEvent("m", "d.bin", None, "exhausted", error_type="AllSourcesFailed"),
        AttemptEvent("old", "x.bin", "ipfs", "success", gateway=GW1, latency_ms=10.0,
                     timestamp=now - timedelta(hours=3)),
    ]  # fmt: skip
    with Records(root / ".modelfetch" / "records.sqlite3") as records:
        for event in events:
            records.listener(event)
    return root


def run(models_dir: Path, *args: str) -> Result:
    runner = CliRunner(env={"COLUMNS": "250", "MODELFETCH_HOME": str(models_dir)})
    return runner.invoke(main, list(args), catch_exceptions=False)


def records_of(models_dir: Path) -> Records:
    return Records(models_dir / ".modelfetch" / "records.sqlite3")


def json_of(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_list_json_is_the_api_shape(models_dir: Path) -> None:
    doc = json_of(run(models_dir, "metrics", "list", "--json"))
    with records_of(models_dir) as records:
        assert doc == {"metrics": records.attempts()}
    assert len(doc["metrics"]) == 7
    assert doc["metrics"][-1]["model"] == "old"  # newest first
    assert set(doc["metrics"][0]) == ATTEMPT_RECORD_KEYS


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--layer", "ipfs"], 3),
        (["--layer", "cache"], 2),
        (["--limit", "2"], 2),
        (["--since", "1h"], 6),
        (["--since", "5h"], 7),
        (["--since", "2999-01-01T00:00:00Z"], 0),
        (["--layer", "ipfs", "--since", "90m", "--limit", "10"], 2),
    ],
)
def test_list_filters(models_dir: Path, args: list[str], expected: int) -> None:
    doc = json_of(run(models_dir, "metrics", "list", "--json", *args))
    assert len(doc["metrics"]) == expected
    if "--layer" in args:
        assert {r["layer"] for r in doc["metrics"]} == {args[args.index("--layer") + 1]}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--since", "last tuesday"], "since="),
        (["--limit", "0"], "--limit"),
        (["--layer", "ftp"], "--layer"),
    ],
)
def test_list_bad_options_exit_2(models_dir: Path, args: list[str], needle: str) -> None:
    result = run(models_dir, "metrics", "list", *args)
    assert result.exit_code == 2
    assert needle in result.output and "Traceback" not in result.output


def test_list_table(models_dir: Path) -> None:
    result = run(models_dir, "metrics", "list")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for word in ("time (UTC)", "source", "latency", "Stalled: no bytes for 30 s"):
        assert word in out
    lines = [line.split() for line in out.splitlines()]
    assert ["m/a.bin", "ipfs", "gw-one.example", "error", "30", "ms", "Stalled:"] in [
        line[2:9] for line in lines
    ]
    assert ["m/a.bin", "ipfs", "gw-two.example", "success", "120", "ms", "4.0", "KiB"] in [
        line[2:10] for line in lines
    ]
    assert ["m/b.bin", "huggingface", "hub.example", "success"] in [line[2:6] for line in lines]
    assert ["m/d.bin", "all", "layers", "exhausted", "AllSourcesFailed"] in [
        line[2:7] for line in lines
    ]
    assert not out.lstrip().startswith("{")


def test_list_table_shows_the_newest_50_unless_told(tmp_path: Path) -> None:
    root = tmp_path / "models"
    with Records(root / ".modelfetch" / "records.sqlite3") as records:
        for i in range(60):
            records.listener(AttemptEvent("m", f"f{i:02d}", "ipfs", "success", gateway=GW1))
    result = run(root, "metrics", "list")
    assert result.exit_code == 0
    assert "f59" in result.stdout and "f10" in result.stdout and "f09" not in result.stdout
    assert "--limit" in result.stderr
    everything = run(root, "metrics", "list", "--limit", "60")
    assert "f00" in everything.stdout and "--limit" not in everything.stderr


def test_empty_records(tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    assert run(root, "metrics", "list").stdout.strip() == "no download attempts recorded"
    assert json_of(run(root, "metrics", "list", "--json")) == {"metrics": []}
    summary = json_of(run(root, "metrics", "summary", "--json"))
    assert summary["total"] == 0 and summary["ipfs"]["avg_latency"] == 0


def test_summary(models_dir: Path) -> None:
    doc = json_of(run(models_dir, "metrics", "summary", "--json"))
    with records_of(models_dir) as records:
        assert doc == records.summary()
    assert doc["total"] == 7 and doc["cache_hits"] == 1
    assert doc["ipfs"] == {"success": 2, "error": 1, "avg_latency": 65.0}
    assert doc["huggingface"] == {"success": 1, "error": 0, "avg_latency": 80.0}

    table = run(models_dir, "metrics", "summary")
    assert table.exit_code == 0
    lines = {line.split()[0]: line.split() for line in table.stdout.splitlines() if line.strip()}
    assert lines["ipfs"][1:4] == ["2", "1", "65.0"]
    assert lines["huggingface"][1:4] == ["1", "0", "80.0"]
    assert "7 attempt(s) in the last 24 h" in table.stdout
    assert "1 file(s) failed on every layer" in table.stdout


SCORE_KEYS = ("score", "ttfb_ms", "throughput_bps")


def test_health(models_dir: Path) -> None:
    doc = json_of(run(models_dir, "metrics", "health", "--json"))
    with records_of(models_dir) as records:
        health = records.health()
        scores = Scores.load(records).snapshot()
    # The API's report, each gateway with its score added (keys added, none renamed).
    for layer in ("ipfs", "huggingface"):
        for url, gw in doc[layer]["gateways"].items():
            assert {k: gw.pop(k) for k in SCORE_KEYS} == {k: scores[url][k] for k in SCORE_KEYS}
    assert doc == health
    assert set(doc) >= {"ipfs", "huggingface", "cache"}
    assert isinstance(doc["ipfs"]["success_rate"], float)
    assert scores[GW2]["score"] > scores[GW1]["score"]  # GW1's last try failed
    assert scores[GW2]["throughput_bps"] == round(4096 / 0.120)

    table = run(models_dir, "metrics", "health")
    assert table.exit_code == 0
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines() if line.strip()}
    assert rows["ipfs"][1] == doc["ipfs"]["status"]
    assert rows["ipfs"][2] == f"{doc['ipfs']['success_rate']:.1f}"
    assert rows[GW1][1] == doc["ipfs"]["gateways"][GW1]["status"]
    assert rows[HUB][1] == doc["huggingface"]["gateways"][HUB]["status"]
    assert "score" in table.stdout.splitlines()[0]
    assert rows[GW1][-1] == f"{scores[GW1]['score']:.1f}"
    assert rows[GW2][-1] == f"{scores[GW2]['score']:.1f}"
    assert f"cache hit rate {doc['cache']['hit_rate']:.1f} %" in table.stdout


def test_reset(models_dir: Path) -> None:
    doc = json_of(run(models_dir, "metrics", "reset", "--json"))
    assert doc == {"ok": True, "message": "Metrics reset"}
    assert json_of(run(models_dir, "metrics", "list", "--json")) == {"metrics": []}
    assert json_of(run(models_dir, "metrics", "summary", "--json"))["total"] == 0
    plain = run(models_dir, "metrics", "reset")
    assert plain.exit_code == 0 and plain.stdout.startswith("Metrics reset")


def test_dir_and_config_flags_anywhere(models_dir: Path, tmp_path: Path) -> None:
    other = CliRunner(env={"MODELFETCH_HOME": str(tmp_path / "elsewhere")})
    for args in (
        ["metrics", "list", "--json", "--dir", str(models_dir)],
        ["--dir", str(models_dir), "metrics", "list", "--json"],
    ):
        result = other.invoke(main, args)
        assert result.exit_code == 0, result.output
        assert len(json.loads(result.stdout)["metrics"]) == 7


def test_unreadable_records_exit_1(tmp_path: Path) -> None:
    root = tmp_path / "models"
    db = root / ".modelfetch" / "records.sqlite3"
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not a database" * 100)
    result = run(root, "metrics", "summary")
    assert result.exit_code == 1
    assert "records" in result.stderr and "Traceback" not in result.output
    assert db.read_bytes() == b"this is not a database" * 100
