"""`modelfetch cid` and `modelfetch gateways check` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelfetch.testing import GatewayServer, faults

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "ipfs"
IPFS_CAR_DIR = FIXTURES / "gateway-conformance" / "tooling" / "car" / "_fixtures" / "dir"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFETCH", "HF_"))}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "modelfetch", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=60,
    )


@pytest.mark.parametrize(
    "data, args, expected",
    [
        (b"", [], "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"),
        (
            b"hello world\n",
            ["--cid-version", "1"],
            "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4",
        ),
        (
            b"",
            ["--cid-version", "1"],
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
        ),
    ],
)
def test_cid_of_a_file(tmp_path: Path, data: bytes, args: list[str], expected: str) -> None:
    f = tmp_path / "f"
    f.write_bytes(data)
    proc = run("cid", str(f), *args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == expected


def test_cid_of_a_directory_matches_the_fixture() -> None:
    if not IPFS_CAR_DIR.is_dir():
        pytest.skip(f"fixtures not found at {IPFS_CAR_DIR}")
    proc = run("cid", str(IPFS_CAR_DIR), "--profile", "unixfs-v1-2025")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "bafybeidlbwbu73tbjr3atntjz4lq5ego5w2uyof35vvwcnheaftzi3rndu"


def test_cid_bad_input(tmp_path: Path) -> None:
    proc = run("cid", str(tmp_path / "missing"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = run("cid", str(tmp_path), "--cid-version", "2")
    assert proc.returncode == 2


def test_gateways_check(gw1: GatewayServer) -> None:
    dead = faults.unused_url()
    proc = run("gateways", "check", "--json", env={"MODELFETCH_IPFS_GATEWAYS": f"{gw1.url},{dead}"})
    assert proc.returncode == 0, proc.stderr
    found = {g["url"]: g for g in json.loads(proc.stdout)["gateways"]}
    assert found[gw1.url]["ok"] is True and found[gw1.url]["latency_ms"] > 0
    assert found[gw1.url]["trustless"] is False
    assert found[dead]["ok"] is False and "refused" in found[dead]["detail"]
    assert found[gw1.url]["score"] is None and found[dead]["score"] is None  # never used
    assert gw1.request_count("bafkqaaa") >= 1
    text = run("gateways", "check", env={"MODELFETCH_IPFS_GATEWAYS": dead})
    assert text.returncode == 1 and "down" in text.stdout and "score     -" in text.stdout


def test_gateways_check_shows_the_recorded_scores(gw1: GatewayServer, tmp_path: Path) -> None:
    from modelfetch.events import AttemptEvent
    from modelfetch.records import Records

    home = tmp_path / "models"
    dead = faults.unused_url()
    with Records(home / ".modelfetch" / "records.sqlite3") as records:
        for _ in range(3):
            records.listener(AttemptEvent("m", "f", "ipfs", "error", gateway=dead))
            records.listener(
                AttemptEvent(
                    "m", "f", "ipfs", "success", gateway=gw1.url, latency_ms=20.0,
                    bytes_downloaded=10_000, ttfb_ms=2.0,
                )
            )  # fmt: skip
    env = {"MODELFETCH_IPFS_GATEWAYS": f"{dead},{gw1.url}", "MODELFETCH_HOME": str(home)}
    proc = run("gateways", "check", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    found = {g["url"]: g for g in json.loads(proc.stdout)["gateways"]}
    assert set(found[gw1.url]) == {"url", "ok", "latency_ms", "trustless", "detail", "score"}
    assert 0 <= found[dead]["score"] < found[gw1.url]["score"] <= 100
    text = run("gateways", "check", env=env).stdout
    assert f"score {found[gw1.url]['score']:5.1f}  {gw1.url}" in text
