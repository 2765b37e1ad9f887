"""Fault matrix, the cases of many connections and origins (issue 10): kills, deaths, lies."""

from __future__ import annotations

import json
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest
from test_fault_matrix import (
    BIG,
    Check,
    assert_verified,
    big_world,  # noqa: F401  (a fixture)
    partial_size,
    pull,
    pull_process,
    records_of,
)

from conftest import CID, REPO, World
from modelfetch.config import TransferSettings
from modelfetch.testing import faults
from modelfetch.testing.faults import unused_url

MANY = TransferSettings(connections=8, min_segment=1 << 20, min_steal=256 << 10)


def config_many(world: World, tmp_path: Path) -> Path:
    config = tmp_path / "config-many.toml"
    config.write_text(
        'order = ["cache", "ipfs", "huggingface"]\n'
        "[huggingface]\nretries = 2\ntimeout = 5\nbackoff = 0.05\n"
        "[ipfs]\nretries = 2\ntimeout = 5\npause = 0.05\n"
        "[transfer]\nconnections = 8\nmin_segment = 1\n"
        f'[models.{world.spec.name}]\ndir = "{world.spec.dir}"\n'
        f"files = {json.dumps(list(world.files))}\n"
        f'huggingface = {{ repo = "{REPO}" }}\nipfs = {{ cid = "{CID}" }}\n'
    )
    return config


@pytest.mark.fault(
    name="SIGKILL at ~50 %, 8 connections, 3 origins", expected="rerun fetches <= 55 %"
)
def test_sigkill_during_a_multi_connection_transfer(
    big_world: World,  # noqa: F811
    tmp_path: Path,
    checked: Check,
) -> None:
    size = len(big_world.files[BIG])
    origins = [big_world.hub, *big_world.gateways]
    for origin in origins:
        origin.limit(total=4 << 20)  # 12 MB/s in all: the kill lands mid-transfer
    config = config_many(big_world, tmp_path)
    proc = pull_process(big_world, config)
    deadline = time.monotonic() + 60
    while partial_size(big_world.models_dir) < size // 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "download never reached 50 %"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = partial_size(big_world.models_dir)
    served = sum(o.max_concurrent_bodies for o in origins)
    checked(f"killed with {kept / size:.0%} on disk, {served} bodies at once over 3 origins")
    assert served >= 4
    for origin in origins:
        origin.limit()
        origin.reset_counters()
    rerun = pull_process(big_world, config)
    _out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    fetched = sum(o.bytes_sent(BIG) for o in origins)
    assert fetched <= 0.55 * size, f"rerun fetched {fetched / size:.0%}"
    checked(f"origin byte counters: rerun fetched {fetched / size:.0%} of the file")
    assert_verified(big_world, checked)


@pytest.mark.fault(name="an origin dies mid-range", expected="others take its ranges")
async def test_origin_dies_mid_range(big_world: World, checked: Check) -> None:  # noqa: F811
    gw1 = big_world.gateways[0]
    gw1.inject(faults.reset(after_bytes=64_000), path=BIG)  # every range it serves dies
    result = await pull(big_world, transfer=MANY)
    assert result.ok, result.errors
    cut = [r for r in records_of(big_world) if r["gateway"] == gw1.url and r["file"] == BIG]
    assert cut and all(r["status"] == "error" for r in cut)
    checked(f"records: {len(cut)} cut ranges on gateway 1, none kept as success")
    size = len(big_world.files[BIG])
    sent = sum(o.bytes_sent(BIG) for o in (big_world.hub, *big_world.gateways))
    # Beyond the file itself, origins send what was in flight when a range was cut or
    # stolen (socket buffers, up to a few MiB on loopback, more when the box is busy);
    # restarting cut ranges instead of resuming them would send far more.
    assert sent <= 1.5 * size
    checked(f"origins sent {sent / size:.2f}x the file in all (cut ranges resumed)")
    assert_verified(big_world, checked)


@pytest.mark.fault(name="an origin lies about one range", expected="liar found, file right")
async def test_origin_lies_about_one_range(big_world: World, checked: Check) -> None:  # noqa: F811
    liar = big_world.gateways[1]
    size = len(big_world.files[BIG])
    for offset in range(4321, size, 1 << 20):
        liar.inject(faults.wrong_bytes(file_offset=offset), path=BIG)
    result = await pull(big_world, transfer=MANY)
    assert result.ok, result.errors
    rows = [r for r in records_of(big_world) if r["gateway"] == liar.url and r["file"] == BIG]
    assert [r["error_type"] for r in rows] == ["HashMismatch"]
    assert "wrong bytes were at" in (rows[0]["error_message"] or "")
    checked("records: one HashMismatch naming the wrong ranges, on the liar only")
    (big,) = [f for f in result.files if f.path == BIG]
    assert liar.url not in {gw for _, gw, _ in big.origins}
    checked("none of the liar's bytes kept")
    assert_verified(big_world, checked)


@pytest.mark.fault(name="first gateway black-holed", expected="raced after hedge_delay")
async def test_black_holed_first_gateway(big_world: World, checked: Check) -> None:  # noqa: F811
    hole = big_world.gateways[0]
    hole.inject(faults.black_hole())
    ipfs = replace(big_world.settings.ipfs, timeout=30.0)
    started = time.monotonic()
    result = await pull(big_world, ipfs=ipfs, transfer=replace(MANY, hedge_delay=1.0))
    elapsed = time.monotonic() - started
    assert result.ok, result.errors
    assert elapsed < 10, elapsed  # not the 30 s stall timeout
    checked(f"pull took {elapsed:.1f} s with a 1 s hedge delay (stall timeout 30 s)")
    rows = [r for r in records_of(big_world) if r["gateway"] == hole.url]
    assert rows and all("no first byte within 1 s" in (r["error_message"] or "") for r in rows)
    checked(f"records: {len(rows)} hedged request(s) on the black hole")
    assert_verified(big_world, checked)


@pytest.mark.fault(name="first gateway refuses", expected="costs < 0.25 s, down for the run")
async def test_refusing_first_gateway(big_world: World, checked: Check) -> None:  # noqa: F811
    refusing = unused_url()
    gateways = (refusing, *(g.url for g in big_world.gateways))
    ipfs = replace(big_world.settings.ipfs, gateways=gateways, pause=1.0, retries=3)
    result = await pull(big_world, ipfs=ipfs, transfer=MANY, concurrency=1)
    assert result.ok, result.errors
    rows = [r for r in records_of(big_world) if r["gateway"] == refusing]
    skipped = [r for r in rows if r["status"] == "skipped"]
    rows = [r for r in rows if r["status"] != "skipped"]
    assert len(rows) == 1 and (rows[0]["latency_ms"] or 0) < 250
    checked(f"one refused request ({rows[0]['latency_ms']:.0f} ms), not retried")
    assert skipped and all((r["error_message"] or "").startswith("down: ") for r in skipped)
    checked(f"records: skipped as down for {len(skipped)} later file(s)")
    assert_verified(big_world, checked)
