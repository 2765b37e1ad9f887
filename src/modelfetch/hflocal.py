"""A `--local-dir` download: plain files in DIR, with huggingface_hub's per-file metadata.

As `hf download --local-dir DIR` leaves it (huggingface_hub/_local_folder.py):

    DIR/<path>                                          the file itself
    DIR/.cache/huggingface/download/<path>.metadata     "<commit>\\n<etag>\\n<unix time>\\n"
    DIR/.cache/huggingface/download/<path>.lock         filelock around reading/writing it
    DIR/.cache/huggingface/trees/<commit>.json          the commit's tree listing
    DIR/.cache/huggingface/{.gitignore, CACHEDIR.TAG}

A metadata file counts only while the file's mtime is at most one second after the recorded
time, so it is written after the file. Then `hf_hub_download(..., local_dir=DIR)` finds the
file up to date: with a commit revision it sends nothing, with a branch one HEAD and no GET.
Blocking: call from a worker thread.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from .catalog import check_relpath
from .hfcache import (
    CACHEDIR_TAG,
    CACHEDIR_TAG_CONTENT,
    LOCK_MODE,
    check_commit,
    check_etag,
    default_file_mode,
    fsync_dir,
    fsync_file,
    read_tree_listing,
    same_device,
    write_atomic,
    write_tree_listing,
)
from .hubtypes import RepoFile
from .store import storage_error


@dataclass(frozen=True)
class LocalMetadata:
    """What `read_download_metadata` returns: the commit and etag a local file was saved at."""

    path: str
    commit: str
    etag: str
    timestamp: float


class LocalDir:
    """A local dir in huggingface_hub's `local_dir` layout."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()

    def __repr__(self) -> str:
        return f"LocalDir({str(self.root)!r})"

    @property
    def meta_dir(self) -> Path:
        """`DIR/.cache/huggingface`."""
        return self.root / ".cache" / "huggingface"

    def file_path(self, path: str) -> Path:
        check_relpath(path)
        return self.root.joinpath(*path.split("/"))

    def metadata_path(self, path: str) -> Path:
        check_relpath(path)
        return self.meta_dir.joinpath("download", *f"{path}.metadata".split("/"))

    def lock_path(self, path: str) -> Path:
        """`metadata_path.with_suffix(".lock")`: `config.json.metadata` -> `config.json.lock`."""
        return self.metadata_path(path).with_suffix(".lock")

    def lock(self, path: str) -> FileLock:
        """The lock huggingface_hub holds while it writes or reads this file's metadata."""
        lock_path = self.lock_path(path)
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, lock_path.parent) from None
        return FileLock(str(lock_path), mode=LOCK_MODE, thread_local=False)

    # -- reading ----------------------------------------------------------------------------

    def read_metadata(self, path: str) -> LocalMetadata | None:
        """The metadata of `path` if present, well formed and not older than the file."""
        try:
            lines = self.metadata_path(path).read_text().splitlines()
            commit, etag, stamp = lines[0].strip(), lines[1].strip(), float(lines[2].strip())
            mtime = self.file_path(path).stat().st_mtime
        except (OSError, ValueError, IndexError):
            return None
        if mtime - 1 > stamp:
            return None  # the file changed after the metadata was written
        return LocalMetadata(path, commit, etag, stamp)

    def read_tree(self, commit: str) -> dict[str, RepoFile] | None:
        return read_tree_listing(self.meta_dir / "trees" / f"{check_commit(commit)}.json")

    # -- writing ----------------------------------------------------------------------------

    def install(self, path: str, source: Path, *, commit: str, etag: str, move: bool) -> Path:
        """Put verified `source` at `DIR/<path>` atomically, then record commit and etag.

        `move=True` renames our temp file in (copying across filesystems); `move=False`
        copies (never a hard link: editing the local file must not change a cache blob).
        Take `lock(path)` around this call to keep out a concurrent `hf download`.
        """
        check_commit(commit)
        check_etag(etag)
        final = self.file_path(path)
        meta = self.metadata_path(path)
        try:
            self._prepare()
            final.parent.mkdir(parents=True, exist_ok=True)
            meta.parent.mkdir(parents=True, exist_ok=True)
            staged = source if move and same_device(source, final.parent) else None
            if staged is not None:
                os.chmod(staged, default_file_mode(final.parent))
            else:
                # huggingface_hub's temp: <short hash of the name>.<etag>.<8 hex>.incomplete
                name = f"{_short_hash(meta.name)}.{etag}.{uuid.uuid4().hex[:8]}.incomplete"
                staged = meta.parent / name
                if not same_device(meta.parent, final.parent):
                    staged = final.parent / f".{name}"
                shutil.copyfile(source, staged)
            try:
                fsync_file(staged)
                os.replace(staged, final)
            finally:
                if staged != source:
                    staged.unlink(missing_ok=True)
            if move:
                source.unlink(missing_ok=True)
            fsync_dir(final.parent)
        except OSError as exc:
            raise storage_error(exc, final) from None
        self.write_metadata(path, commit, etag)
        return final

    def write_metadata(self, path: str, commit: str, etag: str) -> None:
        """`<commit>\\n<etag>\\n<time>\\n`, written atomically, after the file."""
        meta = self.metadata_path(path)
        try:
            self._prepare()
            meta.parent.mkdir(parents=True, exist_ok=True)
            text = f"{check_commit(commit)}\n{check_etag(etag)}\n{time.time()}\n"
            write_atomic(meta, text.encode(), temp_dir=meta.parent)
        except OSError as exc:
            raise storage_error(exc, meta) from None

    def write_tree(self, commit: str, files: Iterable[RepoFile]) -> Path:
        path = self.meta_dir / "trees" / f"{check_commit(commit)}.json"
        self._prepare()
        write_tree_listing(path, files)
        return path

    def _prepare(self) -> None:
        """`.cache/huggingface/` with its CACHEDIR.TAG and a `.gitignore` of `*`."""
        self.meta_dir.mkdir(parents=True, exist_ok=True)
        for name, text in ((CACHEDIR_TAG, CACHEDIR_TAG_CONTENT), (".gitignore", "*")):
            target = self.meta_dir / name
            if not target.exists():
                write_atomic(target, text.encode(), temp_dir=self.meta_dir)


def _short_hash(name: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha1(name.encode()).digest()).decode()
