"""Reading, updating and generating `.manifests.json` (agentgui's format), atomically."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock

from .catalog import check_relpath
from .errors import ConfigError, ReadOnly, StorageError
from .hashes import is_sha256, sha256_file

MANIFEST_NAME = ".manifests.json"


@dataclass(frozen=True)
class FileEntry:
    """A verified file's size and SHA-256, as the manifest records it."""

    size: int
    sha256: str


def _validate(data: object, path: Path) -> dict[str, Any]:
    """Check the manifest's shape; a bad entry is an error, never silently dropped."""
    if not isinstance(data, dict):
        raise ConfigError(f"manifest {path}: expected a JSON object of models")
    for model, entry in data.items():
        files = entry.get("files", {}) if isinstance(entry, dict) else None
        if not isinstance(files, dict):
            raise ConfigError(f"manifest {path}: model {model!r} needs a 'files' object")
        for name, info in files.items():
            check_relpath(name, what=f"manifest {path}: file name")
            ok = isinstance(info, dict) and isinstance(info.get("size"), int) and info["size"] >= 0
            if not ok or not is_sha256(str(info.get("sha256", "")).lower()):
                raise ConfigError(
                    f"manifest {path}: {model}/{name} needs an integer size and a 64-hex sha256"
                )
    return data


class Manifest:
    """The `.manifests.json` of a models dir; every write is atomic and cross-process locked."""

    def __init__(self, path: Path, lock_path: Path | None = None) -> None:
        self.path = path
        # The lock lives beside the manifest unless the store keeps it under .modelfetch/.
        self._lock = FileLock(str(lock_path or path.with_name(path.name + ".lock")), timeout=60)

    def read(self) -> dict[str, Any]:
        """The whole manifest ({} when absent). A corrupt manifest raises ConfigError."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StorageError(f"manifest {self.path} cannot be read: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"manifest {self.path} is not valid JSON ({exc}); fix it or move it aside "
                "(modelfetch never overwrites it silently)"
            ) from None
        return _validate(data, self.path)

    def entries(self, model: str) -> dict[str, FileEntry]:
        files = self.read().get(model, {}).get("files", {})
        return {k: FileEntry(int(v["size"]), str(v["sha256"]).lower()) for k, v in files.items()}

    def entry(self, model: str, path: str) -> FileEntry | None:
        return self.entries(model).get(path)

    def record_files(self, model: str, files: Mapping[str, FileEntry]) -> None:
        """Add or replace verified files of a model."""
        with self._edit() as data:
            slot = data.setdefault(model, {}).setdefault("files", {})
            for name, entry in files.items():
                slot[check_relpath(name)] = {"size": entry.size, "sha256": entry.sha256}

    def record_publication(self, model: str, cid: str, when: datetime | None = None) -> None:
        """Remember where a model was published on IPFS."""
        stamp = (when or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
        with self._edit() as data:
            slot = data.setdefault(model, {})
            slot.setdefault("files", {})
            slot["ipfsHash"] = cid
            slot["publishedAt"] = stamp

    def ipfs_cid(self, model: str) -> str | None:
        value = self.read().get(model, {}).get("ipfsHash")
        return str(value) if value else None

    @contextmanager
    def _edit(self) -> Iterator[dict[str, Any]]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock:
                data = self.read()
                yield data
                _validate(data, self.path)
                write_json_atomic(self.path, data)
        except PermissionError as exc:
            raise ReadOnly(f"manifest {self.path} cannot be written: {exc.strerror}") from None


def write_json_atomic(path: Path, data: Any, *, fsync: bool = True) -> None:
    """Write JSON to a temp file beside `path`, fsync it (unless told not to), then rename.

    `fsync=False` keeps the rename atomic against a killed process but not against a power
    loss: for files rewritten often that only save work (a download's control file).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def scan_directory(directory: Path) -> dict[str, FileEntry]:
    """Size and SHA-256 of every regular file under `directory`.

    Hidden files, symlinks and leftovers (`.bak`, `.part`, `.tmp`) are skipped.
    """
    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory")
    found: dict[str, FileEntry] = {}
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            full = Path(root) / name
            if name.startswith(".") or full.is_symlink() or not full.is_file():
                continue
            if name.endswith((".bak", ".part", ".tmp")):
                continue
            rel = full.relative_to(directory).as_posix()
            size, digest = sha256_file(full)
            found[check_relpath(rel)] = FileEntry(size, digest)
    if not found:
        raise ConfigError(f"{directory} holds no files to put in a manifest")
    return found


def generate(directory: Path, name: str, manifest_path: Path) -> dict[str, FileEntry]:
    """Hash every file under `directory` and record them as model `name` in the manifest."""
    files = scan_directory(directory)
    Manifest(manifest_path).record_files(name, files)
    return files
