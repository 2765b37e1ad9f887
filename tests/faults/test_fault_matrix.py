"""The fault matrix: each real fault, its expected outcome, and what was checked."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from conftest import CID, REPO, World, leftovers, make_world
from modelfetch.config import TransferSettings
from modelfetch.engine import Fetcher, ModelResult
from modelfetch.errors import DiskFull, ReadOnly
from modelfetch.records import Records
from modelfetch.testing import GatewayServer, HubServer, faults
from modelfetch.testing.onnx import tiny_onnx_model

BIG = "onnx/model.onnx"
Check = Callable[[str], None]


# The cases about one stream (a cut, a stall, waits between tries) keep to one connection:
# with several, each connection's range is smaller than the faults' cut-off points.
ONE_CONNECTION = TransferSettings(connections=1)


def big_files(size_mib: int = 24) -> dict[str, bytes]:
    return {
        "config.json": b'{"fault": "matrix"}',
        BIG: tiny_onnx_model(seed=11, padding=size_mib << 20),
    }


async def pull(world: World, **changes: Any) -> ModelResult:
    settings = replace(world.settings, **changes) if changes else world.settings
    async with Fetcher(settings) as fetcher:
        return await fetcher.pull_model(world.spec.name)


def records_of(world: World) -> list[dict[str, Any]]:
    with Records(world.settings.records_path) as records:
        return records.attempts()


def assert_verified(world: World, check: Check) -> None:
    for path, data in world.files.items():
        on_disk = world.final(path).read_bytes()
        assert hashlib.sha256(on_disk).digest() == hashlib.sha256(data).digest(), path
    check("final SHA-256 of every file")
    assert leftovers(world.models_dir) == []
    check("no temp, partial or .bak file left")


def cli_env(world: World, config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFETCH", "HF_"))}
    env.update(
        MODELFETCH_HOME=str(world.models_dir),
        MODELFETCH_CONFIG=str(config),
        HF_ENDPOINT=world.hub.url,
        MODELFETCH_IPFS_GATEWAYS=",".join(g.url for g in world.gateways) or "http://x",
    )
    return env


def write_config(world: World, tmp_path: Path, order: str = '["cache", "huggingface"]') -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f"order = {order}\n[huggingface]\nretries = 2\ntimeout = 5\nbackoff = 0.05\n"
        f'[models.{world.spec.name}]\ndir = "{world.spec.dir}"\n'
        f"files = {json.dumps(list(world.files))}\n"
        f'huggingface = {{ repo = "{REPO}" }}\nipfs = {{ cid = "{CID}" }}\n'
    )
    return config


def pull_process(world: World, config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "modelfetch", "pull", world.spec.name, "--json"],
        env=cli_env(world, config),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def partial_size(models_dir: Path) -> int:
    """Bytes the partials' control files say are on disk (the data files are sparse)."""
    total = 0
    for control in (models_dir / ".modelfetch" / "partial").glob("*.json"):
        try:
            done = json.loads(control.read_text()).get("done", [])
        except (OSError, ValueError):
            continue  # being replaced right now
        total += sum(end - start for start, end, _origin in done)
    return total


@pytest.fixture
def big_world(tmp_path: Path, hub: HubServer, gw1: GatewayServer, gw2: GatewayServer) -> World:
    return make_world(tmp_path, hub, [gw1, gw2], files=big_files())


@pytest.mark.fault(name="SIGKILL at ~50 %, then rerun", expected="rerun fetches <= 55 %")
def test_sigkill_then_resume(big_world: World, tmp_path: Path, checked: Check) -> None:
    size = len(big_world.files[BIG])
    big_world.hub.inject(faults.slow(8 << 20), path=BIG, on="cdn")
    config = write_config(big_world, tmp_path)
    proc = pull_process(big_world, config)
    deadline = time.monotonic() + 60
    while partial_size(big_world.models_dir) < size // 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "download never reached 50 %"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = partial_size(big_world.models_dir)
    checked(f"killed with {kept / size:.0%} on disk")
    big_world.hub.clear_faults()
    big_world.hub.reset_counters()
    rerun = pull_process(big_world, config)
    _out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    fetched = big_world.hub.bytes_sent(BIG)
    assert fetched <= 0.55 * size, f"rerun fetched {fetched / size:.0%}"
    checked(f"origin byte counter: rerun fetched {fetched / size:.0%} of the file")
    assert_verified(big_world, checked)


