"""What a pull returns: each file in place with where its bytes came from, per model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelfetchError
from .events import Layer


@dataclass(frozen=True)
class FileResult:
    """A file that is in place and verified, and where its bytes came from."""

    path: str
    local_path: Path
    size: int
    sha256: str
    source: Layer
    gateway: str | None
    bytes_downloaded: int
    # (layer, base URL, bytes of the file it sent) of each origin whose bytes are in the file
    origins: tuple[tuple[Layer, str, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "source": self.source,
            "gateway": self.gateway,
            "bytes_downloaded": self.bytes_downloaded,
        }
        if len(self.origins) > 1:
            out["origins"] = [
                {"source": layer, "gateway": base, "bytes_downloaded": n}
                for layer, base, n in self.origins
            ]
        return out


@dataclass
class ModelResult:
    """The outcome of pulling one model or repo: files in place, and errors for the rest.

    For a Hugging Face repo id, `snapshot` is the snapshot dir (or the `--local-dir`) and
    `commit` the commit its revision resolved to; both are None for a catalog model.
    """

    name: str
    dir: Path
    files: list[FileResult] = field(default_factory=list)
    errors: list[ModelfetchError] = field(default_factory=list)
    snapshot: Path | None = None
    commit: str | None = None

    @property
    def ok(self) -> bool:
        return not self.errors
