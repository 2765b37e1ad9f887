"""Tests of scores.py: the formula, its persistence in the records, and the engine's order."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, World
from modelfetch import scores as scores_mod
from modelfetch.engine import Fetcher
from modelfetch.events import AttemptEvent, Event
from modelfetch.records import Records
from modelfetch.records.schema import dt_to_ms
from modelfetch.scores import Scores, with_scores
from modelfetch.testing import HubServer, faults

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
NOW_MS = dt_to_ms(NOW)
MiB = 1024 * 1024
A, B, C = "https://a.example", "https://b.example", "https://c.example"


def clock() -> int:
    return NOW_MS


def outcomes(scores: Scores, origin: str, results: str, *, end: datetime = NOW, **kw: Any) -> None:
    """One outcome per character ('s' success, 'e' error), oldest first, a second apart."""
    for i, r in enumerate(results):
        at = end - timedelta(seconds=len(results) - i)
        ok = r == "s"
        scores.add(
            origin,
            ok,
            dt_to_ms(at),
            latency_ms=kw.get("latency_ms", 50.0) if ok else 1000.0,
            nbytes=kw.get("nbytes", MiB) if ok else 0,
            ttfb_ms=kw.get("ttfb_ms", 10.0) if ok else None,
        )


def test_a_fast_reliable_origin_outranks_a_slow_or_failing_one() -> None:
    scores = Scores(clock=clock)
    outcomes(scores, A, "sssss", ttfb_ms=800.0, latency_ms=4000.0, nbytes=8 * MiB)  # slow
    outcomes(scores, B, "sesee")  # fast when it works, but failing
    outcomes(scores, C, "sssss", ttfb_ms=20.0, latency_ms=100.0, nbytes=8 * MiB)  # fast
    assert scores.rank([A, B, C], key=str)[0] == C
    assert scores.rank([A, C], key=str) == [C, A]
    assert scores.rank([B, C], key=str) == [C, B]
    assert scores.expected_rate(C) > scores.expected_rate(A)


def test_recent_failures_outweigh_old_successes() -> None:
    scores = Scores(clock=clock)
    outcomes(scores, A, "s" * 10 + "eee")  # was good, now failing
    outcomes(scores, B, "eee" + "s" * 10)  # was failing, now good
    assert scores.rank([A, B], key=str) == [B, A]
    snap = scores.snapshot()
    assert snap[A]["attempts"] == snap[B]["attempts"] == 13
    # Same counts, but the recent outcomes weigh more in the rate shown too.
    assert snap[A]["success_rate"] < 60 < 90 < snap[B]["success_rate"]
    # Ten successes do not buy a failing origin a place ahead of an unknown one.
    assert scores.rank([A, C], key=str) == [C, A]


def test_what_is_known_fades_back_to_the_prior_with_time() -> None:
    scores = Scores(clock=clock)
    outcomes(scores, A, "eeee", end=NOW - timedelta(days=3))
    outcomes(scores, B, "eeee")
    prior = scores.score(C)
    assert scores.score(B) < prior / 2  # failing now: far below an unknown origin
    assert prior * 0.9 < scores.score(A) < prior  # failing three days ago: nearly forgiven


def test_unknown_origins_keep_the_configured_order_at_a_neutral_place() -> None:
    scores = Scores(clock=clock)
    assert scores.rank([C, A, B], key=str) == [C, A, B]
    outcomes(scores, A, "ssss")
    outcomes(scores, B, "eeee")
    # Proven good first, then the unknown, then the proven bad.
    assert scores.rank([B, C, A], key=str) == [A, C, B]
    assert scores.snapshot().keys() == {A, B}
    assert not scores.known(C) and scores.expected_rate(C) == scores_mod.PRIOR_RATE


def test_about_equally_good_origins_keep_their_order() -> None:
    scores = Scores(clock=clock)
    outcomes(scores, A, "ssss", ttfb_ms=10.0)
    outcomes(scores, B, "ssss", ttfb_ms=12.0)
    assert scores.score(A) != scores.score(B)
    assert scores.rank([A, B], key=str) == [A, B]
    assert scores.rank([B, A], key=str) == [B, A]


def test_only_network_attempts_of_an_origin_are_learnt() -> None:
    scores = Scores(clock=clock)
    ignored: list[Event] = [
        AttemptEvent("m", "f", "cache", "hit", timestamp=NOW),
        AttemptEvent("m", "f", "cache", "error", error_type="CacheMiss", timestamp=NOW),
        AttemptEvent("m", "f", None, "exhausted", timestamp=NOW),
        AttemptEvent("m", "f", "ipfs", "skipped", gateway=A, timestamp=NOW),
        AttemptEvent("m", "f", "ipfs", "error", gateway=None, timestamp=NOW),
    ]
    for event in ignored:
        scores.listener(event)
    assert scores.snapshot() == {}
    scores.listener(
        AttemptEvent(
            "m", "f", "ipfs", "success", gateway=A, latency_ms=500.0, bytes_downloaded=MiB,
            ttfb_ms=40.0, timestamp=NOW,
        )
    )  # fmt: skip
    scores.listener(AttemptEvent("m", "g", "huggingface", "error", gateway=B, timestamp=NOW))
    snap = scores.snapshot()
    assert snap[A] == {
        "score": snap[A]["score"],
        "ttfb_ms": 40.0,
        "throughput_bps": 2 * MiB,
        "success_rate": 100.0,
        "attempts": 1,
    }
    assert 0 < snap[A]["score"] <= 100
    assert snap[B]["ttfb_ms"] is None and snap[B]["throughput_bps"] is None
    assert snap[B]["success_rate"] == 0.0 and snap[B]["score"] < snap[A]["score"]


def test_scores_loaded_from_the_records_are_the_ones_learnt_live(tmp_path: Path) -> None:
    live = Scores(clock=clock)
    events = [
        AttemptEvent("m", f"f{i}", "ipfs", status, gateway=gw, latency_ms=100.0 + i,
                     bytes_downloaded=MiB * (status == "success"),
                     ttfb_ms=5.0 + i if status == "success" else None,
                     timestamp=NOW - timedelta(minutes=30 - i))
        for i, (gw, status) in enumerate(
            [(A, "success"), (B, "error"), (A, "error"), (B, "success"), (A, "success")]
        )
    ]  # fmt: skip
    with Records(tmp_path / "records.sqlite3", retention=timedelta(days=3650)) as records:
        for event in events:
            records.listener(event)
            live.listener(event)
        records.listener(AttemptEvent("m", "x", "cache", "hit", timestamp=NOW))
        assert records.flush(10)
        loaded = Scores.load(records, clock=clock)
        health = with_scores(records.health(), loaded)
    assert loaded.snapshot() == live.snapshot()
    assert loaded.rank([B, A], key=str) == live.rank([B, A], key=str)
    gw = health["ipfs"]["gateways"][A]
    assert gw["score"] == live.snapshot()[A]["score"]
    assert {"status", "success_rate", "ttfb_ms", "throughput_bps"} <= set(gw)


def test_each_origin_feeds_its_newest_outcomes_only(tmp_path: Path) -> None:
    with Records(tmp_path / "records.sqlite3") as records:
        now = datetime.now(UTC)
        for i in range(5):
            at = now - timedelta(minutes=10 - i)
            records.listener(AttemptEvent("m", f"a{i}", "ipfs", "success", gateway=A, timestamp=at))
        for i in range(2):
            at = now - timedelta(minutes=20 - i)
            records.listener(AttemptEvent("m", f"b{i}", "huggingface", "error", gateway=B,
                                          timestamp=at))  # fmt: skip
        records.listener(AttemptEvent("m", "c", "ipfs", "skipped", gateway=C, timestamp=now))
        records.listener(AttemptEvent("m", "c", "cache", "hit", timestamp=now))
        assert records.flush(10)
        rows = records.recent_outcomes(per_origin=3)
    assert [(r[0], r[2]) for r in rows] == [(B, False)] * 2 + [(A, True)] * 3
    assert [r[3] for r in rows] == sorted(r[3] for r in rows)  # oldest first
    assert [r[3] for r in rows[2:]] == [dt_to_ms(now - timedelta(minutes=m)) for m in (8, 7, 6)]


def test_no_records_file_gives_empty_scores_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "none" / "records.sqlite3"
    assert Scores.from_file(path, retention=timedelta(hours=24)).snapshot() == {}
    assert not path.exists()
    assert Scores.load(None).snapshot() == {}


# -- the engine: scores decide the order within a layer, across runs ----------------------


def attempt_order(events: list[Any]) -> list[str | None]:
    return [e.gateway for e in events if isinstance(e, AttemptEvent) and e.layer == "ipfs"]


async def pull(world: World, *, records: bool = True) -> list[Any]:
    events: list[Any] = []
    settings = world.with_settings(order=("cache", "ipfs"))
    async with Fetcher(settings, listeners=[events.append], records=records) as fetcher:
        result = await fetcher.pull_model(world.spec.name)
    assert result.ok, result.errors
    return events


def forget_files(world: World) -> None:
    """The model's files gone, its records kept: the next run must fetch everything again."""
    shutil.rmtree(world.models_dir / world.spec.dir)


