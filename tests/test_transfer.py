"""Transfers over many connections and origins, against loopback origins with real faults."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from conftest import World, leftovers, make_world
from modelfetch.config import TransferSettings
from modelfetch.engine import Fetcher, ModelResult
from modelfetch.events import AttemptEvent
from modelfetch.records import Records
from modelfetch.testing import GatewayServer, HubServer, faults
from modelfetch.testing.faults import unused_url

MiB = 1 << 20
BIG = "model.bin"
# Small pieces, so a few MiB make many: the tests stay fast and still cross every path.
SPLIT = TransferSettings(connections=8, min_segment=MiB // 2, min_steal=MiB // 4, hedge_delay=2)


def big_files(size: int = 8 * MiB) -> dict[str, bytes]:
    return {"config.json": b'{"a": 1}', BIG: os.urandom(size)}


@pytest.fixture
def gw3() -> Any:
    with GatewayServer() as server:
        yield server


def world_of(tmp_path: Path, hub: HubServer, gateways: list[GatewayServer], **kw: Any) -> World:
    return make_world(tmp_path, hub, gateways, files=big_files(**kw))


async def pull(world: World, **changes: Any) -> tuple[ModelResult, list[Any]]:
    events: list[Any] = []
    settings = replace(world.settings, **{"transfer": SPLIT, **changes})
    async with Fetcher(settings, listeners=[events.append]) as fetcher:
        result = await fetcher.pull_model(world.spec.name)
    return result, events


def assert_right(world: World, result: ModelResult) -> None:
    assert result.ok, result.errors
    for path, data in world.files.items():
        got = world.final(path).read_bytes()
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), path
    assert leftovers(world.models_dir) == []


def errors_of(events: list[Any], gateway: str) -> list[AttemptEvent]:
    return [
        e
        for e in events
        if isinstance(e, AttemptEvent) and e.status == "error" and e.gateway == gateway
    ]


async def test_one_capped_origin_serves_a_large_file_over_many_connections(
    tmp_path: Path, hub: HubServer
) -> None:
    world = world_of(tmp_path, hub, [])
    hub.limit(per_connection=4 * MiB)
    result, _ = await pull(world, order=("cache", "huggingface"))
    assert_right(world, result)
    ranged = [r for r in hub.sent_ranges(BIG) if r.ranged]
    assert len(ranged) >= SPLIT.connections  # the file came in ranges, not one stream
    assert hub.max_concurrent_bodies >= 4  # several of them at once
    assert hub.bytes_sent(BIG) == len(world.files[BIG])  # and every byte exactly once
    assert hub.request_count("config.json", method="GET") == 1  # small files: one request


async def test_every_origin_that_has_the_file_gets_a_share(
    tmp_path: Path, hub: HubServer, gw1: GatewayServer, gw2: GatewayServer
) -> None:
    world = world_of(tmp_path, hub, [gw1, gw2])
    for origin in (hub, gw1, gw2):
        origin.limit(total=3 * MiB)
    result, _ = await pull(world)
    assert_right(world, result)
    shares = {o.url: o.bytes_sent(BIG) for o in (hub, gw1, gw2)}
    assert all(n > 0 for n in shares.values()), shares
    assert sum(shares.values()) == len(world.files[BIG])
    (big,) = [f for f in result.files if f.path == BIG]
    assert {gw for _, gw, _ in big.origins} == set(shares)  # the result says who sent what


async def test_a_slow_origin_loses_its_ranges_to_a_fast_one(
    tmp_path: Path, hub: HubServer, gw1: GatewayServer
) -> None:
    world = world_of(tmp_path, hub, [gw1], size=16 * MiB)
    gw1.limit(per_connection=256 * 1024)  # the first layer's origin, but slow
    result, _ = await pull(world)
    assert_right(world, result)
    slow, fast = gw1.bytes_sent(BIG), hub.bytes_sent(BIG)
    assert slow + fast >= len(world.files[BIG])  # (a cut piece may have sent a little more)
    assert slow < fast / 3, (slow, fast)  # work stealing moved its pieces to the hub


async def test_an_origin_dying_mid_range_costs_only_that_range(
    tmp_path: Path, hub: HubServer, gw1: GatewayServer, gw2: GatewayServer
) -> None:
    world = world_of(tmp_path, hub, [gw1, gw2])
    gw1.inject(faults.reset(after_bytes=100_000), path=BIG, times=3)
    result, events = await pull(world)
    assert_right(world, result)
    died = [e for e in errors_of(events, gw1.url) if e.file == BIG]
    assert died and {e.error_type for e in died} <= {"ConnectFailed", "Truncated"}
    sent = hub.bytes_sent(BIG) + gw1.bytes_sent(BIG) + gw2.bytes_sent(BIG)
    # the cut ranges resumed, not redone (a stolen piece's request may overshoot a little)
    assert sent <= 1.25 * len(world.files[BIG])


async def test_an_origin_lying_about_one_range_is_found_and_distrusted(
    tmp_path: Path, hub: HubServer, gw1: GatewayServer, gw2: GatewayServer
) -> None:
    world = world_of(tmp_path, hub, [gw1, gw2])
    size = len(world.files[BIG])
    for offset in range(12345, size, 256 * 1024):  # whichever range gw2 serves has a lie in it
        gw2.inject(faults.wrong_bytes(file_offset=offset), path=BIG)
    result, events = await pull(world)
    assert_right(world, result)
    assert any(r.ranged for r in gw2.sent_ranges(BIG))  # it did serve some of the file
    lies = [e for e in errors_of(events, gw2.url) if e.error_type == "HashMismatch"]
    assert len(lies) == 1 and "wrong bytes were at" in (lies[0].error_message or "")
    with Records(world.settings.records_path) as records:
        rows = [r for r in records.attempts() if r["gateway"] == gw2.url]
    assert [r["error_type"] for r in rows if r["file"] == BIG] == ["HashMismatch"]
    (big,) = [f for f in result.files if f.path == BIG]
    assert gw2.url not in {gw for _, gw, n in big.origins if n}  # none of its bytes are kept
    assert big.gateway != gw2.url


async def test_a_refused_origin_is_down_for_every_file_of_the_run(
    tmp_path: Path, hub: HubServer, gw2: GatewayServer
) -> None:
    refusing = unused_url()
    world = world_of(tmp_path, hub, [gw2])
    ipfs = replace(world.settings.ipfs, gateways=(refusing, gw2.url), retries=3, pause=1.0)
    result, events = await pull(world, ipfs=ipfs, concurrency=1)
    assert_right(world, result)
    refused = errors_of(events, refusing)
    assert len(refused) == 1 and "connection refused" in (refused[0].error_message or "")
    # no pause before the next origin: nothing waited for the 1 s retry pause
    assert all(e.latency_ms is not None and e.latency_ms < 250 for e in refused)
