"""The fallback chain against real loopback origins with injected faults."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import time
from dataclasses import replace
from typing import Any

import pytest

from conftest import CID, PROGRESS_EVENT_KEYS, REPO, World, leftovers, make_world, model_files
from modelfetch.catalog import HuggingFaceRef, ModelSpec
from modelfetch.config import HuggingFaceSettings, IPFSSettings
from modelfetch.engine import Fetcher, ModelResult
from modelfetch.errors import AllSourcesFailed
from modelfetch.events import AttemptEvent, ProgressEvent
from modelfetch.testing import GatewayServer, HubServer, faults
from modelfetch.testing.onnx import tiny_onnx_model

ONNX = "onnx/model.onnx"


async def pull(world: World, **changes: Any) -> tuple[ModelResult, list[Any]]:
    events: list[Any] = []
    settings = world.with_settings(**changes) if changes else world.settings
    async with Fetcher(settings, listeners=[events.append]) as fetcher:
        result = await fetcher.pull_model(world.spec.name)
    return result, events


def by_path(result: ModelResult) -> dict[str, Any]:
    return {f.path: f for f in result.files}


def assert_installed(world: World, result: ModelResult) -> None:
    assert result.ok, result.errors
    for path, data in world.files.items():
        assert world.final(path).read_bytes() == data
    assert leftovers(world.models_dir) == []


async def test_first_gateway_serves_every_file_verified(world: World) -> None:
    result, _events = await pull(world)
    assert_installed(world, result)
    files = by_path(result)
    assert {f.source for f in files.values()} == {"ipfs"}
    assert {f.gateway for f in files.values()} == {world.gateways[0].url}
    assert files[ONNX].sha256 == hashlib.sha256(world.files[ONNX]).hexdigest()
    assert files[ONNX].bytes_downloaded == len(world.files[ONNX])
    assert world.gateways[1].request_count() == 0
    # the manifest now holds every file, so later checks need no network
    manifest = json.loads((world.models_dir / ".manifests.json").read_text())
    recorded = manifest["test-model"]["files"]
    assert recorded[ONNX] == {"size": len(world.files[ONNX]), "sha256": files[ONNX].sha256}
    assert set(recorded) == set(world.files)


GATEWAY_FAULTS = {
    "hang": faults.hang(),
    "stall": faults.stall(after_bytes=1000),
    "reset": faults.reset(after_bytes=1000),
    "wrong_bytes": faults.wrong_bytes(),
    "truncated": faults.truncated(after_bytes=1000),
    "404": faults.status(404),
    "500": faults.status(500),
    "429": faults.too_many_requests(retry_after=0.1),
    "html": faults.html_error_page(),
    "oversize": faults.oversize(extra_bytes=5000),
}


@pytest.mark.parametrize("name", sorted(GATEWAY_FAULTS))
async def test_gateway_fault_falls_through_to_a_healthy_source(world: World, name: str) -> None:
    world.gateways[0].inject(GATEWAY_FAULTS[name])
    result, events = await pull(world)
    assert_installed(world, result)
    errors = [
        e
        for e in events
        if isinstance(e, AttemptEvent) and e.status == "error" and e.layer == "ipfs"
    ]
    assert errors, "the faulty gateway's failure must be recorded"
    assert all(e.gateway == world.gateways[0].url for e in errors)
    # files may resume on gw2 from gw1's verified-so-far prefix, or come whole from gw2
    assert all(f.source == "ipfs" for f in result.files)


async def test_refused_gateway_is_skipped(
    tmp_path: Any, hub: HubServer, gw2: GatewayServer
) -> None:
    world = make_world(tmp_path, hub, [gw2])
    settings = replace(
        world.settings, ipfs=replace(world.settings.ipfs, gateways=(faults.unused_url(), gw2.url))
    )
    result, events = await pull(world, ipfs=settings.ipfs)
    assert_installed(world, result)
    refused = [
        e
        for e in events
        if isinstance(e, AttemptEvent) and e.status == "error" and e.layer == "ipfs"
    ]
    assert refused and all(e.error_type == "ConnectFailed" for e in refused)
    assert all("refused" in (e.error_message or "") for e in refused)
    assert {f.gateway for f in result.files} == {gw2.url}


async def test_wrong_bytes_never_reach_the_final_path(world: World) -> None:
    for gw in world.gateways:
        gw.inject(faults.wrong_bytes())
    world.hub.inject(faults.wrong_bytes(), on="cdn")
    world.hub.inject(faults.wrong_bytes(), on="resolve")
    result, events = await pull(world)
    assert not result.ok
    for path in world.files:
        assert not world.final(path).exists()
    assert leftovers(world.models_dir) == []
    err = next(e for e in result.errors if isinstance(e, AllSourcesFailed) and e.path == ONNX)
    # Files run concurrently: an origin caught lying about another file first is skipped
    # for this one, "distrusted" with the mismatch that caught it.
    kinds = {
        (
            a.layer,
            a.origin,
            "HashMismatch" if "distrusted: HashMismatch" in a.message else a.error_type,
        )
        for a in err.attempts
    }
    assert ("ipfs", world.gateways[0].url, "HashMismatch") in kinds
    assert ("ipfs", world.gateways[1].url, "HashMismatch") in kinds
    assert ("huggingface", world.hub.url, "HashMismatch") in kinds
    text = str(err)
    assert "all download layers exhausted" in text and world.gateways[1].url in text
    assert any(isinstance(e, AttemptEvent) and e.status == "exhausted" for e in events)


async def test_html_error_page_rejected_as_such(world: World) -> None:
    for gw in world.gateways:
        gw.inject(faults.html_error_page(), path=ONNX)
    result, _ = await pull(world, order=("cache", "ipfs"))
    err = next(e for e in result.errors if isinstance(e, AllSourcesFailed))
    assert err.path == ONNX
    assert len(err.attempts) == 2
    for attempt in err.attempts:
        assert attempt.error_type in ("SizeMismatch", "HashMismatch", "NotONNX")
        assert "sent an HTML page" in attempt.message
    assert not world.final(ONNX).exists()
    assert leftovers(world.models_dir) == []


async def test_hub_retries_5xx_then_succeeds(world: World) -> None:
    world.hub.inject(faults.status(503), path=ONNX, on="cdn", times=2)
    result, events = await pull(world, order=("cache", "huggingface"))
    assert_installed(world, result)
    assert by_path(result)[ONNX].source == "huggingface"
    errors = [
        e
        for e in events
        if isinstance(e, AttemptEvent)
        and e.status == "error"
        and e.file == ONNX
        and e.layer == "huggingface"
    ]
    assert len(errors) == 2 and all("503" in (e.error_message or "") for e in errors)


async def test_hub_429_honours_retry_after(world: World) -> None:
    world.hub.inject(faults.too_many_requests(retry_after=1), path=ONNX, on="cdn", times=1)
    started = time.monotonic()
    result, _ = await pull(world, order=("huggingface",))
    assert_installed(world, result)
    assert time.monotonic() - started >= 0.95  # backoff alone would wait 0.05 s


async def test_hub_404_is_not_retried_and_says_why(world: World) -> None:
    world.hub.inject(
        faults.status(404, headers={"X-Error-Code": "EntryNotFound"}),
        path="config.json",
        on="resolve",
    )
    result, _ = await pull(world, order=("huggingface",))
    err = next(e for e in result.errors if isinstance(e, AllSourcesFailed))
    assert err.path == "config.json"
    hub_attempts = [
        a for a in err.attempts if a.layer == "huggingface" and a.error_type != "Skipped"
    ]
    assert len(hub_attempts) == 1, "a 404 must not be retried"
    assert "file not found in the repository" in hub_attempts[0].message
    assert world.hub.request_count("config.json") == 1


async def test_gated_repo_message_and_token(world: World) -> None:
    world.hub.set_gated(REPO, token="hf_secret_value")
    result, _ = await pull(world, order=("huggingface",))
    assert not result.ok
    message = str(result.errors[0])
    assert "gated" in message and "HF_TOKEN" in message
    hf = replace(world.settings.huggingface, token="hf_secret_value")
    result, events = await pull(world, order=("huggingface",), huggingface=hf)
    assert_installed(world, result)
    assert "hf_secret_value" not in repr(events)


async def test_hub_reset_mid_body_resumes_with_range(world: World) -> None:
    size = len(world.files[ONNX])
    world.hub.inject(faults.reset(after_bytes=size // 2), path=ONNX, on="cdn", times=1)
    result, _ = await pull(world, order=("huggingface",))
    assert_installed(world, result)
    # the second try asked only for the rest
    assert world.hub.bytes_sent(ONNX) < size * 1.2


async def test_server_ignoring_range_restarts_cleanly(world: World) -> None:
    size = len(world.files[ONNX])
    world.hub.inject(faults.stall(after_bytes=size // 2), path=ONNX, on="cdn", times=1)
    world.hub.inject(faults.ignore_range(), path=ONNX, on="cdn")
    result, _ = await pull(world, order=("huggingface",))
    assert_installed(world, result)


async def test_stall_moves_on_within_the_timeout(world: World) -> None:
    world.gateways[0].inject(faults.stall(after_bytes=1000))
    started = time.monotonic()
    result, events = await pull(world)
    assert_installed(world, result)
    stalls = [e for e in events if isinstance(e, AttemptEvent) and e.error_type == "Stalled"]
    assert stalls
    assert time.monotonic() - started < 15


async def test_cache_hit_needs_no_network(world: World) -> None:
    await pull(world)
    for gw in world.gateways:
        gw.reset_counters()
    world.hub.reset_counters()
    result, events = await pull(world)
    assert_installed(world, result)
    assert {f.source for f in result.files} == {"cache"}
    assert world.hub.request_count() == 0
    assert sum(gw.request_count() for gw in world.gateways) == 0
    hits = [e for e in events if isinstance(e, AttemptEvent) and e.status == "hit"]
    assert len(hits) == len(world.files)


async def test_corrupt_cache_file_goes_to_bak_and_is_replaced(world: World) -> None:
    await pull(world)
    target = world.final(ONNX)
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    result, events = await pull(world)
    assert_installed(world, result)
    assert by_path(result)[ONNX].source == "ipfs"
    assert not target.with_name(target.name + ".bak").exists()
    miss = [
        e for e in events if isinstance(e, AttemptEvent) and e.layer == "cache" and e.file == ONNX
    ]
    assert miss[0].error_type == "HashMismatch"


async def test_corrupt_cache_kept_as_bak_when_nothing_can_replace_it(world: World) -> None:
    await pull(world)
    target = world.final("config.json")
    target.write_bytes(b'{"seed": 9}')
    for gw in world.gateways:
        gw.inject(faults.status(500))
    world.hub.inject(faults.status(404))
    result, _ = await pull(world)
    assert not result.ok
    assert not target.exists()
    assert target.with_name("config.json.bak").read_bytes() == b'{"seed": 9}'


async def test_one_download_for_concurrent_requests(world: World) -> None:
    world.gateways[0].inject(faults.slow(2_000_000), path=ONNX)
    async with Fetcher(world.settings) as fetcher:
        results = await asyncio.gather(*(fetcher.fetch_file(world.spec, ONNX) for _ in range(5)))
    assert len({r.sha256 for r in results}) == 1
    assert world.gateways[0].request_count(ONNX, method="GET") == 1


async def test_invalid_onnx_with_matching_manifest_is_rejected(
    tmp_path: Any, hub: HubServer, gw1: GatewayServer
) -> None:
    bad = {"onnx/model.onnx": b"<html>not a model</html>" * 10}
    world = make_world(tmp_path, hub, [gw1], files=bad)
    from modelfetch.manifest import FileEntry, Manifest

    Manifest(world.models_dir / ".manifests.json").record_files(
        "test-model", {ONNX: FileEntry(len(bad[ONNX]), hashlib.sha256(bad[ONNX]).hexdigest())}
    )
    result, _ = await pull(world)
    err = result.errors[0]
    assert isinstance(err, AllSourcesFailed)
    assert {a.error_type for a in err.attempts} == {"NotONNX"}
    assert not world.final(ONNX).exists()


async def test_small_files_checked_by_git_blob_sha1(world: World) -> None:
    # The hub's ETag (git SHA-1) is the only evidence for config.json: a gateway lying
    # about it must be caught without any manifest.
    world.gateways[0].add_directory(CID, {**world.files, "config.json": b'{"seed": 2}'})
    result, events = await pull(world)
    assert_installed(world, result)
    assert by_path(result)["config.json"].gateway == world.gateways[1].url
    mismatch = [
        e
        for e in events
        if isinstance(e, AttemptEvent)
        and e.file == "config.json"
        and e.error_type == "HashMismatch"
    ]
    assert mismatch and "git blob SHA-1" in (mismatch[0].error_message or "")


async def test_no_evidence_means_nothing_installed(
    tmp_path: Any, hub: HubServer, gw1: GatewayServer
) -> None:
    world = make_world(tmp_path, hub, [gw1], with_hf=False)
    result, _ = await pull(world)
    assert not result.ok and not result.files
    message = str(result.errors[0])
    assert "cannot be verified" in message and "manifest" in message
    assert all(gw1.request_count(p) == 0 for p in world.files)  # only the capability probe
    assert not any(world.final(p).exists() for p in world.files)


async def test_dataset_subdir_and_absolute_redirects(tmp_path: Any) -> None:
    files = model_files(seed=3)
    with HubServer(absolute_redirects=True) as hub:
        for path, data in files.items():
            hub.add_file("org/data", f"tts/{path}", data, repo_type="dataset")
        spec = ModelSpec(
            name="ds",
            dir="tts",
            files=tuple(files),
            huggingface=HuggingFaceRef("org/data", type="dataset", subdir="tts"),
        )
        from conftest import fast_settings

        settings = fast_settings(tmp_path, hub.url, [])
        settings = replace(settings, models={"ds": spec})
        async with Fetcher(settings) as fetcher:
            result = await fetcher.pull_model("ds")
    assert result.ok, result.errors
    for path, data in files.items():
        assert (tmp_path / "tts" / path).read_bytes() == data


async def test_progress_events_every_second_and_complete(world: World) -> None:
    world.gateways[0].inject(faults.slow(100_000), path=ONNX)
    world.gateways[0].inject(faults.stall(after_bytes=150_000), path=ONNX, times=1)
    settings_ipfs = replace(world.settings.ipfs, timeout=2.5)
    started = time.monotonic()
    result, events = await pull(world, ipfs=settings_ipfs)
    assert result.ok
    moving = [
        e
        for e in events
        if isinstance(e, ProgressEvent) and e.file == ONNX and e.status == "downloading"
    ]
    times = [e.timestamp for e in moving]
    assert time.monotonic() - started > 2.5
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps and max(gaps) <= 1300, gaps  # at least one event a second, even when stalled
    done = [
        e
        for e in events
        if isinstance(e, ProgressEvent) and e.file == ONNX and e.status == "success"
    ]
    assert done and done[-1].to_dict()["percentComplete"] == 100.0
    shape = moving[-1].to_dict()
    assert set(shape) >= PROGRESS_EVENT_KEYS
    assert shape["currentGateway"] == world.gateways[0].url
    assert any(0 < e.to_dict()["percentComplete"] < 100 for e in moving)


async def test_prefer_order_hf_first(world: World) -> None:
    result, _ = await pull(world, order=("cache", "huggingface", "ipfs"))
    assert_installed(world, result)
    assert {f.source for f in result.files} == {"huggingface"}
    assert {f.gateway for f in result.files} == {world.hub.url}


async def test_large_files_are_bounded_concurrency(tmp_path: Any, hub: HubServer) -> None:
    files = {f"f{i}.bin": bytes([i]) * 200_000 for i in range(6)}
    world = make_world(tmp_path, hub, [], files=files, with_ipfs=False)
    hub.inject(faults.slow(1_000_000))
    settings = replace(
        world.settings,
        concurrency=2,
        ipfs=IPFSSettings(gateways=()),
        huggingface=replace(world.settings.huggingface, timeout=5),
    )
    active: set[str] = set()
    peak = [0]

    def watch(event: Any) -> None:
        if isinstance(event, ProgressEvent) and event.file:
            if event.status in ("attempting", "downloading"):
                active.add(event.file)
            elif event.status in ("success", "error"):
                active.discard(event.file)
            peak[0] = max(peak[0], len(active))

    async with Fetcher(settings, listeners=[watch]) as fetcher:
        result = await fetcher.pull_model(world.spec.name)
    assert result.ok
    assert peak[0] == 2


def test_settings_types_are_frozen() -> None:
    with pytest.raises(AttributeError):
        HuggingFaceSettings().retries = 5  # type: ignore[misc]
    assert tiny_onnx_model(1) != tiny_onnx_model(2)


async def test_every_attempt_is_recorded_in_the_models_dir(world: World) -> None:
    world.gateways[0].inject(faults.status(503), path=ONNX)
    await pull(world)
    await pull(world)
    from modelfetch.records import Records

    with Records(world.settings.records_path) as records:
        rows = records.attempts()
        health = records.health()
    assert ("ipfs", world.gateways[0].url, "error") in {
        (r["layer"], r["gateway"], r["status"]) for r in rows
    }
    assert sum(1 for r in rows if r["status"] == "hit") == len(world.files)
    assert health["cache"]["hit_rate"] == 50.0


async def test_files_come_from_the_commit_the_hub_reported(world: World) -> None:
    result, _ = await pull(world, order=("cache", "huggingface"))
    assert result.ok
    commit = world.hub.commit(REPO)
    gets = [p for m, p in world.hub.requests if m == "GET" and "/resolve/" in p]
    assert gets and all(f"/resolve/{commit}/" in p for p in gets)


async def test_a_hung_gateway_costs_one_stall_timeout_then_the_next_origin(world: World) -> None:
    # The stall timeout (1 s) is shorter than the hedge delay (2 s): each file's request to
    # the hung gateway fails once, and the next origin is asked at once rather than after the
    # hung gateway's retry pause; the hung gateway is not asked again for that file.
    world.gateways[0].inject(faults.hang())
    ipfs = replace(world.settings.ipfs, timeout=1.0, retries=2, connect_timeout=10.0)
    started = time.monotonic()
    result, events = await pull(world, ipfs=ipfs, concurrency=3)
    assert_installed(world, result)
    hung = [e for e in events if isinstance(e, AttemptEvent) and e.gateway == world.gateways[0].url]
    assert len(hung) == len(world.files) and {e.error_type for e in hung} == {"Stalled"}
    assert all(e.latency_ms is not None and e.latency_ms < 2500 for e in hung)
    assert {f.gateway for f in result.files} == {world.gateways[1].url}
    assert time.monotonic() - started < 5  # files in parallel: about one 1 s stall each


async def test_a_black_holed_gateway_is_raced_after_the_hedge_delay(world: World) -> None:
    # A gateway that never answers, with a stall timeout far above the hedge delay: after
    # hedge_delay the next origin is raced and wins; the black hole costs that delay once.
    world.gateways[0].inject(faults.hang())
    ipfs = replace(world.settings.ipfs, timeout=30.0, retries=2)
    transfer = replace(world.settings.transfer, hedge_delay=0.5)
    started = time.monotonic()
    result, events = await pull(world, ipfs=ipfs, transfer=transfer, concurrency=3)
    elapsed = time.monotonic() - started
    assert_installed(world, result)
    assert {f.gateway for f in result.files} == {world.gateways[1].url}
    hedged = [
        e for e in events if isinstance(e, AttemptEvent) and e.gateway == world.gateways[0].url
    ]
    assert hedged and all("no first byte within 0.5 s" in (e.error_message or "") for e in hedged)
    assert elapsed < 5  # not the 30 s stall timeout
