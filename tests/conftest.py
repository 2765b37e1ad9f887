"""Shared fixtures: loopback origins and settings that point at them."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from modelfetch.catalog import HuggingFaceRef, IPFSRef, ModelSpec
from modelfetch.config import HuggingFaceSettings, IPFSSettings, Settings, load_settings
from modelfetch.testing import GatewayServer, HubServer
from modelfetch.testing.onnx import tiny_onnx_model

REPO = "test-org/test-model"

# The documented shapes (ORIGINAL.md): a progress event and an attempt record.
PROGRESS_EVENT_KEYS = frozenset(
    {
        "type",
        "modelId",
        "file",
        "source",
        "status",
        "currentGateway",
        "bytesDownloaded",
        "bytesRemaining",
        "totalBytes",
        "downloadSpeed",
        "eta",
        "retryCount",
        "percentComplete",
        "completedFiles",
        "totalFiles",
        "timestamp",
    }
)
ATTEMPT_RECORD_KEYS = frozenset(
    {
        "timestamp",
        "model",
        "file",
        "layer",
        "gateway",
        "status",
        "latency_ms",
        "bytes_downloaded",
        "error_type",
        "error_message",
        "ttfb_ms",
    }
)
CID = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the user's config, models dir, HF token or HF cache."""
    for var in (
        "MODELFETCH_HOME",
        "MODELFETCH_CONFIG",
        "HF_ENDPOINT",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "MODELFETCH_IPFS_GATEWAYS",
        "MODELFETCH_TOKEN",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with HubServer() as server:
        yield server


@pytest.fixture
def gw1() -> Iterator[GatewayServer]:
    with GatewayServer() as server:
        yield server


@pytest.fixture
def gw2() -> Iterator[GatewayServer]:
    with GatewayServer() as server:
        yield server


def model_files(seed: int = 1, onnx_padding: int = 300_000) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {
        "config.json": b'{"seed": %d}' % seed,
        "tokenizer.json": bytes(rng.randrange(32, 127) for _ in range(20_000)),
        "onnx/model.onnx": tiny_onnx_model(seed=seed, padding=onnx_padding),
    }


@dataclass
class World:
    """A model served by a hub and two gateways, and settings that use them."""

    models_dir: Path
    hub: HubServer
    gateways: list[GatewayServer]
    files: dict[str, bytes]
    spec: ModelSpec
    settings: Settings
    extra: dict[str, Any] = field(default_factory=dict)

    def final(self, path: str) -> Path:
        return self.models_dir / self.spec.dir / path

    def with_settings(self, **changes: Any) -> Settings:
        return replace(self.settings, **changes)


def fast_settings(models_dir: Path, hub_url: str, gateways: list[str], **changes: Any) -> Settings:
    hf_home = models_dir.parent / "hf-home"  # never the real ~/.cache/huggingface
    base = load_settings(models_dir=models_dir, env={"HF_HOME": str(hf_home)})
    return replace(
        base,
        ipfs=IPFSSettings(
            gateways=tuple(gateways), timeout=1.5, retries=2, pause=0.05, connect_timeout=1.0
        ),
        huggingface=HuggingFaceSettings(
            endpoint=hub_url,
            retries=3,
            timeout=1.5,
            connect_timeout=1.0,
            backoff=0.05,
            max_backoff=3,
            cache_dir=hf_home / "hub",
            token_path=hf_home / "token",
        ),
        **changes,
    )


@pytest.fixture
def world(tmp_path: Path, hub: HubServer, gw1: GatewayServer, gw2: GatewayServer) -> World:
    return make_world(tmp_path, hub, [gw1, gw2])


def make_world(
    tmp_path: Path,
    hub: HubServer,
    gateways: list[GatewayServer],
    *,
    files: dict[str, bytes] | None = None,
    name: str = "test-model",
    with_ipfs: bool = True,
    with_hf: bool = True,
) -> World:
    files = files if files is not None else model_files()
    for path, data in files.items():
        hub.add_file(REPO, path, data)
    for gw in gateways:
        gw.add_directory(CID, files)
    spec = ModelSpec(
        name=name,
        dir=f"org/{name}",
        files=tuple(files),
        huggingface=HuggingFaceRef(REPO) if with_hf else None,
        ipfs=IPFSRef(CID) if with_ipfs else None,
    )
    models_dir = tmp_path / "models"
    settings = fast_settings(models_dir, hub.url, [g.url for g in gateways])
    settings = replace(settings, models={**settings.models, name: spec})
    return World(models_dir, hub, gateways, files, spec, settings)


def leftovers(models_dir: Path) -> list[Path]:
    """Anything that is neither a final file nor bookkeeping: temp files, partials, .bak."""
    found = []
    for p in models_dir.rglob("*"):
        rel = p.relative_to(models_dir).as_posix()
        if p.is_file() and (
            rel.startswith(".modelfetch/partial/")
            or p.name.endswith((".tmp", ".part", ".bak", ".incomplete"))
        ):
            found.append(p)
    return found


Collect = Callable[[Any], None]


# -- the fault matrix report (tests/faults) -------------------------------------------------

_FAULT_ROWS: list[dict[str, str]] = []


@pytest.fixture
def checked(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record what a fault case verified, for the matrix table."""
    notes: list[str] = []
    request.node.stash[_CHECKS_KEY] = notes
    return notes.append


_CHECKS_KEY = pytest.StashKey[list[str]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    marker = item.get_closest_marker("fault")
    if marker is not None and (report.when == "call" or report.failed):
        outcome = "pass" if report.passed else ("skip" if report.skipped else "FAIL")
        if report.when == "call" or outcome != "pass":
            _FAULT_ROWS.append(
                {
                    "fault": marker.kwargs["name"],
                    "expected": marker.kwargs["expected"],
                    "checked": "; ".join(item.stash.get(_CHECKS_KEY, [])),
                    "result": outcome,
                }
            )
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FAULT_ROWS:
        return
    import json
    import os

    terminalreporter.write_sep("=", "fault matrix")
    for row in _FAULT_ROWS:
        terminalreporter.write_line(f"{row['result']:<5} {row['fault']:<34} -> {row['expected']}")
        if row["checked"]:
            terminalreporter.write_line(f"{'':6}checked: {row['checked']}")
    target = os.environ.get("MODELFETCH_FAULT_REPORT")
    if target:
        Path(target).write_text(json.dumps(_FAULT_ROWS, indent=2))
