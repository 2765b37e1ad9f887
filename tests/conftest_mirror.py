"""Fixtures of the mirror tests: an upstream hub with a repo, an empty mirror in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mirror_support import FILES, REPO, ROWS, Running, mirror_settings, serving
from modelfetch.testing import HubServer


@pytest.fixture
def hf_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No telemetry, no token, no proxy: every request goes where the test says."""
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def upstream(hf_env: None) -> Iterator[HubServer]:
    with HubServer() as server:
        for path, data in FILES.items():
            server.add_file(REPO, path, data)
        server.add_file("org/corpus", "data/train/rows.csv", ROWS, repo_type="dataset")
        yield server


@pytest.fixture
async def mirror(tmp_path: Path, upstream: HubServer, hf_env: None) -> AsyncIterator[Running]:
    async with serving(mirror_settings(tmp_path, upstream)) as running:
        yield running
