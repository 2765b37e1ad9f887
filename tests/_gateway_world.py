"""A models dir holding a verified model with a CID, served by `serve --mirror`'s app."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from aiohttp import web

from conftest import fast_settings
from modelfetch.catalog import IPFSRef, ModelSpec
from modelfetch.config import Settings
from modelfetch.ipfs.publish import prepare
from modelfetch.manifest import MANIFEST_NAME, Manifest, generate
from modelfetch.server.app import create_app
from modelfetch.server.gateway import StoreDags, add_gateway
from modelfetch.testing.onnx import tiny_onnx_model

MODEL = "gw-model"
BIG = "onnx/model.onnx"


def model_files(seed: int = 7) -> dict[str, bytes]:
    """A one-block file, a two-chunk file and a six-chunk one (256 KiB chunks)."""
    rng = random.Random(seed)
    return {
        "config.json": b'{"served": true}',
        "tokenizer.json": bytes(rng.randrange(32, 127) for _ in range(300_000)),
        BIG: tiny_onnx_model(seed=seed, padding=1_500_000),
    }


def spec(cid: str | None = None) -> ModelSpec:
    return ModelSpec(
        name=MODEL,
        dir=f"org/{MODEL}",
        files=tuple(model_files()),
        ipfs=IPFSRef(cid) if cid else None,
    )


def settings_for(home: Path, gateways: list[str], cid: str | None = None) -> Settings:
    base = fast_settings(home, "http://127.0.0.1:9", gateways)
    return replace(base, order=("cache", "ipfs"), models={MODEL: spec(cid)})


@dataclass
class Served:
    """Node A: its models dir, settings, the model's CID and the files' bytes."""

    home: Path
    settings: Settings
    cid: str
    files: dict[str, bytes]

    def final(self, path: str) -> Path:
        return self.home / "org" / MODEL / path


async def verified_home(
    home: Path, *, profile: str = "cid-version-1", files: dict[str, bytes] | None = None
) -> Served:
    """Write the model's files, verify them into the manifest, publish its CID there."""
    files = files or model_files()
    for path, data in files.items():
        target = home / "org" / MODEL / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    generate(home / "org" / MODEL, MODEL, home / MANIFEST_NAME)
    settings = settings_for(home, [])
    local = await prepare(settings, MODEL, profile=profile)
    Manifest(home / MANIFEST_NAME).record_publication(MODEL, local.cid)
    return Served(home, settings, local.cid, files)


@asynccontextmanager
async def serving(
    settings: Settings, *, token: str | None = None, dags: StoreDags | None = None
) -> AsyncIterator[str]:
    """`serve --mirror` of `settings`' models dir on a free loopback port: its base URL."""
    app = create_app(settings, token=token, mirror=dags is None)
    if dags is not None:
        add_gateway(app, settings, dags=dags)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