@pytest.mark.fault(name="two processes pull one model", expected="each file transferred once")
def test_two_processes_share_the_work(big_world: World, tmp_path: Path, checked: Check) -> None:
    big_world.hub.inject(faults.slow(16 << 20), path=BIG, on="cdn")
    config = write_config(big_world, tmp_path)
    procs = [pull_process(big_world, config) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    for path, data in big_world.files.items():
        assert big_world.hub.bytes_sent(path) == len(data), path
        assert big_world.hub.request_count(path, method="HEAD") <= 1, path
    gets = big_world.hub.request_count(BIG, method="GET")
    checked(f"hub sent each file's bytes once (the big one over {gets} ranged GETs), one HEAD each")
    sources = sorted(
        f["source"] for out, _ in outputs for f in json.loads(out)["models"][0]["files"]
    )
    assert sources == ["cache", "cache", "huggingface", "huggingface"]
    checked("the waiting process used the verified file (source cache)")
    assert_verified(big_world, checked)


@pytest.mark.fault(name="stall mid-body, then resume", expected="next source continues via Range")
async def test_stall_then_resume(big_world: World, checked: Check) -> None:
    size = len(big_world.files[BIG])
    big_world.gateways[0].inject(faults.stall(after_bytes=size // 2), path=BIG)
    ipfs = replace(big_world.settings.ipfs, timeout=1.0, retries=1)
    result = await pull(big_world, ipfs=ipfs, transfer=ONE_CONNECTION)
    assert result.ok, result.errors
    second = big_world.gateways[1].bytes_sent(BIG)
    assert 0 < second <= 0.55 * size
    checked(f"gateway 2 sent {second / size:.0%} of the file")
    rows = records_of(big_world)
    assert any(
        r["error_type"] == "Stalled" and r["gateway"] == big_world.gateways[0].url for r in rows
    )
    checked("records: Stalled attempt on gateway 1")
    assert_verified(big_world, checked)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.fault(name="ENOSPC (8 MiB tmpfs)", expected="DiskFull naming path and size")
async def test_disk_full(tmp_path: Path, hub: HubServer, tiny_fs: Path, checked: Check) -> None:
    world = make_world(tmp_path, hub, [], files=big_files(size_mib=24), with_ipfs=False)
    world = replace(world, models_dir=tiny_fs, settings=replace(world.settings, models_dir=tiny_fs))
    cached = tiny_fs / world.spec.dir / "config.json"
    result = await pull(world)
    assert not result.ok
    assert cached.read_bytes() == world.files["config.json"]
    checked("the small file already in place is untouched")
    (error,) = result.errors
    assert isinstance(error, DiskFull)
    assert str(tiny_fs) in str(error) and "bytes needed" in str(error)
    checked(f"message: {str(error)[:70]}…")
    assert not world.final(BIG).exists()
    assert leftovers(tiny_fs) == []
    checked("no partial file at the final path or in .modelfetch")


@pytest.mark.fault(name="ENOSPC mid-write", expected="DiskFull, partial removed")
async def test_disk_fills_during_transfer(
    tmp_path: Path, hub: HubServer, tiny_fs: Path, checked: Check
) -> None:
    # Two 5 MiB files each pass the free-space check of an 8 MiB disk, then fill it together.
    files = {f"part{i}.onnx": tiny_onnx_model(seed=i, padding=5 << 20) for i in (1, 2)}
    world = make_world(tmp_path, hub, [], files=files, with_ipfs=False)
    hub.inject(faults.slow(8 << 20))
    world = replace(
        world,
        models_dir=tiny_fs,
        settings=replace(world.settings, models_dir=tiny_fs, concurrency=2),
    )
    result = await pull(world)
    assert not result.ok and all(isinstance(e, DiskFull) for e in result.errors)
    assert any("no space left on the device while writing" in str(e) for e in result.errors)
    checked(f"DiskFull: {str(result.errors[0])[:60]}…")
    assert leftovers(tiny_fs) == []
    for f in result.files:
        assert hashlib.sha256(f.local_path.read_bytes()).hexdigest() == f.sha256
    checked("partial removed; any file that did fit is verified")


@pytest.mark.fault(name="read-only models dir", expected="ReadOnly, clear message")
async def test_read_only_dir(tmp_path: Path, hub: HubServer, checked: Check) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs: {done.stderr.decode().strip()}")
    try:
        world = make_world(tmp_path, hub, [], with_ipfs=False)
        settings = replace(world.settings, models_dir=ro)
        async with Fetcher(settings) as fetcher:
            result = await fetcher.pull_model(world.spec.name)
        assert not result.ok
        assert all(isinstance(e, ReadOnly) for e in result.errors), result.errors
        assert "not writable" in str(result.errors[0])
        checked(f"message: {str(result.errors[0])[:70]}…")
        assert list(ro.iterdir()) == []
        checked("nothing written")
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


@pytest.mark.fault(name="oversize body", expected="cut off, rejected, next gateway")
async def test_oversize_body(big_world: World, checked: Check) -> None:
    big_world.gateways[0].inject(faults.oversize(extra_bytes=4096, content_length="sent"))
    result = await pull(big_world)
    assert result.ok, result.errors
    rows = [r for r in records_of(big_world) if r["gateway"] == big_world.gateways[0].url]
    assert rows and all(r["error_type"] == "SizeMismatch" for r in rows)
    assert all(r["bytes_downloaded"] <= len(big_world.files[r["file"]]) for r in rows)
    checked("records: SizeMismatch, never more than the file's size kept")
    assert {f.gateway for f in result.files} == {big_world.gateways[1].url}
    assert_verified(big_world, checked)


@pytest.mark.fault(name="bit-flipped body", expected="HashMismatch, next gateway")
async def test_bit_flip(big_world: World, checked: Check) -> None:
    big_world.gateways[0].inject(faults.wrong_bytes(), path=BIG)
    result = await pull(big_world)
    assert result.ok
    rows = [r for r in records_of(big_world) if r["file"] == BIG and r["status"] == "error"]
    assert [r["error_type"] for r in rows if r["layer"] == "ipfs"] == ["HashMismatch"]
    checked("records: one HashMismatch on gateway 1, no retry of a lying gateway")
    assert_verified(big_world, checked)


@pytest.mark.fault(name="429 storm with Retry-After", expected="waits as told, then succeeds")
async def test_429_storm(big_world: World, checked: Check) -> None:
    big_world.hub.inject(faults.too_many_requests(retry_after=1), path=BIG, on="cdn", times=2)
    hf = replace(big_world.settings.huggingface, retries=3, backoff=0.01)
    started = time.monotonic()
    result = await pull(
        big_world, order=("cache", "huggingface"), huggingface=hf, transfer=ONE_CONNECTION
    )
    assert result.ok
    assert time.monotonic() - started >= 1.9
    checked("waited 2 x Retry-After: 1 s (backoff alone is 0.01 s)")
    rows = [r for r in records_of(big_world) if r["file"] == BIG and r["layer"] == "huggingface"]
    assert [r["status"] for r in reversed(rows)] == ["error", "error", "success"]  # newest first
    checked("records: 429, 429, success")
    assert_verified(big_world, checked)


@pytest.mark.fault(name="truncated body", expected="resumes from the kept bytes")
async def test_truncated_body(big_world: World, checked: Check) -> None:
    size = len(big_world.files[BIG])
    big_world.hub.inject(faults.truncated(after_bytes=size // 2), path=BIG, on="cdn", times=1)
    result = await pull(big_world, order=("cache", "huggingface"), transfer=ONE_CONNECTION)
    assert result.ok
    sent = big_world.hub.bytes_sent(BIG)
    assert sent <= 1.05 * size
    checked(f"hub sent {sent / size:.2f}x the file in all")
    assert_verified(big_world, checked)


@pytest.mark.fault(name="connection reset mid-body", expected="resumes from the kept bytes")
async def test_reset_mid_body(big_world: World, checked: Check) -> None:
    size = len(big_world.files[BIG])
    big_world.gateways[0].inject(faults.reset(after_bytes=size // 3), path=BIG, times=1)
    result = await pull(big_world, transfer=ONE_CONNECTION)
    assert result.ok
    sent = big_world.gateways[0].bytes_sent(BIG)
    assert sent <= 1.05 * size
    checked(f"gateway sent {sent / size:.2f}x the file in all (retry resumed by Range)")
    assert_verified(big_world, checked)


@pytest.mark.fault(name="redirect loop", expected="capped, TooManyRedirects")
async def test_redirect_loop(big_world: World, checked: Check) -> None:
    big_world.gateways[0].inject(faults.redirect_loop())
    result = await pull(big_world)
    assert result.ok
    rows = [r for r in records_of(big_world) if r["gateway"] == big_world.gateways[0].url]
    assert rows and {r["error_type"] for r in rows} == {"TooManyRedirects"}
    assert big_world.gateways[0].request_count() <= 11 * (len(big_world.files) + 1)  # + probe
    checked("records: TooManyRedirects after 10 hops, not retried")
    assert_verified(big_world, checked)


@pytest.mark.fault(name="HTML error page instead of the file", expected="rejected as HTML")
async def test_html_page(big_world: World, checked: Check) -> None:
    big_world.gateways[0].inject(faults.html_error_page(), path=BIG)
    result = await pull(big_world)
    assert result.ok
    rows = [
        r
        for r in records_of(big_world)
        if r["gateway"] == big_world.gateways[0].url and r["status"] == "error"
    ]
    assert rows and "sent an HTML page" in rows[0]["error_message"]
    checked("records: the error says an HTML page was sent")
    assert_verified(big_world, checked)


@pytest.mark.fault(name="partial kept for a changed file", expected="stale partial discarded")
async def test_stale_partial_discarded(big_world: World, checked: Check) -> None:
    size = len(big_world.files[BIG])
    big_world.hub.inject(faults.reset(after_bytes=size // 2), path=BIG, on="cdn")
    one_try = replace(big_world.settings.huggingface, retries=1)
    await pull(
        big_world, order=("cache", "huggingface"), huggingface=one_try, transfer=ONE_CONNECTION
    )
    assert partial_size(big_world.models_dir) > 0
    checked("a partial was kept after the cut")
    big_world.hub.clear_faults()
    new = {**big_world.files, BIG: tiny_onnx_model(seed=12, padding=24 << 20)}
    big_world.hub.add_file(REPO, BIG, new[BIG])
    world = replace(big_world, files=new)
    big_world.hub.reset_counters()
    result = await pull(world, order=("cache", "huggingface"))
    assert result.ok
    assert big_world.hub.bytes_sent(BIG) >= len(new[BIG])
    checked("the new file was fetched whole (old prefix not reused)")
    assert_verified(world, checked)
