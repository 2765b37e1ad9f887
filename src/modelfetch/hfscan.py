"""What a Hugging Face cache holds, read the way huggingface_hub's `scan_cache_dir` reads it.

Reading only, and tolerant: a foreign or broken entry is reported in `problems` (with the
wording of the `CorruptedCacheException` huggingface_hub would raise for it), never a crash.
Sizes count each blob once per repo, as `scan_cache_dir` does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .hfcache import CACHEDIR_TAG, read_tree_listing
from .hubtypes import is_commit

# huggingface_hub/constants.py REPO_TYPES_MAPPING and utils/_cache_manager.py FILES_TO_IGNORE
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space", "kernels": "kernel"}
FILES_TO_IGNORE = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
_SHARED_STORE = ("blobs", ".huggingface-shared-blobs")  # the Xet shared store and its marker


@dataclass(frozen=True)
class CachedFile:
    """One file of a snapshot: its blob (None when the link is broken), etag and size."""

    path: str
    blob: Path | None
    etag: str | None  # the blob's name when it is a blob of this repo
    size: int


@dataclass(frozen=True)
class CachedSnapshot:
    """One `snapshots/<commit>` folder."""

    commit: str
    path: Path
    refs: tuple[str, ...]
    files: tuple[CachedFile, ...]
    missing: tuple[str, ...] | None  # files of the tree listing not here (None: no listing)


@dataclass(frozen=True)
class CachedRepo:
    """One repo folder: type, id, size on disk, refs and snapshots, and what is wrong."""

    repo_type: str
    repo_id: str
    folder: Path
    size_on_disk: int
    refs: Mapping[str, str]
    snapshots: tuple[CachedSnapshot, ...]
    incomplete: tuple[Path, ...] = ()  # `blobs/*.incomplete` left by interrupted downloads
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class CacheScan:
    """Every repo of a cache dir, and the entries that are not repos."""

    root: Path
    repos: tuple[CachedRepo, ...] = ()
    problems: tuple[str, ...] = field(default_factory=tuple)

    def repo(self, repo_type: str, repo_id: str) -> CachedRepo | None:
        for r in self.repos:
            if (r.repo_type, r.repo_id) == (repo_type, repo_id):
                return r
        return None


def scan(root: Path) -> CacheScan:
    """Read every repo folder under `root` (a missing root is an empty cache)."""
    root = Path(root)
    try:
        entries = sorted(root.iterdir())
    except FileNotFoundError:
        return CacheScan(root)
    except OSError as exc:
        return CacheScan(root, problems=(f"cannot read the cache dir {root}: {exc.strerror}",))
    repos = []
    problems = []
    for entry in entries:
        if entry.name in (".locks", CACHEDIR_TAG) or entry.name in FILES_TO_IGNORE:
            continue
        if entry.name == _SHARED_STORE[0] and (entry / _SHARED_STORE[1]).exists():
            continue
        try:
            repo, problem = _scan_repo(entry)
        except OSError as exc:
            repo, problem = None, f"cannot read {entry}: {exc.strerror or exc}"
        if repo is not None:
            repos.append(repo)
        if problem is not None:
            problems.append(problem)
    return CacheScan(root, tuple(repos), tuple(problems))


def _scan_repo(folder: Path) -> tuple[CachedRepo | None, str | None]:
    if not folder.is_dir():
        return None, f"Repo path is not a directory: {folder}"
    prefix, sep, rest = folder.name.partition("--")
    if not sep:
        return None, f"Repo path is not a valid HuggingFace cache directory: {folder}"
    if prefix not in REPO_TYPES:
        return None, f"Repo type must be one of {sorted(REPO_TYPES)}, found `{prefix}` ({folder})."
    repo_type, repo_id = REPO_TYPES[prefix], rest.replace("--", "/")
    snapshots_dir = folder / "snapshots"
    if not snapshots_dir.is_dir():
        return None, f"Snapshots dir doesn't exist in cached repo: {snapshots_dir}"
    problems: list[str] = []
    refs = _read_refs(folder / "refs", problems)
    by_commit: dict[str, list[str]] = {}
    for name, commit in refs.items():
        by_commit.setdefault(commit, []).append(name)
    blob_sizes: dict[Path, int] = {}
    snapshots = []
    for path in sorted(snapshots_dir.iterdir()):
        if path.name in FILES_TO_IGNORE:
            continue
        if not path.is_dir():
            problems.append(f"Snapshots folder corrupted. Found a file: {path}")
            continue
        snapshots.append(_scan_snapshot(folder, path, by_commit, blob_sizes, problems))
    known = {s.commit for s in snapshots}
    dangling = {c: names for c, names in by_commit.items() if c not in known}
    if dangling:
        problems.append(f"Reference(s) refer to missing commit hashes: {dangling} ({folder}).")
    incomplete = tuple(sorted((folder / "blobs").glob("*.incomplete")))
    repo = CachedRepo(
        repo_type=repo_type,
        repo_id=repo_id,
        folder=folder,
        size_on_disk=sum(blob_sizes.values()),
        refs=refs,
        snapshots=tuple(snapshots),
        incomplete=incomplete,
        problems=tuple(problems),
    )
    return repo, None


def _read_refs(refs_dir: Path, problems: list[str]) -> dict[str, str]:
    refs: dict[str, str] = {}
    if not os.path.lexists(refs_dir):
        return refs
    if not refs_dir.is_dir():
        problems.append(f"Refs directory cannot be a file: {refs_dir}")
        return refs
    for path in sorted(_files(refs_dir)):
        if path.name in FILES_TO_IGNORE:
            continue
        name = path.relative_to(refs_dir).as_posix()
        try:
            commit = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            problems.append(f"ref {name!r} cannot be read ({path})")
            continue
        if not is_commit(commit):
            problems.append(f"ref {name!r} does not hold a commit sha: {commit[:60]!r} ({path})")
        refs[name] = commit
    return refs


def _scan_snapshot(
    folder: Path,
    path: Path,
    by_commit: Mapping[str, list[str]],
    blob_sizes: dict[Path, int],
    problems: list[str],
) -> CachedSnapshot:
    blobs_dir = Path(os.path.abspath(folder / "blobs"))
    files = []
    for file_path in sorted(_files(path)):
        rel = file_path.relative_to(path).as_posix()
        if os.path.islink(file_path):
            # the first hop, as scan_cache_dir: a blob may itself link to the shared store
            blob = Path(os.path.abspath(file_path.parent / os.readlink(file_path)))
        else:
            blob = file_path
        try:
            size = blob.stat().st_size
        except OSError:
            problems.append(f"Blob missing (broken symlink): {blob}")
            files.append(CachedFile(rel, None, None, 0))
            continue
        blob_sizes.setdefault(blob, size)
        etag = blob.name if blob.parent == blobs_dir else None
        files.append(CachedFile(rel, blob, etag, size))
    listing = read_tree_listing(folder / "trees" / f"{path.name}.json")
    missing = None
    if listing is not None:
        present = {f.path for f in files if f.blob is not None}
        missing = tuple(sorted(p for p in listing if p not in present))
    return CachedSnapshot(
        commit=path.name,
        path=path,
        refs=tuple(sorted(by_commit.get(path.name, ()))),
        files=tuple(files),
        missing=missing,
    )


def _files(directory: Path) -> Iterator[Path]:
    """Every non-directory entry under `directory`; symlinks are not followed into."""
    for root, dirs, names in os.walk(directory):
        base = Path(root)
        for d in list(dirs):
            if os.path.islink(base / d):
                dirs.remove(d)
                yield base / d
        for name in names:
            yield base / name
