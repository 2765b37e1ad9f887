"""The HTTP service: REST shapes, WebSocket progress, Prometheus, auth, bad input, no blocking."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from conftest import (
    ATTEMPT_RECORD_KEYS,
    CID,
    PROGRESS_EVENT_KEYS,
    REPO,
    World,
    make_world,
    model_files,
)
from modelfetch._net import is_loopback_host
from modelfetch.catalog import ModelSpec
from modelfetch.cli import main
from modelfetch.config import Settings
from modelfetch.errors import ConfigError
from modelfetch.manifest import FileEntry
from modelfetch.records import Records
from modelfetch.server import create_app
from modelfetch.server.app import BROADCASTER, DOWNLOADS, check_bind
from modelfetch.server.broadcast import Outbox
from modelfetch.store import Store
from modelfetch.testing import GatewayServer, HubServer, faults

ONNX = "onnx/model.onnx"
Client = TestClient[web.Request, web.Application]


@contextlib.asynccontextmanager
async def serving(settings: Settings, token: str | None = None) -> AsyncIterator[Client]:
    async with TestClient(TestServer(create_app(settings, token=token))) as client:
        yield client


@pytest.fixture
async def client(world: World) -> AsyncIterator[Client]:
    async with serving(world.settings) as c:
        yield c


async def until_result(
    ws: aiohttp.ClientWebSocketResponse, model: str, timeout: float = 30
) -> list[dict[str, Any]]:
    """Every message up to and including `model`'s download result."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        msg = await ws.receive_json(timeout=max(0.1, deadline - time.monotonic()))
        seen.append(msg)
        if msg["type"] == "model_download_result" and msg["modelId"] == model:
            return seen


