"""Model and file specifications, the built-in catalog, and file-name safety checks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, UnsafePath


def check_relpath(path: str, *, what: str = "file name") -> str:
    """Return `path` if it is a safe relative POSIX path inside a directory, else raise.

    Rejects absolute paths, `..` and `.` segments, empty segments, backslashes and NUL, so a
    name from a config file, a manifest, a gateway or a hub can never escape the model dir.
    """
    if not isinstance(path, str) or not path:
        raise UnsafePath(f"empty {what}: a relative path such as 'onnx/model.onnx' is needed")
    if "\x00" in path:
        raise UnsafePath(f"{what} {path!r} contains a NUL byte")
    if "\\" in path:
        raise UnsafePath(f"{what} {path!r} contains a backslash: use '/' between directories")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise UnsafePath(f"{what} {path!r} is absolute: it must be relative to the model dir")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise UnsafePath(f"{what} {path!r} has a '{part or '//'}' segment: not allowed")
        if any(ord(ch) < 32 for ch in part):
            raise UnsafePath(f"{what} {path!r} contains a control character")
    return path


@dataclass(frozen=True)
class HuggingFaceRef:
    """Where a model lives on a Hugging Face hub."""

    repo: str
    revision: str = "main"
    type: str = "model"  # "model" or "dataset"
    subdir: str = ""

    def __post_init__(self) -> None:
        if self.type not in ("model", "dataset"):
            raise ConfigError(f"huggingface type {self.type!r}: use 'model' or 'dataset'")
        if self.repo.count("/") > 1 or not self.repo:
            raise ConfigError(f"huggingface repo {self.repo!r}: expected 'org/name'")
        check_relpath(self.repo, what="huggingface repo")
        if self.subdir:
            check_relpath(self.subdir.strip("/"), what="huggingface subdir")
        if not self.revision or "\x00" in self.revision or ".." in self.revision:
            raise ConfigError(f"huggingface revision {self.revision!r} is not valid")

    def repo_path(self, path: str) -> str:
        """The file's path inside the repository."""
        sub = self.subdir.strip("/")
        return f"{sub}/{path}" if sub else path


@dataclass(frozen=True)
class IPFSRef:
    """A model published to IPFS as one directory: file at `<cid>/<path>`."""

    cid: str

    def __post_init__(self) -> None:
        if not self.cid or not self.cid.isalnum():
            raise ConfigError(f"ipfs cid {self.cid!r} is not a CID")


@dataclass(frozen=True)
class ModelSpec:
    """One model: where its files go (relative to the models dir) and where they come from."""

    name: str
    dir: str
    files: tuple[str, ...]
    huggingface: HuggingFaceRef | None = None
    ipfs: IPFSRef | None = None
    type: str = "model"
    sizes: Mapping[str, int] = field(default_factory=dict)  # approximate, for display only

    def __post_init__(self) -> None:
        check_relpath(self.dir, what=f"dir of model {self.name!r}")
        if not self.files:
            raise ConfigError(f"model {self.name!r} lists no files")
        for f in self.files:
            check_relpath(f, what=f"file of model {self.name!r}")
        if len(set(self.files)) != len(self.files):
            raise ConfigError(f"model {self.name!r} lists a file twice")


WHISPER_BASE = ModelSpec(
    name="whisper-base",
    type="stt",
    dir="onnx-community/whisper-base",
    huggingface=HuggingFaceRef(repo="onnx-community/whisper-base", revision="main"),
    files=(
        "config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "onnx/encoder_model.onnx",
        "onnx/decoder_model_merged.onnx",
        "onnx/decoder_model_merged_q4.onnx",
    ),
    sizes={"onnx/encoder_model.onnx": 78_700_000, "onnx/decoder_model_merged.onnx": 198_900_000},
)

TTS_MODELS = ModelSpec(
    name="tts-models",
    type="voice",
    dir="tts",
    huggingface=HuggingFaceRef(
        repo="AnEntrypoint/sttttsmodels", revision="main", type="dataset", subdir="tts"
    ),
    files=(
        "mimi_encoder.onnx",
        "text_conditioner.onnx",
        "flow_lm_main_int8.onnx",
        "flow_lm_flow_int8.onnx",
        "mimi_decoder_int8.onnx",
        "tokenizer.model",
    ),
    sizes={
        "mimi_encoder.onnx": 73 << 20,
        "text_conditioner.onnx": 16 << 20,
        "flow_lm_main_int8.onnx": 76 << 20,
        "flow_lm_flow_int8.onnx": 10 << 20,
        "mimi_decoder_int8.onnx": 23 << 20,
        "tokenizer.model": 59 << 10,
    },
)

BUILTIN: dict[str, ModelSpec] = {m.name: m for m in (WHISPER_BASE, TTS_MODELS)}


def model_from_table(name: str, table: Mapping[str, Any]) -> ModelSpec:
    """Build a ModelSpec from a `[models.NAME]` TOML table, with clear errors."""
    known = {"dir", "huggingface", "ipfs", "files", "type"}
    unknown = set(table) - known
    if unknown:
        raise ConfigError(
            f"model {name!r}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}"
        )
    base = BUILTIN.get(name)
    files = table.get("files", base.files if base else None)
    if not isinstance(files, Iterable) or isinstance(files, str | bytes) or not files:
        raise ConfigError(f"model {name!r}: 'files' must be a non-empty list of relative paths")
    hf = (
        _hf_ref(name, table["huggingface"])
        if "huggingface" in table
        else (base.huggingface if base else None)
    )
    ipfs = _ipfs_ref(name, table["ipfs"]) if "ipfs" in table else (base.ipfs if base else None)
    return ModelSpec(
        name=name,
        dir=str(table.get("dir", base.dir if base else name)),
        files=tuple(str(f) for f in files),
        huggingface=hf,
        ipfs=ipfs,
        type=str(table.get("type", base.type if base else "model")),
    )


def _hf_ref(name: str, value: Any) -> HuggingFaceRef:
    if isinstance(value, str):
        return HuggingFaceRef(repo=value)
    if not isinstance(value, Mapping) or "repo" not in value:
        raise ConfigError(f"model {name!r}: 'huggingface' needs at least repo = 'org/name'")
    allowed = {"repo", "revision", "type", "subdir"}
    if set(value) - allowed:
        raise ConfigError(f"model {name!r}: huggingface keys allowed: {sorted(allowed)}")
    return HuggingFaceRef(**{k: str(v) for k, v in value.items()})


def _ipfs_ref(name: str, value: Any) -> IPFSRef:
    if isinstance(value, str):
        return IPFSRef(cid=value)
    if not isinstance(value, Mapping) or "cid" not in value:
        raise ConfigError(f"model {name!r}: 'ipfs' needs cid = '<directory CID>'")
    return IPFSRef(cid=str(value["cid"]))
