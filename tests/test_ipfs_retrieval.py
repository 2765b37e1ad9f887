"""Pulling a model published to a real IPFS node: block-verified, with lying gateways caught."""

from __future__ import annotations

import hashlib
import random
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from conftest import fast_settings, leftovers
from modelfetch.catalog import ModelSpec
from modelfetch.config import Settings
from modelfetch.engine import Fetcher, ModelResult
from modelfetch.ipfs.publish import publish
from modelfetch.manifest import MANIFEST_NAME
from modelfetch.records import Records
from modelfetch.testing import GatewayServer, NodeBackend, TrustlessGatewayServer
from modelfetch.testing import trustless as tfaults
from modelfetch.testing.onnx import tiny_onnx_model

if TYPE_CHECKING:
    from conftest_ipfs import IpfsNode

pytest_plugins = ["conftest_ipfs"]

MODEL = "ipfs-model"
BIG = "onnx/model.onnx"


def model_files() -> dict[str, bytes]:
    rng = random.Random(5)
    return {
        "config.json": b'{"published": true}',
        "tokenizer.json": bytes(rng.randrange(256) for _ in range(300_000)),
        BIG: tiny_onnx_model(seed=5, padding=3 << 20),
    }


def spec() -> ModelSpec:
    return ModelSpec(name=MODEL, dir=f"org/{MODEL}", files=tuple(model_files()))


def settings_for(models_dir: Path, gateways: list[str]) -> Settings:
    base = fast_settings(models_dir, "http://127.0.0.1:9", gateways)
    return replace(base, order=("cache", "ipfs"), models={MODEL: spec()})


@pytest.fixture(scope="module")
def published(ipfs_node: IpfsNode, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The model, published to the real node; returns its CID and the publisher's dir."""
    import asyncio

    home = tmp_path_factory.mktemp("publisher")
    for path, data in model_files().items():
        target = home / "org" / MODEL / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    settings = settings_for(home, [])
    from modelfetch.manifest import generate

    generate(home / "org" / MODEL, MODEL, home / MANIFEST_NAME)
    result = asyncio.run(publish(settings, MODEL, to="kubo", endpoint=ipfs_node.api, env={}))
    return {"cid": result.cid, "home": home}


@pytest.fixture
def node_gateways(ipfs_node: IpfsNode) -> Iterator[list[TrustlessGatewayServer]]:
    with (
        TrustlessGatewayServer(NodeBackend(ipfs_node.api)) as liar,
        TrustlessGatewayServer(NodeBackend(ipfs_node.api)) as honest,
    ):
        yield [liar, honest]


def fresh_home(tmp_path: Path, published: dict[str, Any], *, manifest: bool) -> Path:
    """A models dir that knows the model only by its CID (and, optionally, the manifest)."""
    home = tmp_path / "models"
    home.mkdir()
    if manifest:
        shutil.copy(published["home"] / MANIFEST_NAME, home / MANIFEST_NAME)
    return home


async def pull(settings: Settings) -> ModelResult:
    async with Fetcher(settings) as fetcher:
        return await fetcher.pull_model(MODEL)


def assert_intact(home: Path, result: ModelResult) -> None:
    assert result.ok, result.errors
    for path, data in model_files().items():
        got = (home / "org" / MODEL / path).read_bytes()
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), path
    assert leftovers(home) == []


def with_cid(settings: Settings, cid: str) -> Settings:
    from modelfetch.catalog import IPFSRef

    return replace(settings, models={MODEL: replace(spec(), ipfs=IPFSRef(cid))})


async def test_published_model_pulls_from_the_nodes_path_gateway(
    ipfs_node: IpfsNode, published: dict[str, Any], tmp_path: Path
) -> None:
    home = fresh_home(tmp_path, published, manifest=True)  # ipfsHash + SHA-256 from publish
    result = await pull(settings_for(home, [ipfs_node.gateway]))
    assert_intact(home, result)
    assert {(f.source, f.gateway) for f in result.files} == {("ipfs", ipfs_node.gateway)}


async def test_cid_alone_is_enough_through_a_trustless_gateway(
    node_gateways: list[TrustlessGatewayServer], published: dict[str, Any], tmp_path: Path
) -> None:
    honest = node_gateways[1]
    home = fresh_home(tmp_path, published, manifest=False)
    settings = with_cid(settings_for(home, [honest.url]), published["cid"])
    result = await pull(settings)
    assert_intact(home, result)
    assert honest.request_count() > 0 and all(f.gateway == honest.url for f in result.files)
    # the SHA-256 of every verified file is now in the manifest for later offline checks
    from modelfetch.manifest import Manifest

    entries = Manifest(home / MANIFEST_NAME).entries(MODEL)
    assert entries[BIG].sha256 == hashlib.sha256(model_files()[BIG]).hexdigest()


