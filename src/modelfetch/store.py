"""The models directory: cache checks, verified stamps, partial files, atomic installs, locks."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from filelock import FileLock, Timeout

from .catalog import ModelSpec, check_relpath
from .errors import (
    DiskFull,
    LockUnavailable,
    ReadOnly,
    StorageError,
    VerificationError,
)
from .hashes import Digests, Identity, Verified, feed_file, file_signature
from .manifest import MANIFEST_NAME, FileEntry, Manifest, write_json_atomic

if TYPE_CHECKING:
    from .ipfs.blockindex import BlockIndex
    from .onnxcheck import OnnxStreamCheck

log = logging.getLogger(__name__)

STATE_DIR = ".modelfetch"


def storage_error(exc: OSError, path: Path, *, needed: int | None = None) -> StorageError:
    """Translate an OSError about `path` into DiskFull / ReadOnly / StorageError."""
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        more = f"; {needed:,} more bytes are needed" if needed else ""
        return DiskFull(
            f"no space left on the device while writing {path}{more}: free some space or "
            "use another --dir (the partial download was removed)"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ReadOnly(
            f"{path} is not writable ({exc.strerror}): check the models dir permissions"
        )
    return StorageError(f"{path}: {exc.strerror or exc}")


def stream_checks(path: str) -> list[OnnxStreamCheck]:
    """Structural checks that apply to a file by its name (ONNX models get one)."""
    from .onnxcheck import OnnxStreamCheck  # here: `status` and `verify` of a stamp need none

    return [OnnxStreamCheck()] if path.endswith(".onnx") else []


@dataclass(frozen=True)
class Lookup:
    """What the cache layer found for a file."""

    status: Literal["hit", "missing", "corrupt"]
    path: Path
    verified: Verified | None = None
    reason: str | None = None
    error_type: str | None = None  # why a present file was rejected


class Store:
    """A models directory. Knows files and hashes, nothing of the network."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_dir = root / STATE_DIR
        self.manifest = Manifest(root / MANIFEST_NAME, self.state_dir / "locks" / "manifest.lock")

    # -- paths ---------------------------------------------------------------------------

    def final_path(self, model: ModelSpec, path: str) -> Path:
        return self.root / check_relpath(model.dir) / check_relpath(path)

    def _key(self, model: ModelSpec, path: str) -> str:
        rel = f"{model.dir}/{path}"
        return hashlib.sha256(rel.encode()).hexdigest()[:32]

    def partial_paths(self, model: ModelSpec, path: str) -> tuple[Path, Path]:
        """Where a file being received keeps its data and its control file."""
        key = self._key(model, path)
        base = self.state_dir / "partial"
        return base / f"{key}.part", base / f"{key}.json"

    def ensure_space(self, where: Path, needed: int) -> None:
        """Fail before a transfer that cannot fit, rather than at 99 %."""
        probe = where.parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent  # the partial dir may not exist yet: ask its filesystem
        try:
            free = shutil.disk_usage(probe).free
        except OSError:
            return  # cannot tell: the write itself will report a full disk
        if needed > free:
            raise DiskFull(
                f"not enough space in {self.root}: {needed:,} bytes needed, {free:,} free; "
                "free some space or use another --dir"
            )

    def file_lock(self, model: ModelSpec, path: str) -> FileLock:
        """A cross-process lock for one file (flock: released when its holder dies)."""
        lock_dir = self.state_dir / "locks"
        try:
            lock_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, lock_dir) from None
        # thread_local=False: the lock is taken and released from different worker threads.
        return FileLock(str(lock_dir / f"{self._key(model, path)}.lock"), thread_local=False)

    async def acquire(self, lock: FileLock, timeout: float) -> None:
        """Take `lock` without blocking the event loop or holding a worker thread.

        Non-blocking tries on the loop, with waits between them: a wait never occupies one
        of the few threads of the default pool, so many waiters (the mirror's pull-through
        runs one pull per request) cannot starve the transfer that holds the lock.
        """
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            try:
                lock.acquire(timeout=0)  # one non-blocking flock
                return
            except Timeout:
                if time.monotonic() >= deadline:
                    raise LockUnavailable(
                        f"another process has held {lock.lock_file} for over {timeout:.0f} s"
                    ) from None
            except OSError as exc:
                raise LockUnavailable(
                    f"file locks do not work in {Path(lock.lock_file).parent} ({exc.strerror}); "
                    "refusing to download without one (a network filesystem?): use a local dir"
                ) from None
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)

    # -- cache ---------------------------------------------------------------------------

    def _stamp_path(self, model: ModelSpec, path: str) -> Path:
        return self.state_dir / "stamps" / f"{self._key(model, path)}.json"

    def _read_stamp(self, model: ModelSpec, path: str, final: Path) -> Verified | None:
        try:
            stamp = json.loads(self._stamp_path(model, path).read_text())
            if tuple(stamp["signature"]) == file_signature(final):
                return Verified(size=int(stamp["size"]), sha256=str(stamp["sha256"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def _write_stamp(self, model: ModelSpec, path: str, final: Path, verified: Verified) -> None:
        write_stamp(self._stamp_path(model, path), final, verified)

    async def lookup(
        self,
        model: ModelSpec,
        path: str,
        identity: Identity,
        *,
        deep: bool = False,
        move_corrupt: bool = True,
    ) -> Lookup:
        """Is a verified copy at the final path? A corrupt one is moved to `<file>.bak`.

        Runs in a worker thread: stamps, hashing and renames never block the event loop.
        """
        return await asyncio.to_thread(self._lookup, model, path, identity, deep, move_corrupt)

    def _lookup(
        self, model: ModelSpec, path: str, identity: Identity, deep: bool, move_corrupt: bool
    ) -> Lookup:
        final = self.final_path(model, path)
        if not final.is_file():
            return Lookup("missing", final)
        stamp = None if deep else self._read_stamp(model, path, final)
        if stamp is not None and _stamp_matches(stamp, identity):
            return Lookup("hit", final, stamp)
        try:
            verified = rehash(final, identity, path)
        except VerificationError as exc:
            if move_corrupt:
                self._move_aside(final)
            return Lookup("corrupt", final, reason=str(exc), error_type=type(exc).__name__)
        except OSError as exc:
            raise storage_error(exc, final) from None
        self._write_stamp(model, path, final, verified)
        return Lookup("hit", final, verified)

    def _move_aside(self, final: Path) -> None:
        backup = final.with_name(final.name + ".bak")
        try:
            os.replace(final, backup)
        except OSError as exc:
            raise storage_error(exc, final) from None
        log.warning("%s failed verification: moved to %s", final, backup)

    # -- block indexes (a file's UnixFS DAG, for serving and checking its blocks) -----------

    def block_index_path(self, model: ModelSpec, path: str, cid: object) -> Path:
        """Where the block index of `path`'s DAG under root `cid` is kept (beside the stamps).

        A file can have several: one per CID it was computed or fetched under (v0, v1...).
        """
        return self.state_dir / "blockindex" / f"{self._key(model, path)}.{cid}.json"

    def directory_index_path(self, model: ModelSpec, cid: object) -> Path:
        """Where the model directory's own blocks (directory nodes, HAMT shards) are kept."""
        return self.state_dir / "blockindex" / f"dir.{self._key(model, '')}.{cid}.json"

    def save_block_index(self, model: ModelSpec, path: str, index: BlockIndex) -> None:
        """Keep a verified file's block index, tied to the file as it is now (blocking).

        Like a stamp it only saves work later: a failure to write it is logged, not raised.
        """
        where = self.block_index_path(model, path, index.root)
        try:
            index.save(where, file_signature(self.final_path(model, path)))
        except OSError as exc:
            log.warning("could not write block index %s: %s", where, exc.strerror)

    def load_block_index(self, model: ModelSpec, path: str, cid: object) -> BlockIndex | None:
        """The block index of `path` under root `cid`, if one was saved for the file as it is
        now on disk (a file rewritten since has none: its blocks are not served)."""
        from .ipfs.blockindex import BlockIndex

        try:
            signature = file_signature(self.final_path(model, path))
        except OSError:
            return None
        return BlockIndex.load(self.block_index_path(model, path, cid), signature)

    def block_index_roots(self, model: ModelSpec, path: str) -> list[str]:
        """The root CIDs `path` has a saved block index for (stale ones included)."""
        prefix = f"{self._key(model, path)}."
        try:
            names = os.listdir(self.state_dir / "blockindex")
        except OSError:
            return []
        return sorted(
            n[len(prefix) : -5] for n in names if n.startswith(prefix) and n.endswith(".json")
        )

    # -- install -------------------------------------------------------------------------

    def install(
        self, model: ModelSpec, path: str, data: Path, control: Path, verified: Verified
    ) -> Path:
        """Move a verified, durable partial to its final path atomically (blocking)."""
        final = self.final_path(model, path)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(data, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            raise storage_error(exc, final) from None
        control.unlink(missing_ok=True)
        self._write_stamp(model, path, final, verified)
        backup = final.with_name(final.name + ".bak")
        backup.unlink(missing_ok=True)
        self.manifest.record_files(model.name, {path: FileEntry(verified.size, verified.sha256)})
        return final


def _stamp_matches(stamp: Verified, identity: Identity) -> bool:
    if identity.sha256:
        return stamp.sha256 == identity.sha256 and identity.size in (None, stamp.size)
    return False  # only a git SHA-1 or a CID is expected: rehash to check it


def write_stamp(
    stamp_path: Path, file: Path, verified: Verified, extra: dict[str, object] | None = None
) -> None:
    """Record that `file`, as it is now (its signature), was verified as `verified`."""
    try:
        stamp_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            stamp_path,
            {
                "signature": list(file_signature(file)),
                "size": verified.size,
                "sha256": verified.sha256,
                **(extra or {}),
            },
        )
    except OSError as exc:  # a stamp only saves time later: never fail for it
        log.warning("could not write verified stamp %s: %s", stamp_path, exc.strerror)


def rehash(final: Path, identity: Identity, path: str) -> Verified:
    """Check the file at `final` against `identity` (size first, then one hashing pass)."""
    if identity.size is not None and final.stat().st_size != identity.size:
        digests = Digests(identity, name=str(final))
        digests.size = final.stat().st_size
        return digests.verify()  # raises SizeMismatch without reading the file
    digests = Digests(identity, stream_checks(path), name=str(final))
    feed_file(final, digests.update)
    return digests.verify()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
