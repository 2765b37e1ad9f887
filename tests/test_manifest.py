"""Manifest reading, atomic updates and generation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from modelfetch.errors import ConfigError, UnsafePath
from modelfetch.manifest import FileEntry, Manifest, generate


def test_generate_records_sizes_and_hashes(tmp_path: Path) -> None:
    d = tmp_path / "model"
    (d / "onnx").mkdir(parents=True)
    (d / "config.json").write_bytes(b"{}")
    (d / "onnx" / "m.onnx").write_bytes(b"x" * 1000)
    (d / ".hidden").write_bytes(b"no")
    (d / "old.bak").write_bytes(b"no")
    manifest = tmp_path / ".manifests.json"
    generate(d, "m", manifest)
    data = json.loads(manifest.read_text())
    assert data == {
        "m": {
            "files": {
                "config.json": {"size": 2, "sha256": hashlib.sha256(b"{}").hexdigest()},
                "onnx/m.onnx": {"size": 1000, "sha256": hashlib.sha256(b"x" * 1000).hexdigest()},
            }
        }
    }


def test_updates_keep_other_models_and_publication(tmp_path: Path) -> None:
    m = Manifest(tmp_path / ".manifests.json")
    m.record_files("a", {"f": FileEntry(1, "0" * 64)})
    m.record_publication("a", "bafyroot")
    m.record_files("b", {"g": FileEntry(2, "1" * 64)})
    m.record_files("a", {"h": FileEntry(3, "2" * 64)})
    data = m.read()
    assert set(data["a"]["files"]) == {"f", "h"}
    assert data["a"]["ipfsHash"] == "bafyroot"
    assert data["a"]["publishedAt"].endswith("Z")
    assert m.ipfs_cid("a") == "bafyroot"
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_manifest_is_an_error_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / ".manifests.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Manifest(path).record_files("a", {"f": FileEntry(1, "0" * 64)})
    assert path.read_text() == "{not json"


def test_manifest_with_unsafe_name_rejected(tmp_path: Path) -> None:
    path = tmp_path / ".manifests.json"
    path.write_text(json.dumps({"a": {"files": {"../x": {"size": 1, "sha256": "0" * 64}}}}))
    with pytest.raises(UnsafePath):
        Manifest(path).read()


def test_agentgui_format_is_read(tmp_path: Path) -> None:
    path = tmp_path / ".manifests.json"
    sha = "ab" * 32
    path.write_text(
        json.dumps(
            {
                "whisper-base": {
                    "files": {"onnx/encoder_model.onnx": {"size": 82470000, "sha256": sha}},
                    "ipfsHash": "Qm123",
                    "publishedAt": "2026-01-01T00:00:00Z",
                }
            }
        )
    )
    entry = Manifest(path).entry("whisper-base", "onnx/encoder_model.onnx")
    assert entry == FileEntry(82470000, sha)