@pytest.mark.parametrize(
    "fault, error",
    [
        (tfaults.flip_block_byte(), "BadBlock"),
        (tfaults.extra_block(), "BadBlock"),
        (tfaults.wrong_root(), "BadBlock"),
    ],
    ids=["flipped-byte", "extra-block", "wrong-root"],
)
async def test_a_lying_trustless_gateway_is_caught_and_dropped(
    node_gateways: list[TrustlessGatewayServer],
    published: dict[str, Any],
    tmp_path: Path,
    fault: Any,
    error: str,
) -> None:
    liar, honest = node_gateways
    home = fresh_home(tmp_path, published, manifest=False)
    settings = with_cid(settings_for(home, [liar.url, honest.url]), published["cid"])
    liar.inject(fault)
    result = await pull(replace(settings, concurrency=1))
    assert_intact(home, result)
    assert {f.gateway for f in result.files} == {honest.url}
    with Records(settings.records_path) as records:
        rows = [r for r in records.attempts() if r["gateway"] == liar.url]
        cids = records.cids(MODEL)
    # caught once (whether resolving a CID or streaming a CAR), then never asked again:
    # skipped for the later files, as distrusted
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert all(r["error_message"].startswith("distrusted: ") for r in skipped), skipped
    assert [r["error_type"] for r in rows if r["status"] != "skipped"] == [error], rows
    assert cids and cids[0]["success_count"] >= len(model_files())


async def test_a_car_cut_short_resumes_by_block(
    node_gateways: list[TrustlessGatewayServer], published: dict[str, Any], tmp_path: Path
) -> None:
    gateway = node_gateways[1]
    gateway.inject(tfaults.car_cut_short(after_blocks=6))
    home = fresh_home(tmp_path, published, manifest=False)
    settings = with_cid(settings_for(home, [gateway.url]), published["cid"])
    result = await pull(replace(settings, ipfs=replace(settings.ipfs, retries=8)))
    assert_intact(home, result)
    with Records(settings.records_path) as records:
        rows = [r for r in reversed(records.attempts()) if r["file"] == BIG]
    cut = [r for r in rows if r["status"] == "error" and r["layer"] == "ipfs"]
    assert cut and all(r["error_type"] == "Truncated" and r["bytes_downloaded"] > 0 for r in cut)
    fetched = sum(r["bytes_downloaded"] for r in rows if r["layer"] == "ipfs")
    assert fetched == len(model_files()[BIG]), "each try continued where the last one stopped"


async def test_a_lying_path_gateway_is_caught_by_the_recomputed_cid(
    ipfs_node: IpfsNode, published: dict[str, Any], tmp_path: Path
) -> None:
    files = model_files()
    with GatewayServer() as liar, TrustlessGatewayServer(NodeBackend(ipfs_node.api)) as meta:
        liar.add_directory(published["cid"], {**files, "config.json": b'{"published": 0}'})
        home = fresh_home(tmp_path, published, manifest=False)
        # Only `meta` is trustless: it settles each file's CID; bytes come from the path
        # gateways first, where nothing but the recomputed CID can catch the liar.
        gateways = [liar.url, ipfs_node.gateway, meta.url]
        settings = with_cid(settings_for(home, gateways), published["cid"])
        result = await pull(replace(settings, concurrency=1))
        assert_intact(home, result)
        by_path = {f.path: f for f in result.files}
        assert by_path["config.json"].gateway == ipfs_node.gateway
        with Records(settings.records_path) as records:
            lies = [
                r
                for r in records.attempts()
                if r["gateway"] == liar.url and r["status"] != "skipped"
            ]
        assert lies and lies[0]["error_type"] in ("HashMismatch", "SizeMismatch")
        assert "CID" in lies[0]["error_message"] or lies[0]["error_type"] == "SizeMismatch"


async def test_trustless_only_gateway_is_used_after_it_refuses_plain_bytes(
    node_gateways: list[TrustlessGatewayServer], published: dict[str, Any], tmp_path: Path
) -> None:
    gateway = node_gateways[1]
    home = fresh_home(tmp_path, published, manifest=True)  # SHA-256 known: plain asked first
    result = await pull(settings_for(home, [gateway.url]))
    assert_intact(home, result)
    assert {f.gateway for f in result.files} == {gateway.url}
    # one plain request per file (refused with 406), one probe, then CARs and blocks
    assert gateway.request_count("bafkqaaa") == 1
    assert gateway.served_blocks, "the bytes came as verified blocks"
