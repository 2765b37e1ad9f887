"""A file's expected identity and the digests that check bytes against it in one pass."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .errors import HashMismatch, SizeMismatch, Unverifiable

if TYPE_CHECKING:
    from .ipfs.blockindex import BlockIndex

HASH_BLOCK = 1 << 20


@dataclass(frozen=True)
class Identity:
    """What a file must be, settled once before any transfer from the best evidence at hand.

    `evidence` names where it came from ("manifest", "huggingface", "ipfs"). A file is
    verifiable when its sha256 or git_sha1 is known, or its CID with the DAG the CID names
    (`dag`: the file's verified block index, fetched from a trustless gateway): the bytes are
    then checked leaf by leaf against the blocks, whatever chunker made them. A CID alone
    proves nothing about bytes without its DAG (recomputing it would assume a chunking).
    """

    size: int | None = None
    sha256: str | None = None
    git_sha1: str | None = None  # Hugging Face ETag of a small (non-LFS) file: git blob SHA-1
    cid: str | None = None
    evidence: str = "none"
    dag: BlockIndex | None = field(default=None, compare=False, repr=False)

    @property
    def verifiable(self) -> bool:
        return bool(self.sha256 or self.git_sha1 or (self.cid and self.dag is not None))

    def merged(self, other: Identity) -> Identity:
        """This identity, with gaps filled from `other` (weaker evidence never overrides)."""
        cid = self.cid or other.cid
        return replace(
            self,
            size=self.size if self.size is not None else other.size,
            sha256=self.sha256 or other.sha256,
            git_sha1=self.git_sha1 or other.git_sha1,
            cid=cid,
            dag=self.dag if self.dag is not None else (other.dag if other.cid == cid else None),
        )


class StreamCheck(Protocol):
    """Anything fed the bytes as they stream and able to object at the end."""

    def update(self, data: bytes | memoryview) -> None: ...
    def finish(self) -> None: ...


@dataclass(frozen=True)
class Verified:
    """The facts established about a file whose bytes passed every check."""

    size: int
    sha256: str


class Digests:
    """SHA-256 (always), the git blob SHA-1 (when expected) and extra stream checks, in one pass."""

    def __init__(
        self, identity: Identity, checks: Sequence[StreamCheck] = (), *, name: str = "file"
    ) -> None:
        self.identity = identity
        self.name = name
        self.size = 0
        self._sha256 = hashlib.sha256()
        self._git_sha1: hashlib._Hash | None = None
        if identity.git_sha1 and not identity.sha256 and identity.size is not None:
            self._git_sha1 = hashlib.sha1(f"blob {identity.size}\0".encode())
        self._checks = list(checks)
        if identity.cid and not identity.sha256 and not identity.git_sha1:
            # Known by its CID alone: the bytes must be those of the DAG's leaves, each
            # checked against its block's CID (an extra hash pass only in this case).
            self._checks.append(_dag_check(identity, name))

    def update(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        self._sha256.update(data)
        if self._git_sha1 is not None:
            self._git_sha1.update(data)
        for check in self._checks:
            check.update(data)

    def verify(self) -> Verified:
        """Raise SizeMismatch, HashMismatch (or a check's error); else return the facts."""
        want = self.identity
        if want.size is not None and self.size != want.size:
            raise SizeMismatch(
                f"{self.name}: received {self.size:,} bytes, expected {want.size:,} "
                f"({want.evidence}): the transfer was cut short or the source sent another file"
            )
        sha256 = self._sha256.hexdigest()
        if want.sha256 and sha256 != want.sha256:
            raise HashMismatch(
                f"{self.name}: SHA-256 {sha256} does not match the expected {want.sha256} "
                f"({want.evidence}); the bytes were discarded. If the model was updated "
                "upstream, regenerate the manifest."
            )
        if self._git_sha1 is not None and self._git_sha1.hexdigest() != want.git_sha1:
            raise HashMismatch(
                f"{self.name}: git blob SHA-1 {self._git_sha1.hexdigest()} does not match the "
                f"hub's ETag {want.git_sha1}; the bytes were discarded"
            )
        for check in self._checks:
            check.finish()
        return Verified(size=self.size, sha256=sha256)


class _NoDag:
    """The check of a file known by a CID whose DAG was never had: it always refuses."""

    def __init__(self, cid: str, name: str) -> None:
        self.cid, self.name = cid, name

    def update(self, data: bytes | memoryview) -> None:
        pass

    def finish(self) -> None:
        raise Unverifiable(
            f"{self.name}: only its IPFS CID {self.cid} is known, and not the DAG it names "
            "(no trustless gateway gave it): the bytes cannot be checked and were discarded"
        )


def _dag_check(identity: Identity, name: str) -> StreamCheck:
    assert identity.cid is not None
    dag = identity.dag
    if dag is None:
        return _NoDag(identity.cid, name)
    # Imported here: `status` and the CLI's start-up never need the IPFS modules.
    from .ipfs.cid import Cid
    from .ipfs.leafcheck import LeafCheck

    if Cid.parse(identity.cid).to_v1() != dag.root.to_v1():
        raise ValueError(f"{name}: the DAG given is that of {dag.root}, not of {identity.cid}")
    return LeafCheck(dag, name=name)


def feed_file(path: Path, update: Callable[[bytes], None], *, limit: int | None = None) -> int:
    """Feed a file's bytes (at most `limit`) to `update`; return how many were read."""
    done = 0
    with open(path, "rb", buffering=0) as f:
        while limit is None or done < limit:
            want = HASH_BLOCK if limit is None else min(HASH_BLOCK, limit - done)
            block = f.read(want)
            if not block:
                break
            update(block)
            done += len(block)
    return done


def sha256_file(path: Path) -> tuple[int, str]:
    """Size and SHA-256 of a file on disk (blocking: call it from a worker thread)."""
    h = hashlib.sha256()
    size = feed_file(path, h.update)
    return size, h.hexdigest()


def is_sha256(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def file_signature(path: Path) -> tuple[int, int, int]:
    """(size, mtime_ns, inode): changes whenever the file is rewritten or replaced."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino
