"""Publishing: a real IPFS node (kubo RPC), the Pinata and pinning-service doubles, the CLI."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from modelfetch.catalog import ModelSpec
from modelfetch.config import IPFSSettings, Settings, load_settings
from modelfetch.engine import Fetcher
from modelfetch.errors import (
    AllSourcesFailed,
    ConfigError,
    HashMismatch,
    HTTPStatus,
    SourceError,
    Stalled,
)
from modelfetch.ipfs import Cid, cid_of_path, directory_node, file_node, get_profile
from modelfetch.ipfs.publish import PINATA_GATEWAY, LocalModel, prepare, publish
from modelfetch.manifest import MANIFEST_NAME, generate
from modelfetch.records import Records
from modelfetch.testing import PinataServer, faults
from modelfetch.testing.onnx import tiny_onnx_model

if TYPE_CHECKING:
    from conftest_ipfs import IpfsNode

pytest_plugins = ["conftest_ipfs"]  # the ipfs_node fixture (tests/conftest_ipfs.py)

MODEL = "tm"
JWT = "jwt-SECRET-7f3a9c1e"
KEY, SECRET = "key-SECRET-0b1c2d", "secret-SECRET-9e8d7c"
PSA_TOKEN = "psa-SECRET-4455aa"
ALL_SECRETS = (JWT, KEY, SECRET, PSA_TOKEN)
NESTED = "onnx/ext/deep/weights.bin"
ODD = "vocab/ünï code+&.txt"


@pytest.fixture(autouse=True)
def _no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "PINATA_JWT",
        "PINATA_API_KEY",
        "PINATA_SECRET_KEY",
        "MODELFETCH_KUBO_API",
        "MODELFETCH_KUBO_TOKEN",
        "MODELFETCH_PINATA_API",
        "MODELFETCH_PSA_ENDPOINT",
        "MODELFETCH_PSA_TOKEN",
    ):
        monkeypatch.delenv(var, raising=False)


def model_files(seed: int = 5) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {
        "config.json": b'{"hidden_size": %d}\n' % seed,
        "tokenizer.json": bytes(rng.randrange(32, 127) for _ in range(20_000)),
        "onnx/model.onnx": tiny_onnx_model(seed=seed, padding=1_300_000),  # > 1 MiB
        NESTED: rng.randbytes(300_000),
        ODD: b"a file name that needs quoting\n",
    }


def make_model(models_dir: Path, files: dict[str, bytes] | None = None) -> Settings:
    """A verified model on disk (manifest written), plus files the model does not list."""
    files = files if files is not None else model_files()
    root = models_dir / "org" / MODEL
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    generate(root, MODEL, models_dir / MANIFEST_NAME)
    (root / "notes.txt").write_text("not part of the model\n")
    (root / ".hidden").write_text("nor this\n")
    settings = load_settings(models_dir=models_dir, env={})
    spec = ModelSpec(name=MODEL, dir=f"org/{MODEL}", files=tuple(files), type="stt")
    return replace(settings, models={**settings.models, MODEL: spec})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_model(tmp_path / "models")


def manifest_bytes(settings: Settings) -> bytes:
    return (settings.models_dir / MANIFEST_NAME).read_bytes()


def recorded_cids(settings: Settings) -> list[dict[str, Any]]:
    with Records(settings.records_path) as records:
        return records.cids(MODEL)


@pytest.fixture
def pinata() -> Iterator[PinataServer]:
    with PinataServer(jwt=JWT, api_key=KEY, api_secret=SECRET) as server:
        yield server


# -- the local CID ----------------------------------------------------------------------


async def test_local_cid_covers_exactly_the_listed_files(settings: Settings) -> None:
    files = model_files()
    for version in (0, 1):
        local = await prepare(settings, MODEL, cid_version=version)
        prof = get_profile(version)
        expected = directory_node({k: file_node(v, prof) for k, v in files.items()}, prof)
        assert local.root.cid == expected.cid
        # notes.txt (unlisted) is left out, unlike `ipfs add -r` of the whole directory
        whole = cid_of_path(settings.models_dir / "org" / MODEL, cid_version=version)
        assert Cid.parse(whole) != local.root.cid
        assert local.total_bytes == sum(map(len, files.values()))


async def test_unverified_model_is_refused_naming_each_file(settings: Settings) -> None:
    root = settings.models_dir / "org" / MODEL
    (root / "config.json").unlink()
    (root / NESTED).write_bytes(b"corrupted")
    with pytest.raises(ConfigError) as info:
        await publish(settings, MODEL, to="kubo", endpoint="http://127.0.0.1:9")
    text = str(info.value)
    assert "config.json: missing" in text and f"{NESTED}: corrupt" in text
    assert "modelfetch pull tm" in text
    assert (root / NESTED).read_bytes() == b"corrupted"  # nothing moved aside by publish


# -- a real IPFS node (js-ipfs, kubo-compatible RPC) -------------------------------------


@pytest.mark.parametrize("profile", ["unixfs-v0-2015", "cid-version-1", "unixfs-v1-2025"])
async def test_publish_to_a_real_node_then_pull_through_its_gateway(
    ipfs_node: IpfsNode, settings: Settings, tmp_path: Path, profile: str
) -> None:
    seen: list[LocalModel] = []
    result = await publish(
        settings,
        MODEL,
        to="kubo",
        profile=profile,
        endpoint=ipfs_node.api.removesuffix("/api/v0"),
        gateway_url=ipfs_node.gateway,
        on_local=seen.append,
        env={},
    )
    assert len(seen) == 1 and seen[0].cid == result.local_cid == result.cid
    assert Cid.parse(result.service_cid) == Cid.parse(result.cid)  # js-ipfs prints base58 v1
    assert result.pinned and result.target == "kubo" and result.files == 5
    assert result.cid.startswith("Qm" if profile == "unixfs-v0-2015" else "bafy")

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.post(
            f"{ipfs_node.api}/pin/ls", params={"arg": result.cid, "type": "recursive"}
        ) as resp:
            assert resp.status == 200, await resp.text()
            keys = (await resp.json())["Keys"]
        assert [Cid.parse(k) for k in keys] == [Cid.parse(result.cid)]
        # the node built the nested directories from the multipart file names
        url = f"{ipfs_node.gateway}/ipfs/{result.cid}/{NESTED}"
        async with session.get(url) as resp:
            assert resp.status == 200
            assert await resp.read() == model_files()[NESTED]

    manifest = json.loads(manifest_bytes(settings))[MODEL]
    assert manifest["ipfsHash"] == result.cid and manifest["publishedAt"].endswith("Z")
    rows = recorded_cids(settings)
    assert [(r["cid"], r["model_type"], r["gateway_url"]) for r in rows] == [
        (result.cid, "stt", ipfs_node.gateway)
    ]

    # A fresh models dir with only the manifest: the pull needs nothing else (no HF source,
    # no CID in the config, only the node's gateway).
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(settings.models_dir / MANIFEST_NAME, fresh / MANIFEST_NAME)
    pull_settings = replace(
        settings,
        models_dir=fresh,
        ipfs=IPFSSettings(
            gateways=(ipfs_node.gateway,), timeout=10, retries=1, pause=0.05, connect_timeout=2
        ),
    )
    assert pull_settings.models[MODEL].ipfs is None
    assert pull_settings.models[MODEL].huggingface is None
    async with Fetcher(pull_settings) as fetcher:
        (pulled,) = await fetcher.pull([MODEL])
    tried_ipfs = any(
        a.layer == "ipfs"
        for e in pulled.errors
        if isinstance(e, AllSourcesFailed)
        for a in e.attempts
    )
    if not pulled.ok and not tried_ipfs:
        pytest.xfail("the engine does not read the CID from the manifest's ipfsHash yet")
    assert pulled.ok, [str(e) for e in pulled.errors]
    assert {f.path: (f.source, f.gateway) for f in pulled.files} == {
        rel: ("ipfs", ipfs_node.gateway) for rel in model_files()
    }
    for rel, data in model_files().items():
        assert (fresh / "org" / MODEL / rel).read_bytes() == data


# -- a fake kubo RPC: answers the real one would not give ----------------------------------


@pytest.fixture
async def fake_kubo() -> AsyncIterator[tuple[TestServer, list[str]]]:
    """A kubo RPC whose `add` reports a root CID of other content (and the files' real CIDs)."""
    mode: list[str] = ["wrong-root"]

    async def add(request: web.Request) -> web.StreamResponse:
        reader = await request.multipart()
        lines: list[dict[str, object]] = []
        prof = get_profile(int(request.query["cid-version"]))
        while (part := await reader.next()) is not None:
            assert isinstance(part, aiohttp.BodyPartReader)
            name = unquote(part.filename or "")
            node = file_node(await part.read(), prof)
            lines.append({"Name": name, "Hash": str(node.cid), "Size": str(node.size)})
        if mode[0] == "error-line":
            lines.append({"Message": "blockstore: disk full", "Code": 0, "Type": "error"})
        else:
            lines.append({"Name": "", "Hash": str(file_node(b"other", prof).cid), "Size": "5"})
        body = "".join(json.dumps(x) + "\n" for x in lines)
        return web.Response(text=body, content_type="application/json")

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/api/v0/add", add)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server, mode
    await server.close()


async def test_kubo_root_mismatch_fails_loudly_and_records_nothing(
    fake_kubo: tuple[TestServer, list[str]], settings: Settings
) -> None:
    server, mode = fake_kubo
    before = manifest_bytes(settings)
    endpoint = str(server.make_url("/")).rstrip("/")
    with pytest.raises(HashMismatch) as info:
        await publish(settings, MODEL, to="kubo", endpoint=endpoint, env={})
    local = await prepare(settings, MODEL)
    assert local.cid in str(info.value) and "nothing was recorded" in str(info.value)
    assert manifest_bytes(settings) == before
    assert recorded_cids(settings) == []

    mode[0] = "error-line"
    with pytest.raises(SourceError, match="blockstore: disk full"):
        await publish(settings, MODEL, to="kubo", endpoint=endpoint, env={})
    assert manifest_bytes(settings) == before


# -- Pinata ---------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["jwt", "key+secret"])
async def test_pinata_upload(pinata: PinataServer, settings: Settings, auth: str) -> None:
    env = (
        {"PINATA_JWT": JWT}
        if auth == "jwt"
        else {"PINATA_API_KEY": KEY, "PINATA_SECRET_KEY": SECRET}
    )
    result = await publish(settings, MODEL, to="pinata", endpoint=pinata.url, env=env)
    (upload,) = pinata.uploads
    assert Cid.parse(upload.cid) == Cid.parse(result.cid) == Cid.parse(result.local_cid)
    assert sorted(f.path for f in upload.files) == sorted(f"{MODEL}/{p}" for p in model_files())
    assert upload.options == {"cidVersion": 1, "wrapWithDirectory": False}
    assert upload.name == MODEL and upload.keyvalues["localCid"] == result.cid
    assert pinata.request_count("/data/testAuthentication") == 1
    assert json.loads(manifest_bytes(settings))[MODEL]["ipfsHash"] == result.cid
    (row,) = recorded_cids(settings)
    assert (row["cid"], row["gateway_url"]) == (result.cid, PINATA_GATEWAY)


async def test_pinata_cid_version_0(pinata: PinataServer, settings: Settings) -> None:
    result = await publish(
        settings, MODEL, to="pinata", cid_version=0, endpoint=pinata.url, env={"PINATA_JWT": JWT}
    )
    assert result.cid.startswith("Qm") and pinata.uploads[0].options["cidVersion"] == 0


async def test_pinata_wrong_cid_fails_and_leaves_the_manifest(
    pinata: PinataServer, settings: Settings
) -> None:
    pinata.wrong_cid = True
    before = manifest_bytes(settings)
    with pytest.raises(HashMismatch) as info:
        await publish(settings, MODEL, to="pinata", endpoint=pinata.url, env={"PINATA_JWT": JWT})
    (upload,) = pinata.uploads
    assert upload.answered in str(info.value) and upload.cid in str(info.value)
    assert manifest_bytes(settings) == before
    assert recorded_cids(settings) == []


async def test_pinata_rejected_credentials_fail_before_the_upload(
    pinata: PinataServer, settings: Settings
) -> None:
    with pytest.raises(ConfigError) as info:
        await publish(
            settings, MODEL, to="pinata", endpoint=pinata.url, env={"PINATA_JWT": "wrong-token"}
        )
    text = str(info.value)
    assert "401" in text and "rejected the credentials (from PINATA_JWT)" in text
    assert "wrong-token" not in text
    assert pinata.uploads == [] and pinata.request_count("pinFileToIPFS") == 0


async def test_pinata_server_error(pinata: PinataServer, settings: Settings) -> None:
    pinata.inject(faults.status(500, b'{"error": "upstream timeout"}'), path="pinFileToIPFS")
    with pytest.raises(HTTPStatus) as info:
        await publish(settings, MODEL, to="pinata", endpoint=pinata.url, env={"PINATA_JWT": JWT})
    assert info.value.status == 500 and "upstream timeout" in str(info.value)
    assert "ipfsHash" not in json.loads(manifest_bytes(settings))[MODEL]


async def test_pinata_usage_errors(pinata: PinataServer, settings: Settings) -> None:
    with pytest.raises(ConfigError, match="PINATA_JWT"):
        await publish(settings, MODEL, to="pinata", endpoint=pinata.url, env={})
    with pytest.raises(ConfigError, match="PINATA_SECRET_KEY is not set"):
        await publish(
            settings, MODEL, to="pinata", endpoint=pinata.url, env={"PINATA_API_KEY": KEY}
        )
    with pytest.raises(ConfigError, match="plain http"):
        await publish(
            settings, MODEL, to="pinata", endpoint="http://pinata.example", env={"PINATA_JWT": JWT}
        )
    with pytest.raises(ConfigError, match="unixfs-v1-2025"):
        await publish(
            settings,
            MODEL,
            to="pinata",
            profile="unixfs-v1-2025",
            endpoint=pinata.url,
            env={"PINATA_JWT": JWT},
        )
    assert pinata.requests == []


async def test_secrets_never_appear_in_logs_errors_records_or_reprs(
    pinata: PinataServer, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    jwt_env = {"PINATA_JWT": JWT}
    keys_env = {"PINATA_API_KEY": KEY, "PINATA_SECRET_KEY": SECRET}
    psa_env = {"MODELFETCH_PSA_TOKEN": PSA_TOKEN}
    texts.append(
        repr(await publish(settings, MODEL, to="pinata", endpoint=pinata.url, env=jwt_env))
    )
    texts.append(
        repr(await publish(settings, MODEL, to="pinata", endpoint=pinata.url, env=keys_env))
    )
    # a server that echoes the credentials in its error body
    for env in (jwt_env, keys_env):
        echo = ("bad request from " + " ".join(env.values())).encode()
        pinata.inject(faults.status(500, echo), path="pinFileToIPFS", times=1)
        with pytest.raises(HTTPStatus) as info:
            await publish(settings, MODEL, to="pinata", endpoint=pinata.url, env=env)
        texts += [str(info.value), repr(info.value)]
    pinata.jwt = PSA_TOKEN
    pinata.inject(faults.status(503, f"who is {PSA_TOKEN}?".encode()), path="pins", times=1)
    pinata.set_psa_statuses(["queued", "failed"])
    with pytest.raises(SourceError) as failed:
        await publish(
            settings, MODEL, to="psa", endpoint=pinata.psa_url, env=psa_env, poll_interval=0.01
        )
    texts += [str(failed.value), repr(failed.value)]
    with pytest.raises(ConfigError) as rejected:
        await publish(settings, MODEL, to="pinata", endpoint=pinata.url, env=jwt_env)
    texts += [str(rejected.value), repr(rejected.value)]
    assert "***" in " ".join(texts)  # the echoed values were scrubbed
    stored = [p.read_bytes() for p in settings.models_dir.rglob("*") if p.is_file()]
    for secret in ALL_SECRETS:
        assert secret not in caplog.text
        for text in texts:
            assert secret not in text
        for blob in stored:
            assert secret.encode() not in blob
    assert any("publishing tm" in r.getMessage() for r in caplog.records)


# -- Pinning Service API ----------------------------------------------------------------------


@pytest.fixture
def psa() -> Iterator[PinataServer]:
    with PinataServer(jwt=PSA_TOKEN) as server:
        yield server


async def test_psa_polls_until_pinned(psa: PinataServer, settings: Settings) -> None:
    psa.set_psa_statuses(["queued", "queued", "pinning", "pinning", "pinned"])
    origins = ["/ip4/192.0.2.7/tcp/4001/p2p/12D3KooWOrigin"]
    result = await publish(
        settings,
        MODEL,
        to="psa",
        endpoint=psa.psa_url,
        origins=origins,
        poll_interval=0.01,
        env={"MODELFETCH_PSA_TOKEN": PSA_TOKEN},
    )
    (pin,) = psa.pins
    assert pin.polls == 4 and pin.origins == origins and pin.name == MODEL
    assert Cid.parse(pin.cid) == Cid.parse(result.cid)
    assert result.pinned and result.request_id == pin.requestid and result.delegates
    assert json.loads(manifest_bytes(settings))[MODEL]["ipfsHash"] == result.cid

    # a second run finds the pinned request: no duplicate is made
    again = await publish(
        settings, MODEL, to="psa", endpoint=psa.psa_url, env={"MODELFETCH_PSA_TOKEN": PSA_TOKEN}
    )
    assert again.request_id == pin.requestid and len(psa.pins) == 1


async def test_psa_failed_and_timeout(psa: PinataServer, settings: Settings) -> None:
    before = manifest_bytes(settings)
    env = {"MODELFETCH_PSA_TOKEN": PSA_TOKEN}
    psa.set_psa_statuses(["queued", "pinning", "failed"])
    with pytest.raises(SourceError, match="failed") as failed:
        await publish(settings, MODEL, to="psa", endpoint=psa.psa_url, env=env, poll_interval=0.01)
    assert not isinstance(failed.value, Stalled)
    psa.set_psa_statuses(["queued"])
    with pytest.raises(Stalled, match=r"still queued after 0\.3 s") as late:
        await publish(
            settings,
            MODEL,
            to="psa",
            endpoint=psa.psa_url,
            env=env,
            poll_interval=0.02,
            pin_timeout=0.3,
        )
    assert "--origin" in str(late.value)
    assert manifest_bytes(settings) == before and recorded_cids(settings) == []


async def test_psa_wrong_cid_and_usage(psa: PinataServer, settings: Settings) -> None:
    env = {"MODELFETCH_PSA_TOKEN": PSA_TOKEN}
    psa.wrong_cid = True
    with pytest.raises(HashMismatch):
        await publish(settings, MODEL, to="psa", endpoint=psa.psa_url, env=env)
    with pytest.raises(ConfigError, match="MODELFETCH_PSA_TOKEN"):
        await publish(settings, MODEL, to="psa", endpoint=psa.psa_url, env={})
    with pytest.raises(ConfigError, match="not a multiaddr"):
        await publish(settings, MODEL, to="psa", endpoint=psa.psa_url, env=env, origins=["x"])
    with pytest.raises(ConfigError, match="only applies to --to psa"):
        await publish(settings, MODEL, to="kubo", origins=["/ip4/1.2.3.4"], env={})


# -- the command line -----------------------------------------------------------------------


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `python -m modelfetch`; stderr comes back with rich's line wrapping undone."""
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("MODELFETCH", "HF_", "PINATA_"))
    }
    proc = subprocess.run(
        [sys.executable, "-m", "modelfetch", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    proc.stderr = " ".join(proc.stderr.split())
    return proc


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    models_dir = tmp_path / "models"
    make_model(models_dir)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[models.{MODEL}]\ndir = "org/{MODEL}"\ntype = "stt"\n'
        f"files = {json.dumps(list(model_files()), ensure_ascii=False)}\n",
        encoding="utf-8",
    )
    return {"MODELFETCH_HOME": str(models_dir), "MODELFETCH_CONFIG": str(config)}


def test_cli_publish_to_a_real_node(ipfs_node: IpfsNode, cli_env: dict[str, str]) -> None:
    proc = cli(["publish", MODEL, "--to", "kubo", "--endpoint", ipfs_node.api], cli_env)
    assert proc.returncode == 0, proc.stderr
    first, *rest = proc.stdout.splitlines()
    assert first.startswith("local CID  bafy")
    cid = first.split()[2]
    assert f"published  {cid}  to kubo" in rest[0]
    proc = cli(
        ["publish", MODEL, "--to", "kubo", "--cid-version", "0", "--json"],
        {**cli_env, "MODELFETCH_KUBO_API": ipfs_node.api},
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True and doc["cid"].startswith("Qm") and doc["local_cid"] == doc["cid"]
    manifest = json.loads(Path(cli_env["MODELFETCH_HOME"], MANIFEST_NAME).read_text())
    assert manifest[MODEL]["ipfsHash"] == doc["cid"]


def test_cli_exit_codes(pinata: PinataServer, cli_env: dict[str, str]) -> None:
    home = Path(cli_env["MODELFETCH_HOME"])
    before = (home / MANIFEST_NAME).read_bytes()
    pinata_env = {**cli_env, "MODELFETCH_PINATA_API": pinata.url}

    missing = cli(["publish", MODEL, "--to", "pinata"], pinata_env)
    assert missing.returncode == 2 and "PINATA_JWT" in missing.stderr
    assert "Traceback" not in missing.stderr

    rejected = cli(["publish", MODEL, "--to", "pinata"], {**pinata_env, "PINATA_JWT": "nope"})
    assert rejected.returncode == 2 and "rejected the credentials" in rejected.stderr

    pinata.wrong_cid = True
    mismatch = cli(
        ["publish", MODEL, "--to", "pinata", "--json"], {**pinata_env, "PINATA_JWT": JWT}
    )
    assert mismatch.returncode == 1, mismatch.stderr
    doc = json.loads(mismatch.stdout)
    assert doc["ok"] is False and doc["error_type"] == "HashMismatch"
    assert doc["local_cid"] and doc["local_cid"] in mismatch.stderr
    assert JWT not in mismatch.stdout + mismatch.stderr
    assert (home / MANIFEST_NAME).read_bytes() == before

    (home / "org" / MODEL / "config.json").unlink()
    unverified = cli(["publish", MODEL, "--to", "pinata"], {**pinata_env, "PINATA_JWT": JWT})
    assert unverified.returncode == 2 and "config.json: missing" in unverified.stderr