@pytest.mark.parametrize("remembered", [True, False], ids=["records", "no-records"])
async def test_an_origin_that_failed_last_run_is_asked_after_the_healthy_one(
    world: World, remembered: bool
) -> None:
    gw1, gw2 = world.gateways
    gw1.inject(faults.status(500))
    first = await pull(world)
    assert attempt_order(first)[0] == gw1.url  # config order: nothing known yet
    assert {e.gateway for e in first if e.status == "success"} == {gw2.url}

    gw1.clear_faults()
    forget_files(world)
    before = gw1.request_count()
    second = await pull(world, records=remembered)  # a new Fetcher: a new run
    if remembered:
        # The records say gw1 failed: this run asks gw2 first, and gw2 serves every file.
        assert attempt_order(second) == [gw2.url] * len(world.files)
        assert gw1.request_count() == before
    else:
        # The control: without the records, gw1 (healthy again) comes first, as configured.
        assert set(attempt_order(second)) == {gw1.url}


async def test_what_a_run_learns_counts_for_its_next_files(world: World) -> None:
    gw1, gw2 = world.gateways
    gw1.inject(faults.status(500))
    events: list[Any] = []
    settings = world.with_settings(order=("cache", "ipfs"), concurrency=1)
    async with Fetcher(settings, listeners=[events.append], records=False) as fetcher:
        result = await fetcher.pull_model(world.spec.name)
    assert result.ok, result.errors
    order = attempt_order(events)
    # The first file tries gw1 (twice: its retries), then gw2; the next files go to gw2 first.
    tried_gw1 = [i for i, gw in enumerate(order) if gw == gw1.url]
    assert tried_gw1 and max(tried_gw1) < order.index(gw2.url)
    assert order.count(gw2.url) == len(world.files)


