"""Catalog entries and file-name safety."""

from __future__ import annotations

import pytest

from modelfetch.catalog import BUILTIN, HuggingFaceRef, ModelSpec, check_relpath, model_from_table
from modelfetch.errors import ConfigError, UnsafePath


@pytest.mark.parametrize(
    "bad",
    ["/etc/passwd", "../x", "a/../../x", "a/./b", "a\\b", "a\x00b", "", "a//b", "C:/x", "a/\nb"],
)
def test_unsafe_paths_are_rejected(bad: str) -> None:
    with pytest.raises(UnsafePath):
        check_relpath(bad)


@pytest.mark.parametrize(
    "good", ["config.json", "onnx/encoder_model.onnx", "a/b/c.d", "..x", "x.."]
)
def test_plain_relative_paths_pass(good: str) -> None:
    assert check_relpath(good) == good


def test_builtin_catalog_matches_agentgui() -> None:
    whisper = BUILTIN["whisper-base"]
    assert whisper.dir == "onnx-community/whisper-base"
    assert whisper.huggingface == HuggingFaceRef("onnx-community/whisper-base", "main")
    assert "onnx/decoder_model_merged_q4.onnx" in whisper.files
    assert len(whisper.files) == 9
    tts = BUILTIN["tts-models"]
    assert tts.dir == "tts"
    assert tts.huggingface is not None
    assert (tts.huggingface.type, tts.huggingface.subdir) == ("dataset", "tts")
    assert tts.huggingface.repo_path("tokenizer.model") == "tts/tokenizer.model"
    assert set(tts.files) >= {"mimi_encoder.onnx", "tokenizer.model"}


def test_model_from_table_rejects_unsafe_names_and_unknown_keys() -> None:
    with pytest.raises(UnsafePath):
        model_from_table("m", {"files": ["../../etc/passwd"], "huggingface": {"repo": "a/b"}})
    with pytest.raises(UnsafePath):
        model_from_table("m", {"dir": "/abs", "files": ["x"]})
    with pytest.raises(ConfigError, match="unknown key"):
        model_from_table("m", {"files": ["x"], "urls": []})
    with pytest.raises(ConfigError, match="type"):
        model_from_table("m", {"files": ["x"], "huggingface": {"repo": "a/b", "type": "space"}})


def test_model_from_table_overrides_builtin_fields() -> None:
    spec = model_from_table("whisper-base", {"ipfs": {"cid": "bafyabc"}})
    assert spec.files == BUILTIN["whisper-base"].files
    assert spec.ipfs is not None and spec.ipfs.cid == "bafyabc"


def test_duplicate_files_rejected() -> None:
    with pytest.raises(ConfigError):
        ModelSpec(name="m", dir="m", files=("a", "a"))
