"""What `status` says of the Hugging Face cache: each repo, its commit, size, files verified."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .hfcache import HFCache
from .hfdest import Stamps
from .hfscan import CachedRepo, CachedSnapshot


@dataclass(frozen=True)
class RepoStatus:
    """One repo of the cache as `status` shows it (its current snapshot: `main`'s, else the
    newest)."""

    repo: CachedRepo
    snapshot: CachedSnapshot | None
    verified: int  # files of the snapshot whose blob has a verified stamp of modelfetch's

    @property
    def files(self) -> int:
        return 0 if self.snapshot is None else len(self.snapshot.files)

    @property
    def state(self) -> str:
        snap = self.snapshot
        if snap is None or not snap.files:
            return "empty"
        if any(f.blob is None for f in snap.files) or self.repo.problems:
            return "broken"
        if snap.missing:
            return "partial"
        return "verified" if self.verified == len(snap.files) else "unverified"

    def to_dict(self) -> dict[str, Any]:
        snap = self.snapshot
        return {
            "repo_id": self.repo.repo_id,
            "repo_type": self.repo.repo_type,
            "path": str(self.repo.folder),
            "size_on_disk": self.repo.size_on_disk,
            "refs": dict(self.repo.refs),
            "commit": None if snap is None else snap.commit,
            "snapshot": None if snap is None else str(snap.path),
            "files": self.files,
            "verified": self.verified,
            "state": self.state,
            "missing": [] if snap is None or snap.missing is None else list(snap.missing),
            "problems": list(self.repo.problems),
        }


def cache_status(cache: HFCache, models_dir: Path) -> tuple[list[RepoStatus], list[str]]:
    """Every repo of `cache` with its files counted verified per modelfetch's stamps."""
    scan = cache.scan()
    stamps = Stamps(models_dir)
    out = []
    for repo in scan.repos:
        snap = _current(repo)
        verified = 0
        if snap is not None:
            for f in snap.files:
                if f.blob is None or f.etag is None:
                    continue
                key = Stamps.blob_key(cache, repo.folder.name, f.etag)
                found = stamps.read(key, f.blob)
                if found is not None and f.etag in (found[1], found[0].sha256):
                    verified += 1
        out.append(RepoStatus(repo, snap, verified))
    return out, list(scan.problems)


def _current(repo: CachedRepo) -> CachedSnapshot | None:
    by_commit = {s.commit: s for s in repo.snapshots}
    main = repo.refs.get("main")
    if main in by_commit:
        return by_commit[main]
    if not repo.snapshots:
        return None
    return max(repo.snapshots, key=lambda s: s.path.stat().st_mtime)
