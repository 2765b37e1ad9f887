"""What is on disk: per-model file states for `status` and `verify`, with no network."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from .catalog import ModelSpec
from .hashes import Identity
from .store import Store

FileState = Literal["verified", "missing", "corrupt", "unverified"]


@dataclass(frozen=True)
class FileStatus:
    """One file of a model as found on disk."""

    path: str
    state: FileState
    size: int | None = None
    sha256: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "state": self.state,
            "size": self.size,
            "sha256": self.sha256,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class ModelStatus:
    """A catalog model and the state of each of its files."""

    name: str
    dir: str
    files: tuple[FileStatus, ...]

    @property
    def state(self) -> str:
        states = {f.state for f in self.files}
        if states == {"verified"}:
            return "complete"
        if states == {"missing"}:
            return "missing"
        if "corrupt" in states:
            return "corrupt"
        return "partial" if "verified" in states else "unverified"

    @property
    def bytes(self) -> int:
        return sum(f.size or 0 for f in self.files if f.state == "verified")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dir": self.dir,
            "state": self.state,
            "bytes": self.bytes,
            "files": [f.to_dict() for f in self.files],
        }


async def inspect_model(
    store: Store, model: ModelSpec, *, deep: bool = False, repair: bool = False
) -> ModelStatus:
    """Check each file against the manifest: by verified stamp, or by rehashing when `deep`.

    Without `repair`, nothing on disk is changed (a corrupt file stays where it is).
    """
    entries = await asyncio.to_thread(store.manifest.entries, model.name)
    files = []
    for path in model.files:
        final = store.final_path(model, path)
        entry = entries.get(path)
        if not final.is_file():
            files.append(FileStatus(path, "missing"))
        elif entry is None:
            files.append(
                FileStatus(
                    path,
                    "unverified",
                    final.stat().st_size,
                    reason="not in the manifest: nothing to check it against",
                )
            )
        else:
            identity = Identity(entry.size, entry.sha256, evidence="manifest")
            found = await store.lookup(model, path, identity, deep=deep, move_corrupt=repair)
            if found.status == "hit" and found.verified is not None:
                files.append(
                    FileStatus(path, "verified", found.verified.size, found.verified.sha256)
                )
            else:
                files.append(
                    FileStatus(
                        path,
                        "corrupt",
                        final.stat().st_size if final.exists() else None,
                        reason=found.reason,
                    )
                )
    return ModelStatus(model.name, model.dir, tuple(files))
