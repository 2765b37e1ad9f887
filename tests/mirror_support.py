"""What the mirror tests share: an upstream repo's files, a mirror serving in-process, the
huggingface_hub calls (in a worker thread: the mirror runs on the test's event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from conftest import fast_settings, tiny_onnx_model
from modelfetch.config import Settings
from modelfetch.server import create_app
from modelfetch.server.mirror import MIRROR, Mirror
from modelfetch.testing import HubServer

hf = pytest.importorskip("huggingface_hub")

REPO = "org/bert"
CONFIG = b'{"model_type": "bert"}\n'
WEIGHTS = hashlib.sha256(b"w").digest() * 40_000  # 1.28 MB: LFS by size
ONNX = tiny_onnx_model(seed=3)  # small, LFS because of the name
FILES = {"config.json": CONFIG, "model.safetensors": WEIGHTS, "onnx/model.onnx": ONNX}
ROWS = b"text,label\nhello,1\n"


@dataclass
class Running:
    url: str
    mirror: Mirror
    settings: Settings
    cache: Path  # the mirror's HF cache


def mirror_settings(tmp_path: Path, upstream: HubServer, name: str = "mirror") -> Settings:
    settings = fast_settings(tmp_path / name / "models", upstream.url, [])
    hf_settings = replace(settings.huggingface, cache_dir=tmp_path / name / "hf")
    return replace(settings, huggingface=hf_settings)


@contextlib.asynccontextmanager
async def serving(
    settings: Settings, *, token: str | None = None, open_reads: bool = False, hold: float = 8.0
) -> AsyncIterator[Running]:
    app = create_app(settings, token=token, mirror=True, open_reads=open_reads)
    app[MIRROR].hold = hold
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        url = f"http://127.0.0.1:{server.port}"
        yield Running(url, app[MIRROR], settings, settings.huggingface.cache_dir)
    finally:
        await server.close()


async def download(endpoint: str, cache: Path, filename: str, **kw: Any) -> Path:
    path = await asyncio.to_thread(
        hf.hf_hub_download,
        repo_id=kw.pop("repo_id", REPO),
        filename=filename,
        cache_dir=cache,
        endpoint=endpoint,
        **kw,
    )
    return Path(path)


async def snapshot(endpoint: str, cache: Path, **kw: Any) -> Path:
    path = await asyncio.to_thread(
        hf.snapshot_download,
        repo_id=kw.pop("repo_id", REPO),
        cache_dir=cache,
        endpoint=endpoint,
        **kw,
    )
    return Path(path)
