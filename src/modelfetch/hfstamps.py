"""Verified stamps of files outside the models dir (Hugging Face cache blobs, local dirs).

A stamp records a file's (size, mtime, inode) when its bytes were checked, with the SHA-256
and the etag they matched; it lives in the models dir (`.modelfetch/hf-stamps/`), never in
the other tool's cache. While the file is unchanged, the stamp stands for a rehash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from .errors import VerificationError
from .hashes import Identity, Verified, file_signature
from .hfcache import HFCache
from .store import STATE_DIR, rehash, storage_error, write_stamp

log = logging.getLogger(__name__)


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
        write_stamp(self._path(key), file, verified, {"etag": etag})


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