async def test_origins_skipped_are_recorded_with_why_but_not_scored(world: World) -> None:
    refusing = faults.unused_url()
    ipfs = replace(world.settings.ipfs, gateways=(refusing, *(g.url for g in world.gateways)))
    settings = world.with_settings(ipfs=ipfs, concurrency=1, order=("cache", "ipfs"))
    async with Fetcher(settings) as fetcher:
        result = await fetcher.pull_model(world.spec.name)
        assert result.ok, result.errors
        snap = fetcher.scores.snapshot()
    with Records(settings.records_path) as records:
        rows = [r for r in records.attempts() if r["gateway"] == refusing]
    assert sorted(r["status"] for r in rows) == ["error"] + ["skipped"] * (len(world.files) - 1)
    assert all(r["error_message"].startswith("down: ") for r in rows if r["status"] == "skipped")
    assert snap[refusing]["attempts"] == 1  # the one refused connection, not the skips


async def test_a_mirror_is_asked_before_the_hub_however_well_the_hub_scored(
    world: World,
) -> None:
    # A machine that pulled from the hub for months, then given a mirror: the hub's fine
    # record must not keep the mirror unused (sparing the hub is what mirrors are for).
    events: list[Any] = []
    settings = world.with_settings(order=("cache", "huggingface"))
    async with Fetcher(settings, listeners=[events.append]) as fetcher:
        assert (await fetcher.pull_model(world.spec.name)).ok
    forget_files(world)
    with HubServer() as mirror:
        for path, data in world.files.items():
            mirror.add_file(REPO, path, data)
        hf = replace(settings.huggingface, mirrors=(mirror.url,))
        events.clear()
        async with Fetcher(replace(settings, huggingface=hf), listeners=[events.append]) as fetcher:
            known = fetcher.scores
            assert known.score(world.hub.url) > known.score(mirror.url)  # by score: hub first
            result = await fetcher.pull_model(world.spec.name)
        assert result.ok, result.errors
        tried = [
            e.gateway for e in events if isinstance(e, AttemptEvent) and e.layer == "huggingface"
        ]
        assert tried and set(tried) == {mirror.url}
        assert {f.gateway for f in result.files} == {mirror.url}
