"""What the mirror holds: repos in its Hugging Face cache and catalog models, verified.

Metadata (which commit a revision names, the files of a commit) comes from the HF cache:
`refs/<revision>`, `trees/<commit>.json` (the complete listing) or, when no listing was
written, the snapshot's links (an incomplete view). Bytes come from any local copy whose
content matches the file's identity: the blob `blobs/<etag>` of the HF cache, or the file of
a catalog model whose Hugging Face source is that repo (`repo`, `type`, `subdir`) in the
models dir. A copy is served only after its bytes were hashed against the identity (the
blob's name, the tree's SHA-256 or git SHA-1), and only while it is the same file (size,
mtime, inode) as the one hashed. Blocking: call from a worker thread.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ...catalog import ModelSpec
from ...errors import ModelfetchError
from ...hashes import Digests, Verified, feed_file
from ...hfcache import HFCache
from ...hfdest import Stamps
from ...hubtypes import RepoFile, RepoRef, is_commit
from ...store import Store

Signature = tuple[int, int, int]


@dataclass(frozen=True)
class RepoView:
    """A repo at one commit: its files; `complete` when they are the whole tree."""

    repo: RepoRef
    commit: str
    files: dict[str, RepoFile]
    complete: bool
    last_modified: str | None = None


@dataclass(frozen=True)
class Copy:
    """Verified bytes of a file on disk, and the signature they had when hashed."""

    path: Path
    size: int
    signature: Signature
    where: str  # "hf-cache" or "models-dir"

    def same(self, st: os.stat_result) -> bool:
        return (st.st_size, st.st_mtime_ns, st.st_ino) == self.signature


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The LFS pointer file git stores for an LFS file."""
    spec = "version https://git-lfs.github.com/spec/v1"
    return f"{spec}\noid sha256:{sha256}\nsize {size}\n".encode()


def lfs_pointer_oid(sha256: str, size: int) -> str:
    """The git oid of an LFS pointer file (what the tree's `oid` is for an LFS file)."""
    data = lfs_pointer(sha256, size)
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def signature_of(path: Path) -> Signature:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino


@dataclass
class Holdings:
    """The mirror's local read side (HF cache + models dir); remembers what it verified."""

    cache: HFCache
    store: Store
    models: Iterable[ModelSpec]
    stamps: Stamps
    _verified: dict[tuple[str, Signature], bool] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- metadata -----------------------------------------------------------------------------

    def local_commit(self, repo: RepoRef, revision: str) -> tuple[str, float] | None:
        """(commit, age in s of what says so) for a revision, from the HF cache."""
        if is_commit(revision):
            snap = self.cache.repo_dir(repo) / "snapshots" / revision
            if snap.is_dir() or self.cache.tree_path(repo, revision).is_file():
                return revision, 0.0
            return None
        try:
            ref = self.cache.ref_path(repo, revision)
            commit = self.cache.read_ref(repo, revision)
            if commit is None:
                return None
            return commit, max(0.0, time.time() - ref.stat().st_mtime)
        except (OSError, ModelfetchError):
            return None

    def local_view(self, repo: RepoRef, commit: str) -> RepoView | None:
        """The commit's files: the complete tree listing, else what its snapshot links to."""
        try:
            listing = self.cache.read_tree(repo, commit)
        except ModelfetchError:
            return None
        if listing is not None:
            return RepoView(repo, commit, listing, complete=True)
        snap = self.cache.repo_dir(repo) / "snapshots" / commit
        if not snap.is_dir():
            return None
        files: dict[str, RepoFile] = {}
        for link in snap.rglob("*"):
            rel = link.relative_to(snap).as_posix()
            try:
                etag = self.cache.linked_etag(repo, commit, rel)
                if etag is None:
                    continue
                size = os.stat(link).st_size
            except (OSError, ModelfetchError):
                continue
            if len(etag) == 64:
                files[rel] = RepoFile(rel, size, lfs_pointer_oid(etag, size), lfs_sha256=etag)
            else:
                files[rel] = RepoFile(rel, size, etag)
        return RepoView(repo, commit, files, complete=False) if files else None

    # -- bytes --------------------------------------------------------------------------------

    def find_copy(self, repo: RepoRef, f: RepoFile) -> Copy | None:
        """A verified local copy of `f`: the HF cache blob, else a catalog model's file."""
        blob = self.cache.find_blob(repo, f.etag)
        if blob is not None:
            key = Stamps.blob_key(self.cache, repo.folder_name, f.etag)
            found = self._checked(blob, f, "hf-cache", key)
            if found is not None:
                return found
        for model, name in self._catalog_files(repo, f.path):
            final = self.store.final_path(model, name)
            if final.is_file():
                found = self._checked(final, f, "models-dir")
                if found is not None:
                    return found
        return None

    def _checked(
        self, path: Path, f: RepoFile, where: str, stamp_key: str | None = None
    ) -> Copy | None:
        """A Copy if `path` holds `f`: known from this run, a verified stamp (the engine's,
        of the same file: size, mtime, inode), else hashed now (and stamped)."""
        try:
            sig = signature_of(path)
        except OSError:
            return None
        key = (f"{path}\0{f.etag}", sig)
        with self._lock:
            known = self._verified.get(key)
        if known is None and stamp_key is not None:
            known = self.stamps.matches(stamp_key, path, f.identity()) is not None or None
        if known is None:
            verified = _hash_matches(path, f) if sig[0] == f.size else None
            try:
                unchanged = signature_of(path) == sig  # not rewritten while it was hashed
            except OSError:
                unchanged = False
            known = verified is not None and unchanged
            if verified is not None and unchanged and stamp_key is not None:
                self.stamps.write(stamp_key, path, verified, f.etag)
        with self._lock:
            self._verified[key] = known
        return Copy(path, f.size, sig, where) if known else None

    def _catalog_models(self, repo: RepoRef) -> Iterable[ModelSpec]:
        for model in self.models:
            ref = model.huggingface
            if ref is not None and ref.repo == repo.repo_id and ref.type == repo.repo_type:
                yield model

    def _catalog_files(self, repo: RepoRef, path: str) -> Iterable[tuple[ModelSpec, str]]:
        """(model, file name in its dir) of each catalog model whose source has `path`."""
        for model in self._catalog_models(repo):
            assert model.huggingface is not None
            sub = model.huggingface.subdir.strip("/")
            name = path[len(sub) + 1 :] if sub and path.startswith(sub + "/") else None
            if not sub:
                name = path
            if name and name in model.files:
                yield model, name


def _hash_matches(path: Path, f: RepoFile) -> Verified | None:
    """The facts of `path` if its bytes are `f` (SHA-256 of an LFS file, git-blob SHA-1
    otherwise): the hub's identity only (a mirror serves what the hub serves)."""
    digests = Digests(f.identity(), name=str(path))
    try:
        feed_file(path, digests.update)
        return digests.verify()
    except (OSError, ModelfetchError):
        return None
