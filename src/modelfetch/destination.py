"""Where a verified file is installed and where its partial lives: the `Destination` protocol.

The engine fetches and verifies; a destination decides the paths: `ModelsDir` is the models
dir's own layout (catalog models), `hfdest` has the Hugging Face cache and `--local-dir`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Protocol

from filelock import FileLock

from .catalog import ModelSpec
from .errors import DiskFull
from .hashes import Identity, Verified
from .store import Lookup, Store, storage_error


class Destination(Protocol):
    """Where one model's (or repo's) verified files go."""

    @property
    def corrupt_note(self) -> str:
        """What is done with a file found corrupt, as the failure report says it."""
        ...

    def final_path(self, path: str) -> Path:
        """Where the verified file ends up (also the key of a download in progress)."""
        ...

    def partial_paths(self, path: str) -> tuple[Path, Path]:
        """Where the file being received keeps its data and its control file."""
        ...

    def lock(self, path: str) -> FileLock:
        """The cross-process lock held from the cache check to the install."""
        ...

    def ensure_space(self, where: Path, needed: int) -> None: ...

    def known_identity(self, path: str, given: Identity) -> Identity | None:
        """What the file must be, known without the network (for the no-lock fast path)."""
        ...

    async def lookup(self, path: str, identity: Identity, *, repair: bool) -> Lookup:
        """Is a verified copy in place? (`repair`: deal with a corrupt one as `corrupt_note`.)"""
        ...

    def install(self, path: str, data: Path, control: Path, verified: Verified) -> Path:
        """Move a verified partial into place atomically (blocking)."""
        ...

    def install_copy(self, path: str, source: Path, verified: Verified) -> Path:
        """Put a verified file that stays where it is (a blob of the Hugging Face cache) in
        place: a hard link when on one filesystem, else a copy (blocking)."""
        ...

    def reads_hf_blob(self, cache_root: Path, folder: str) -> bool:
        """True when this destination is that repo of that Hugging Face cache itself."""
        ...


class ModelsDir:
    """A catalog model in the models dir's own layout (`<models_dir>/<model.dir>/<path>`)."""

    corrupt_note = "moved to .bak"

    def __init__(self, store: Store, model: ModelSpec) -> None:
        self.store = store
        self.model = model

    def final_path(self, path: str) -> Path:
        return self.store.final_path(self.model, path)

    def partial_paths(self, path: str) -> tuple[Path, Path]:
        return self.store.partial_paths(self.model, path)

    def lock(self, path: str) -> FileLock:
        return self.store.file_lock(self.model, path)

    def ensure_space(self, where: Path, needed: int) -> None:
        self.store.ensure_space(where, needed)

    def known_identity(self, path: str, given: Identity) -> Identity | None:
        entry = self.store.manifest.entry(self.model.name, path)
        if entry is None:
            return None
        return Identity(entry.size, entry.sha256, evidence="manifest")

    async def lookup(self, path: str, identity: Identity, *, repair: bool) -> Lookup:
        return await self.store.lookup(self.model, path, identity, move_corrupt=repair)

    def install(self, path: str, data: Path, control: Path, verified: Verified) -> Path:
        return self.store.install(self.model, path, data, control, verified)

    def install_copy(self, path: str, source: Path, verified: Verified) -> Path:
        data, control = self.partial_paths(path)
        staged = data.with_name(data.name + ".link")
        try:
            staged.parent.mkdir(parents=True, exist_ok=True)
            staged.unlink(missing_ok=True)
            link_or_copy(source, staged)
        except OSError as exc:
            staged.unlink(missing_ok=True)
            raise storage_error(exc, staged) from None
        final = self.store.install(self.model, path, staged, control, verified)
        data.unlink(missing_ok=True)  # a partial of an earlier try is of no use now
        return final

    def reads_hf_blob(self, cache_root: Path, folder: str) -> bool:
        return False


def link_or_copy(source: Path, target: Path) -> None:
    """`target` becomes a hard link to `source`, or a copy when links are not possible."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def ensure_space(root: Path, where: Path, needed: int, flag: str) -> None:
    """Fail before a transfer that cannot fit in `root`, rather than at 99 %."""
    probe = where.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if needed > free:
        raise DiskFull(
            f"not enough space in {root}: {needed:,} bytes needed, {free:,} free; "
            f"free some space or use another {flag}"
        )
