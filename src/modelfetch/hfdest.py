"""Repo files into the Hugging Face cache (or a `--local-dir`), and their verified stamps.

`HFCacheDestination` writes exactly what huggingface_hub writes: the partial lives beside the
blobs (`blobs/<etag>.modelfetch.incomplete`, a name huggingface_hub never resumes from), it is
written under huggingface_hub's own lock (`.locks/<repo folder>/<etag>.lock`), and only a
verified blob is linked from `snapshots/<commit>/<path>`. So modelfetch and huggingface_hub
running at once on one repo never write one blob twice, and no reader ever meets a broken
link. A blob that does not match its name is never used and never deleted: it is replaced
atomically by a verified one. Stamps of verified blobs and local files live in the models
dir (`.modelfetch/hf-stamps/`), never in the other tool's cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from filelock import FileLock

from .destination import ensure_space
from .errors import StorageError, VerificationError
from .hashes import Identity, Verified, file_signature
from .hfcache import HFCache
from .hflocal import LocalDir
from .hubtypes import RepoRef
from .manifest import write_json_atomic
from .store import STATE_DIR, Lookup, rehash, storage_error

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".modelfetch.incomplete"
CONTROL_SUFFIX = ".modelfetch-control.incomplete"


def identity_of_etag(etag: str, size: int | None) -> Identity:
    """What a blob named `etag` must hold: SHA-256 (64 hex) or git-blob SHA-1 (40 hex)."""
    if len(etag) == 64:
        return Identity(size=size, sha256=etag, evidence="huggingface")
    return Identity(size=size, git_sha1=etag, evidence="huggingface")


class Stamps:
    """Verified stamps of files outside the models dir: (size, mtime, inode) at verification,
    with the SHA-256 and the etag they were checked against."""

    def __init__(self, models_dir: Path) -> None:
        self.root = models_dir / STATE_DIR / "hf-stamps"

    @staticmethod
    def blob_key(cache: HFCache, repo_folder: str, etag: str) -> str:
        return f"blob\0{os.path.abspath(cache.root)}\0{repo_folder}\0{etag}"

    @staticmethod
    def file_key(path: Path) -> str:
        return f"file\0{os.path.abspath(path)}"

    def _path(self, key: str) -> Path:
        return self.root / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"

    def read(self, key: str, file: Path) -> tuple[Verified, str | None] | None:
        """The stamp of `file` if it is still the file that was verified."""
        try:
            stamp = json.loads(self._path(key).read_text())
            if tuple(stamp["signature"]) != file_signature(file):
                return None
            return Verified(int(stamp["size"]), str(stamp["sha256"])), stamp.get("etag")
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def matches(self, key: str, file: Path, identity: Identity) -> Verified | None:
        found = self.read(key, file)
        if found is None:
            return None
        verified, etag = found
        if identity.size is not None and identity.size != verified.size:
            return None
        if identity.sha256:
            return verified if identity.sha256 == verified.sha256 else None
        if identity.git_sha1:
            return verified if identity.git_sha1 == etag else None
        return None

    def write(self, key: str, file: Path, verified: Verified, etag: str | None) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(
                path,
                {
                    "signature": list(file_signature(file)),
                    "size": verified.size,
                    "sha256": verified.sha256,
                    "etag": etag,
                },
            )
        except OSError as exc:  # a stamp only saves time later
            log.warning("could not write verified stamp %s: %s", path, exc.strerror)


def check_file(
    file: Path, identity: Identity, path: str, stamps: Stamps, key: str, etag: str | None
) -> tuple[Verified, None] | tuple[None, VerificationError]:
    """(Verified, None) or (None, error) for `file` against `identity` (stamp, else rehash)."""
    hit = stamps.matches(key, file, identity)
    if hit is not None:
        return hit, None
    try:
        verified = rehash(file, identity, path)
    except VerificationError as exc:
        return None, exc
    except OSError as exc:
        raise storage_error(exc, file) from None
    stamps.write(key, file, verified, etag)
    return verified, None


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
