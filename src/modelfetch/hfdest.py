"""Repo files into the Hugging Face cache (or a `--local-dir`), verified and never half-written.

`HFCacheDestination` writes exactly what huggingface_hub writes: the partial lives beside the
blobs (`blobs/<etag>.modelfetch.incomplete`, a name huggingface_hub never resumes from), it is
written under huggingface_hub's own lock (`.locks/<repo folder>/<etag>.lock`), and only a
verified blob is linked from `snapshots/<commit>/<path>`. So modelfetch and huggingface_hub
running at once on one repo never write one blob twice, and no reader ever meets a broken
link. A blob that does not match its name is never used and never deleted: it is replaced
atomically by a verified one. Verified stamps (hfstamps) live in the models dir, never in
the other tool's cache.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from filelock import FileLock

from .destination import ensure_space
from .errors import StorageError
from .hashes import Identity, Verified
from .hfcache import HFCache
from .hflocal import LocalDir
from .hfstamps import Stamps, check_file, identity_of_etag
from .hubtypes import RepoRef
from .store import Lookup

log = logging.getLogger(__name__)

# Stamps and the checks live in hfstamps (light enough for `status`); named here as well.
__all__ = [
    "CONTROL_SUFFIX",
    "PARTIAL_SUFFIX",
    "HFCacheDestination",
    "LocalDirDestination",
    "Stamps",
    "check_file",
    "identity_of_etag",
]

PARTIAL_SUFFIX = ".modelfetch.incomplete"
CONTROL_SUFFIX = ".modelfetch-control.incomplete"


class HFCacheDestination:
    """One commit of one repo in a Hugging Face cache: blobs, snapshot links, hub locks."""

    corrupt_note = (
        "not used and left in place (it belongs to the Hugging Face cache); a verified copy "
        "replaces it atomically"
    )

    def __init__(
        self,
        cache: HFCache,
        repo: RepoRef,
        commit: str,
        etags: Mapping[str, str],
        stamps: Stamps,
    ) -> None:
        self.cache = cache
        self.repo = repo
        self.commit = commit
        self.etags = dict(etags)
        self.stamps = stamps
        self._corrupt: set[str] = set()

    @property
    def snapshot(self) -> Path:
        return self.cache.snapshot_dir(self.repo, self.commit)

    def _etag(self, path: str) -> str:
        return self.etags[path]

    def _key(self, etag: str) -> str:
        return Stamps.blob_key(self.cache, self.repo.folder_name, etag)

    def final_path(self, path: str) -> Path:
        return self.cache.snapshot_path(self.repo, self.commit, path)

    def partial_paths(self, path: str) -> tuple[Path, Path]:
        blob = self.cache.blob_path(self.repo, self._etag(path))
        return blob.with_name(blob.name + PARTIAL_SUFFIX), blob.with_name(
            blob.name + CONTROL_SUFFIX
        )

    def lock(self, path: str) -> FileLock:
        return self.cache.lock(self.repo, self._etag(path))

    def ensure_space(self, where: Path, needed: int) -> None:
        ensure_space(self.cache.root, where, needed, "--cache-dir")

    def known_identity(self, path: str, given: Identity) -> Identity | None:
        return given if given.verifiable else None

    async def lookup(self, path: str, identity: Identity, *, repair: bool) -> Lookup:
        return await asyncio.to_thread(self._lookup, path, identity)

    def _lookup(self, path: str, identity: Identity) -> Lookup:
        etag = self._etag(path)
        final = self.final_path(path)
        blob = self.cache.find_blob(self.repo, etag)
        if blob is None:
            return Lookup("missing", final)
        verified, error = check_file(blob, identity, path, self.stamps, self._key(etag), etag)
        if verified is None:
            assert error is not None
            self._corrupt.add(etag)
            return Lookup(
                "corrupt",
                blob,
                reason=f"the Hugging Face cache's blob {blob} does not match: {error}",
                error_type=type(error).__name__,
            )
        self.cache.link(self.repo, self.commit, path, etag)
        return Lookup("hit", final, verified)

    def install(self, path: str, data: Path, control: Path, verified: Verified) -> Path:
        etag = self._etag(path)
        if etag in self._corrupt and self.cache.find_blob(self.repo, etag) is not None:
            blob = self.cache.replace_blob(self.repo, etag, data, move=True)
            log.warning("%s did not match its name: replaced with a verified copy", blob)
            self._corrupt.discard(etag)
        elif not self.cache.install_blob(self.repo, etag, data, move=True):
            # Another writer put the blob there meanwhile (without the lock): check it.
            self._expect_good(path, etag)
        control.unlink(missing_ok=True)
        return self._linked(path, etag, verified)

    def install_copy(self, path: str, source: Path, verified: Verified) -> Path:
        etag = self._etag(path)
        if not self.cache.install_blob(self.repo, etag, source, move=False):
            self._expect_good(path, etag)
        return self._linked(path, etag, verified)

    def _expect_good(self, path: str, etag: str) -> None:
        blob = self.cache.blob_path(self.repo, etag)
        size = blob.stat().st_size
        want = identity_of_etag(etag, size)
        _, error = check_file(blob, want, path, self.stamps, self._key(etag), etag)
        if error is not None:
            raise StorageError(
                f"{blob} was written by another program while modelfetch held its lock, and "
                f"does not match ({error}): pull again"
            )

    def _linked(self, path: str, etag: str, verified: Verified) -> Path:
        blob = self.cache.blob_path(self.repo, etag)
        self.stamps.write(self._key(etag), blob, verified, etag)  # never raises
        return self.cache.link(self.repo, self.commit, path, etag)

    def reads_hf_blob(self, cache_root: Path, folder: str) -> bool:
        same = os.path.abspath(cache_root) == os.path.abspath(self.cache.root)
        return same and folder == self.repo.folder_name


class LocalDirDestination:
    """One commit of one repo as plain files in a `--local-dir`, as `hf download` leaves it."""

    corrupt_note = "replaced atomically by a verified copy"

    def __init__(
        self, local: LocalDir, commit: str, etags: Mapping[str, str], stamps: Stamps
    ) -> None:
        self.local = local
        self.commit = commit
        self.etags = dict(etags)
        self.stamps = stamps

    def final_path(self, path: str) -> Path:
        return self.local.file_path(path)

    def partial_paths(self, path: str) -> tuple[Path, Path]:
        meta = self.local.metadata_path(path)
        return meta.with_suffix(PARTIAL_SUFFIX), meta.with_suffix(CONTROL_SUFFIX)

    def lock(self, path: str) -> FileLock:
        return self.local.lock(path)

    def ensure_space(self, where: Path, needed: int) -> None:
        ensure_space(self.local.root, where, needed, "--local-dir")

    def known_identity(self, path: str, given: Identity) -> Identity | None:
        return given if given.verifiable else None

    async def lookup(self, path: str, identity: Identity, *, repair: bool) -> Lookup:
        return await asyncio.to_thread(self._lookup, path, identity)

    def _lookup(self, path: str, identity: Identity) -> Lookup:
        final = self.final_path(path)
        if not final.is_file():
            return Lookup("missing", final)
        etag = self.etags[path]
        key = Stamps.file_key(final)
        verified, error = check_file(final, identity, path, self.stamps, key, etag)
        if verified is None:
            return Lookup("corrupt", final, reason=str(error), error_type=type(error).__name__)
        meta = self.local.read_metadata(path)
        if meta is None or (meta.commit, meta.etag) != (self.commit, etag):
            self.local.write_metadata(path, self.commit, etag)
        return Lookup("hit", final, verified)

    def install(self, path: str, data: Path, control: Path, verified: Verified) -> Path:
        etag = self.etags[path]
        final = self.local.install(path, data, commit=self.commit, etag=etag, move=True)
        control.unlink(missing_ok=True)
        self.stamps.write(Stamps.file_key(final), final, verified, etag)
        return final

    def install_copy(self, path: str, source: Path, verified: Verified) -> Path:
        etag = self.etags[path]
        final = self.local.install(path, source, commit=self.commit, etag=etag, move=False)
        self.stamps.write(Stamps.file_key(final), final, verified, etag)
        return final

    def reads_hf_blob(self, cache_root: Path, folder: str) -> bool:
        return False