def progress_by_file(messages: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for m in messages:
        if m["type"] == "model_download_progress" and m["file"]:
            out.setdefault(m["file"], []).append(m["status"])
    return out


def prom_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text `text` (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        sample, _, value = line.rpartition(" ")
        metric, _, label_text = sample.partition("{")
        if metric != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return 0.0


MODEL_KEYS = {"name", "dir", "state", "bytes", "files", "downloading", "progress", "last_result"}


# -- models ------------------------------------------------------------------------------


async def test_models_list_shape_before_any_download(client: Client, world: World) -> None:
    resp = await client.get("/gm/api/models")
    assert resp.status == 200
    doc = await resp.json()
    assert set(doc) == {"models"}
    by_name = {m["name"]: m for m in doc["models"]}
    assert set(by_name) == set(world.settings.models)  # every catalog model, present or not
    for model in doc["models"]:
        assert set(model) == MODEL_KEYS
    mine = by_name["test-model"]
    assert mine["state"] == "missing" and mine["bytes"] == 0
    assert mine["downloading"] is False and mine["progress"] == {} and mine["last_result"] is None
    assert [f["path"] for f in mine["files"]] == list(world.files)
    assert set(mine["files"][0]) == {"path", "state", "size", "sha256", "reason"}

    one = await client.get("/gm/api/models/test-model")
    assert one.status == 200 and await one.json() == mine


async def test_download_streams_events_to_every_client_and_metrics_follow(
    client: Client, world: World
) -> None:
    ws1 = await client.ws_connect("/gm/api/ws")
    ws2 = await client.ws_connect("/gm/api/ws")
    for ws in (ws1, ws2):
        snap = await ws.receive_json(timeout=5)
        assert snap["type"] == "snapshot" and snap["downloads"] == []
        assert {m["name"] for m in snap["models"]} == set(world.settings.models)
        assert all(set(m) == MODEL_KEYS for m in snap["models"])

    resp = await client.post("/gm/api/models/test-model/download")
    assert resp.status == 202
    assert await resp.json() == {"model": "test-model", "status": "started"}
    assert resp.headers["Location"] == "/gm/api/models/test-model"

    seen1 = await until_result(ws1, "test-model")
    seen2 = await until_result(ws2, "test-model")
    assert [m["type"] for m in seen1] == [m["type"] for m in seen2]  # same stream for both

    assert seen1[0] == {
        "type": "model_download_started",
        "modelId": "test-model",
        "startedAt": seen1[0]["startedAt"],
    }
    statuses = progress_by_file(seen1)
    assert set(statuses) == set(world.files)
    for path, seq in statuses.items():
        assert seq[0] == "attempting", path
        assert "downloading" in seq, path
        assert seq[-1] == "success", path
    progress = [m for m in seen1 if m["type"] == "model_download_progress"]
    assert set(progress[0]) >= PROGRESS_EVENT_KEYS
    success = [m for m in progress if m["status"] == "success"]
    assert all(m["percentComplete"] == 100 and m["source"] == "ipfs" for m in success)
    attempts = [m for m in seen1 if m["type"] == "model_download_attempt"]
    assert {(a["file"], a["layer"], a["status"]) for a in attempts} >= {
        (p, "ipfs", "success") for p in world.files
    }

    result = seen1[-1]
    assert result["ok"] is True and result["errors"] == []
    assert sorted(f["path"] for f in result["files"]) == sorted(world.files)
    assert {f["gateway"] for f in result["files"]} == {world.gateways[0].url}
    for f in result["files"]:
        assert f["sha256"] == hashlib.sha256(world.files[f["path"]]).hexdigest()

    model = await (await client.get("/gm/api/models/test-model")).json()
    assert model["state"] == "complete" and model["downloading"] is False
    assert model["bytes"] == sum(len(d) for d in world.files.values())
    assert {p: e["status"] for p, e in model["progress"].items()} == dict.fromkeys(
        world.files, "success"
    )
    assert model["last_result"] == result

    rows = (await (await client.get("/gm/api/metrics/downloads")).json())["metrics"]
    ipfs_ok = {r["file"] for r in rows if r["layer"] == "ipfs" and r["status"] == "success"}
    assert ipfs_ok == set(world.files)
    assert set(rows[0]) == ATTEMPT_RECORD_KEYS
    only_ipfs = (await (await client.get("/gm/api/metrics/downloads?layer=ipfs")).json())["metrics"]
    assert only_ipfs and {r["layer"] for r in only_ipfs} == {"ipfs"}
    two = (await (await client.get("/gm/api/metrics/downloads?limit=2")).json())["metrics"]
    assert two == rows[:2]
    future = int(time.time() * 1000) + 3_600_000
    later = await client.get(f"/gm/api/metrics/downloads?since={future}")
    assert (await later.json()) == {"metrics": []}
    recent = await client.get("/gm/api/metrics/downloads?since=1h")
    assert len((await recent.json())["metrics"]) == len(rows)

    summary = await (await client.get("/gm/api/metrics/downloads/summary")).json()
    assert summary["ipfs"]["success"] == len(world.files)
    assert set(summary["ipfs"]) == {"success", "error", "avg_latency"}
    assert isinstance(summary["ipfs"]["avg_latency"], float) and summary["ipfs"]["avg_latency"] > 0
    assert {"total", "cache_hits", "huggingface"} <= set(summary)

    health = await (await client.get("/gm/api/metrics/downloads/health")).json()
    assert health["ipfs"]["success_rate"] == 100.0 and health["ipfs"]["status"] == "healthy"
    assert {"status", "success_rate", "avg_latency_ms"} <= set(health["huggingface"])
    assert "hit_rate" in health["cache"]
    served = health["ipfs"]["gateways"][world.gateways[0].url]
    assert {"status", "success_rate", "avg_latency_ms", "p95_latency_ms", "attempts"} <= set(served)
    assert 0 < served["score"] <= 100 and served["ttfb_ms"] > 0 and served["throughput_bps"] > 0

    prom = await client.get("/metrics")
    assert prom.status == 200 and prom.content_type == "text/plain"
    text = await prom.text()
    gw = world.gateways[0].url
    assert prom_value(
        text, "modelfetch_attempts_total", layer="ipfs", gateway=gw, status="success"
    ) == len(world.files)
    assert prom_value(text, "modelfetch_bytes_downloaded_total", layer="ipfs", gateway=gw) == sum(
        len(d) for d in world.files.values()
    )
    assert prom_value(text, "modelfetch_attempt_latency_seconds_count", layer="ipfs") == len(
        world.files
    )
    assert "modelfetch_attempt_latency_seconds_bucket" in text
    assert prom_value(text, "modelfetch_downloads_in_flight") == 0
    assert prom_value(text, "modelfetch_websocket_clients") == 2

    reset = await client.post("/gm/api/metrics/downloads/reset")
    assert reset.status == 200
    assert await reset.json() == {"ok": True, "message": "Metrics reset"}
    assert (await (await client.get("/gm/api/metrics/downloads")).json()) == {"metrics": []}
    await ws1.close()
    await ws2.close()


async def test_second_request_joins_the_running_download(client: Client, world: World) -> None:
    world.gateways[0].inject(faults.slow(400_000), path=ONNX)
    ws = await client.ws_connect("/gm/api/ws")
    await ws.receive_json(timeout=5)
    first = await client.post("/gm/api/models/test-model/download")
    second = await client.post("/gm/api/models/test-model/download", json={})
    assert (first.status, await first.json()) == (202, {"model": "test-model", "status": "started"})
    assert (second.status, await second.json()) == (
        202,
        {"model": "test-model", "status": "joined"},
    )
    models = await (await client.get("/gm/api/models")).json()
    assert {m["name"]: m["downloading"] for m in models["models"]}["test-model"] is True

    late = await client.ws_connect("/gm/api/ws")  # connects mid-download
    snap = await late.receive_json(timeout=5)
    (active,) = snap["downloads"]
    assert active["modelId"] == "test-model" and isinstance(active["startedAt"], int)
    assert all(e["type"] == "model_download_progress" for e in active["progress"].values())

    seen = await until_result(ws, "test-model")
    assert [m["type"] for m in seen].count("model_download_result") == 1
    assert [m["type"] for m in seen].count("model_download_started") == 1
    assert seen[-1]["ok"] is True
    onnx_size = len(world.files[ONNX])
    sent = sum(g.bytes_sent(ONNX) for g in world.gateways) + world.hub.bytes_sent(ONNX)
    assert sent == onnx_size  # one transfer, shared
    assert (await until_result(late, "test-model"))[-1]["ok"] is True
    again = await client.post("/gm/api/models/test-model/download")
    assert (await again.json())["status"] == "started"  # the first one is over
    await ws.close()
    await late.close()


async def test_failed_download_is_reported_and_the_server_keeps_serving(
    client: Client, world: World
) -> None:
    entries = {p: FileEntry(len(d), hashlib.sha256(d).hexdigest()) for p, d in world.files.items()}
    Store(world.models_dir).manifest.record_files("test-model", entries)  # every layer is tried
    for origin in [world.hub, *world.gateways]:
        origin.inject(faults.status(404))
    ws = await client.ws_connect("/gm/api/ws")
    await ws.receive_json(timeout=5)
    assert (await client.post("/gm/api/models/test-model/download")).status == 202
    seen = await until_result(ws, "test-model")
    result = seen[-1]
    assert result["ok"] is False and result["files"] == []
    # files failing the same way are one error, naming them all
    assert {f for e in result["errors"] for f in e.get("files", [e["file"]])} == set(world.files)
    for error in result["errors"]:
        assert error["error_type"] == "AllSourcesFailed" and error["model"] == "test-model"
        assert {a["layer"] for a in error["attempts"]} >= {"ipfs", "huggingface"}

    models = await client.get("/gm/api/models")
    assert models.status == 200
    mine = {m["name"]: m for m in (await models.json())["models"]}["test-model"]
    assert mine["last_result"] == result and mine["downloading"] is False
    summary = await (await client.get("/gm/api/metrics/downloads/summary")).json()
    assert summary["exhausted"] == len(world.files)
    text = await (await client.get("/metrics")).text()
    assert prom_value(
        text, "modelfetch_attempts_total", layer="all", gateway="", status="exhausted"
    ) == len(world.files)
    assert prom_value(text, "modelfetch_downloads_in_flight") == 0

    for origin in [world.hub, *world.gateways]:
        origin.clear_faults()
    assert (await client.post("/gm/api/models/test-model/download")).status == 202
    assert (await until_result(ws, "test-model"))[-1]["ok"] is True
    await ws.close()


# -- bad input and errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "needle"),
    [
        ("GET", "/gm/api/models/no-such-model", None, 404, "unknown model 'no-such-model'"),
        ("POST", "/gm/api/models/no-such-model/download", None, 404, "unknown model"),
        ("POST", "/gm/api/models/test-model/download", b"[1, 2]", 400, "JSON object"),
        ("POST", "/gm/api/models/test-model/download", b"{not json", 400, "not valid JSON"),
        ("POST", "/gm/api/models/test-model/download", b'"x"', 400, "JSON object"),
        ("POST", "/gm/api/models/test-model/download", b'{"prefer": 1}', 400, "unknown field"),
        ("POST", "/gm/api/models/test-model/download", b"x" * 70_000, 413, "Too Large"),
        ("GET", "/gm/api/metrics/downloads?since=yesterday", None, 400, "since="),
        ("GET", "/gm/api/metrics/downloads?since=2024-13-45", None, 400, "since="),
        ("GET", "/gm/api/metrics/downloads?limit=0", None, 400, "limit=0"),
        ("GET", "/gm/api/metrics/downloads?limit=-3", None, 400, "limit="),
        ("GET", "/gm/api/metrics/downloads?limit=ten", None, 400, "not an integer"),
        ("GET", "/gm/api/metrics/downloads?layer=ftp", None, 400, "layer="),
        ("GET", "/gm/api/nothing-here", None, 404, "Not Found"),
        ("DELETE", "/gm/api/models/test-model/download", None, 405, "Not Allowed"),
        ("GET", "/gm/api/ws", None, 400, ""),  # not a WebSocket handshake
    ],
)
async def test_bad_input_is_a_json_error(
    client: Client, method: str, path: str, body: bytes | None, status: int, needle: str
) -> None:
    resp = await client.request(method, path, data=body)
    assert resp.status == status
    assert resp.content_type == "application/json"
    doc = await resp.json()
    assert set(doc) == {"error"} and needle in doc["error"]
    assert not (await client.get("/gm/api/models")).status >= 400  # still serving
    assert not (await client.app[DOWNLOADS].models(["test-model"]))[0]["downloading"]


@pytest.mark.parametrize(
    "since", ["2024-05-01T10:00:00Z", "2024-05-01", "2024-05-01T12:00:00+02:00", "1714557600000"]
)
async def test_since_forms_accepted(client: Client, since: str) -> None:
    resp = await client.get("/gm/api/metrics/downloads", params={"since": since, "limit": "5"})
    assert resp.status == 200 and await resp.json() == {"metrics": []}


async def test_unexpected_error_is_500_logged_never_leaked(
    client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(self: Records) -> dict[str, Any]:
        raise RuntimeError("database exploded: secret-detail-42")

    monkeypatch.setattr(Records, "summary", boom)
    with caplog.at_level(logging.ERROR, logger="modelfetch.server"):
        resp = await client.get("/gm/api/metrics/downloads/summary")
    assert resp.status == 500
    assert await resp.json() == {"error": "internal error"}
    assert "secret-detail-42" in caplog.text and "Traceback" in caplog.text
    assert (await client.get("/gm/api/metrics/downloads/health")).status == 200


async def test_damaged_manifest_is_reported_not_fatal(client: Client, world: World) -> None:
    world.models_dir.mkdir(parents=True, exist_ok=True)
    (world.models_dir / ".manifests.json").write_text("{not json")
    resp = await client.get("/gm/api/models")
    assert resp.status == 500 and "not valid JSON" in (await resp.json())["error"]
    ws = await client.ws_connect("/gm/api/ws")
    snap = await ws.receive_json(timeout=5)
    assert snap["type"] == "snapshot" and snap["models"] == [] and "not valid JSON" in snap["error"]
    await ws.close()
    assert (await client.get("/gm/api/metrics/downloads/summary")).status == 200


async def test_records_off_is_503(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    fetcher = client.app[DOWNLOADS].fetcher
    monkeypatch.setattr(fetcher, "records", None)
    for path in ("/gm/api/metrics/downloads", "/gm/api/metrics/downloads/summary"):
        resp = await client.get(path)
        assert resp.status == 503 and "records are off" in (await resp.json())["error"]


async def test_placeholder_page_and_redirect(client: Client) -> None:
    page = await client.get("/gm/")
    assert page.status == 200 and page.content_type == "text/html"
    assert "/gm/api/models" in await page.text()
    redirect = await client.get("/gm", allow_redirects=False)
    assert redirect.status == 302 and redirect.headers["Location"] == "/gm/"


# -- auth --------------------------------------------------------------------------------


async def test_token_required_everywhere_but_the_page(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    token = "tok-" + secrets.token_hex(16)
    good = {"Authorization": f"Bearer {token}"}
    bad = {"Authorization": "Bearer not-the-token"}
    caplog.set_level(logging.DEBUG)
    async with serving(world.settings, token=token) as client:
        assert (await client.get("/gm/")).status == 200
        for method, path in [
            ("GET", "/gm/api/models"),
            ("GET", "/gm/api/metrics/downloads"),
            ("GET", "/gm/api/metrics/downloads/summary"),
            ("GET", "/gm/api/metrics/downloads/health"),
            ("POST", "/gm/api/metrics/downloads/reset"),
            ("POST", "/gm/api/models/test-model/download"),
            ("GET", "/metrics"),
        ]:
            for headers in ({}, bad, {"Authorization": token}):
                resp = await client.request(method, path, headers=headers)
                assert resp.status == 401, (method, path, headers)
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                assert "token" in (await resp.json())["error"]
        assert (await client.get("/gm/api/models", headers=good)).status == 200
        assert (await client.get("/metrics", headers=good)).status == 200
        resp = await client.post("/gm/api/models/test-model/download", headers=good)
        assert resp.status == 202

        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect("/gm/api/ws")
        assert refused.value.status == 401
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await client.ws_connect("/gm/api/ws?token=wrong")
        by_query = await client.ws_connect(f"/gm/api/ws?token={token}")
        by_header = await client.ws_connect("/gm/api/ws", headers=good)
        for ws in (by_query, by_header):
            assert (await ws.receive_json(timeout=5))["type"] == "snapshot"
        assert (await until_result(by_query, "test-model"))[-1]["ok"] is True
        await by_query.close()
        await by_header.close()
        records = client.app[DOWNLOADS].records
        assert records is not None
        records.flush()
    assert "/gm/api/ws" in caplog.text  # the access log ran
    assert token not in caplog.text
    for db in world.settings.records_path.parent.glob("records.sqlite3*"):
        assert token.encode() not in db.read_bytes()


async def test_without_token_only_loopback_hosts_and_same_origin(client: Client) -> None:
    rebinding = await client.get("/gm/api/models", headers={"Host": "evil.example:8765"})
    assert rebinding.status == 403 and "localhost" in (await rebinding.json())["error"]
    ok_host = await client.get("/gm/api/models", headers={"Host": "localhost:8765"})
    assert ok_host.status == 200
    cross = await client.post(
        "/gm/api/metrics/downloads/reset", headers={"Origin": "http://evil.example"}
    )
    assert cross.status == 403 and "cross-origin" in (await cross.json())["error"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/gm/api/ws", origin="http://evil.example")
    assert refused.value.status == 403
    same = f"http://{client.host}:{client.port}"
    ok = await client.post("/gm/api/metrics/downloads/reset", headers={"Origin": same})
    assert ok.status == 200


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("", False),
        ("example.com", False),
    ],
)
def test_bind_rules(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
    check_bind(host, "a-token")  # a token allows any address
    if loopback:
        check_bind(host, None)
    else:
        with pytest.raises(ConfigError, match="MODELFETCH_TOKEN"):
            check_bind(host, None)


@pytest.mark.parametrize("env_token", [None, "", "   "])
def test_serve_refuses_non_loopback_without_token(tmp_path: Path, env_token: str | None) -> None:
    env = {"MODELFETCH_HOME": str(tmp_path / "models")}
    if env_token is not None:
        env["MODELFETCH_TOKEN"] = env_token
    result = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--port", "0"], env=env)
    assert result.exit_code == 2, result.output
    assert "refusing to listen on '0.0.0.0'" in result.output
    assert "MODELFETCH_TOKEN" in result.output and "Traceback" not in result.output


def test_empty_token_is_a_config_error(world: World) -> None:
    with pytest.raises(ConfigError):
        create_app(world.settings, token="  ")


# -- fan-out and the event loop ----------------------------------------------------------


def test_outbox_coalesces_latest_per_key_and_stays_bounded() -> None:
    box = Outbox(limit=4)
    box.put("a-attempting")
    box.put("a-1", ("m", "a"))
    box.put("b-1", ("m", "b"))
    box.put("a-2", ("m", "a"))  # replaces a-1, moves behind b-1
    assert list(box._items.values()) == ["a-attempting", "b-1", "a-2"]
    box.put("snapshot", first=True)
    box.put("a-success")  # 5 > 4: the oldest coalescable (b-1) goes first
    assert list(box._items.values()) == ["snapshot", "a-attempting", "a-2", "a-success"]
    assert box.dropped == 1
    for i in range(10):
        box.put(f"result-{i}")  # nothing coalescable left: oldest of any kind
    assert len(box) == 4 and box.dropped == 11
    assert list(box._items.values()) == [f"result-{i}" for i in range(6, 10)]


async def test_outbox_get_waits_for_a_message() -> None:
    box = Outbox(limit=2)
    getter = asyncio.ensure_future(box.get())
    await asyncio.sleep(0.01)
    assert not getter.done()
    box.put("hello")
    assert await asyncio.wait_for(getter, 1) == "hello"


def raw_websocket(port: int, path: str = "/gm/api/ws") -> socket.socket:
    """A WebSocket client that completes the handshake request and then never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    return sock


async def timed_download(client: Client, name: str) -> float:
    started = time.monotonic()
    resp = await client.post(f"/gm/api/models/{name}/download")
    assert resp.status == 202
    task = client.app[DOWNLOADS].task(name)
    assert task is not None
    await task
    return time.monotonic() - started


def big_world(tmp_path: Path, hub: HubServer, gws: list[GatewayServer]) -> World:
    files = {"config.json": b"{}", ONNX: model_files(onnx_padding=20_000_000)[ONNX]}
    return make_world(tmp_path, hub, gws, files=files, name="big")


async def test_slow_websocket_clients_never_slow_a_download(
    tmp_path: Path, hub: HubServer, gw1: GatewayServer
) -> None:
    world = big_world(tmp_path, hub, [gw1])
    async with serving(replace(world.settings, models_dir=tmp_path / "baseline")) as client:
        baseline = await timed_download(client, "big")

    async with serving(world.settings) as client:
        broadcaster = client.app[BROADCASTER]
        broadcaster.limit = 8
        assert client.port is not None
        stuck = [raw_websocket(client.port) for _ in range(3)]
        reader = await client.ws_connect("/gm/api/ws")
        await reader.receive_json(timeout=5)
        for _ in range(50):
            if broadcaster.client_count == 4:
                break
            await asyncio.sleep(0.02)
        assert broadcaster.client_count == 4
        reading = asyncio.ensure_future(until_result(reader, "big"))
        big_noise = {"type": "noise", "pad": "x" * (1 << 20)}
        for _ in range(16):  # more than the socket buffers of a client that never reads
            broadcaster.publish(big_noise)
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        lengths = sorted(len(b) for b in broadcaster.outboxes())
        assert lengths == [0, 8, 8, 8]  # three clients are stuck, the reader keeps up

        noise = {"type": "noise", "pad": "x" * 500}

        async def flood() -> None:
            while True:
                broadcaster.publish(noise)
                await asyncio.sleep(0.002)

        flooding = asyncio.ensure_future(flood())
        try:
            with_stuck = await timed_download(client, "big")
            lengths = sorted(len(b) for b in broadcaster.outboxes())
        finally:
            flooding.cancel()
        assert lengths[1:] == [8, 8, 8]  # still stuck, and their outboxes stay bounded
        seen = await asyncio.wait_for(reading, 30)
        assert seen[-1]["ok"] is True
        assert progress_by_file(seen)[ONNX][-1] == "success"
        await reader.close()
        for sock in stuck:
            sock.close()
    assert with_stuck < 2 * baseline + 0.5, (with_stuck, baseline)


async def test_hashing_for_inspection_does_not_block_the_loop(tmp_path: Path, world: World) -> None:
    size = 256 * 1024 * 1024
    spec = ModelSpec(name="big-local", dir="org/big-local", files=("weights.bin",))
    settings = replace(world.settings, models={**world.settings.models, spec.name: spec})
    path = settings.models_dir / spec.dir / "weights.bin"
    path.parent.mkdir(parents=True)
    with path.open("wb") as f:
        f.truncate(size)  # sparse: cheap to make, still hashed byte by byte

    def zeros_sha256() -> str:
        digest, chunk = hashlib.sha256(), bytes(1 << 20)
        for _ in range(size >> 20):
            digest.update(chunk)
        return digest.hexdigest()

    sha = await asyncio.to_thread(zeros_sha256)
    Store(settings.models_dir).manifest.record_files(
        spec.name, {"weights.bin": FileEntry(size, sha)}
    )

    async with serving(settings) as client:
        loop = asyncio.get_running_loop()
        lags: list[float] = []
        done = False

        async def ticker() -> None:
            while not done:
                before = loop.time()
                await asyncio.sleep(0.005)
                lags.append(loop.time() - before - 0.005)

        ticking = asyncio.ensure_future(ticker())
        resp = await client.get(f"/gm/api/models/{spec.name}")
        done = True
        await ticking
        model = await resp.json()
    assert model["state"] == "complete"  # rehashed: there was no verified stamp yet
    assert lags and max(lags) < 0.1, max(lags)


# -- the real command --------------------------------------------------------------------


async def test_serve_command_end_to_end(tmp_path: Path, hub: HubServer, gw1: GatewayServer) -> None:
    files = model_files()
    for path, data in files.items():
        hub.add_file(REPO, path, data)
    gw1.add_directory(CID, files)
    config = tmp_path / "config.toml"
    config.write_text(
        "[ipfs]\ntimeout = 2\nretries = 1\npause = 0.05\n"
        "[huggingface]\nretries = 2\ntimeout = 2\nbackoff = 0.05\n"
        f'[models.my-model]\ndir = "org/my-model"\nfiles = {json.dumps(list(files))}\n'
        f'huggingface = {{ repo = "{REPO}" }}\nipfs = {{ cid = "{CID}" }}\n'
    )
    token = "tok-" + secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFETCH", "HF_"))}
    env.update(
        MODELFETCH_HOME=str(tmp_path / "models"),
        MODELFETCH_CONFIG=str(config),
        HF_ENDPOINT=hub.url,
        MODELFETCH_IPFS_GATEWAYS=gw1.url,
        MODELFETCH_TOKEN=token,
    )
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with stdout.open("w") as out, stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelfetch", "-v", "serve", "--port", "0"],
            env=env,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    try:
        url = None
        for _ in range(300):
            found = re.search(r"http://127\.0\.0\.1:\d+/gm/", stdout.read_text())
            if found:
                url = found.group(0)
                break
            assert proc.poll() is None, stderr.read_text()
            await asyncio.sleep(0.05)
        assert url is not None, stderr.read_text()
        base = url.removesuffix("/gm/")
        auth = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(base) as http:
            ws = await http.ws_connect(f"/gm/api/ws?token={token}")
            snap = await ws.receive_json(timeout=10)
            assert snap["type"] == "snapshot"
            assert "my-model" in {m["name"] for m in snap["models"]}
            resp = await http.post("/gm/api/models/my-model/download", headers=auth)
            assert resp.status == 202 and (await resp.json())["status"] == "started"
            seen = await until_result(ws, "my-model")
            statuses = progress_by_file(seen)
            assert set(statuses) == set(files)
            assert all("downloading" in s and s[-1] == "success" for s in statuses.values())
            assert seen[-1]["ok"] is True
            await ws.close()

            rows = (await (await http.get("/gm/api/metrics/downloads", headers=auth)).json())[
                "metrics"
            ]
            assert {r["file"] for r in rows if r["status"] == "success"} == set(files)
            assert {r["gateway"] for r in rows if r["status"] == "success"} == {gw1.url}
            text = await (await http.get("/metrics", headers=auth)).text()
            assert prom_value(
                text, "modelfetch_attempts_total", layer="ipfs", gateway=gw1.url, status="success"
            ) == len(files)
            assert prom_value(text, "modelfetch_bytes_downloaded_total", layer="ipfs") == sum(
                len(d) for d in files.values()
            )
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    logs = stderr.read_text()
    assert "stopped" in logs and "Traceback" not in logs
    assert "GET /gm/api/ws" in logs  # the access log is on at -v
    assert token not in logs and token not in stdout.read_text()
    for db in (tmp_path / "models" / ".modelfetch").glob("records.sqlite3*"):
        assert token.encode() not in db.read_bytes()
