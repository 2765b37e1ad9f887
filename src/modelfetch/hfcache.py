"""The Hugging Face cache, exactly as huggingface_hub 2.4 writes and reads it.

Layout of one cache dir (`HFCache.root`, e.g. `~/.cache/huggingface/hub`), per repo folder
(`models--org--name`, `datasets--org--name`):

    blobs/<etag>                    the file's bytes; etag = SHA-256 (LFS) or git-blob SHA-1
    snapshots/<commit>/<path>       relative symlink to ../../blobs/<etag> (deeper for subdirs)
    refs/<revision>                 the commit a branch or tag pointed at (no newline)
    trees/<commit>.json             the commit's whole file listing (huggingface_hub/_tree_cache.py)

and `<root>/.locks/<repo folder>/<etag>.lock`, the filelock huggingface_hub holds while it
writes `blobs/<etag>` (file_download.py). Taking the same lock (same path, same lock type)
means modelfetch and huggingface_hub never write one blob at once.

Every write is atomic (a temp file or symlink beside its target, fsync, rename). Temp files
live where huggingface_hub's own tools expect leftovers: `blobs/<etag>.<hex>.incomplete` for
blob data, dot-files in the repo folder (which `scan_cache_dir` does not read) for refs and
links. Nothing here deletes or overwrites a blob another tool wrote, except `replace_blob`,
which a caller uses only on a blob it has proven wrong. Blocking: call from a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from .catalog import check_relpath
from .errors import ModelfetchError, StorageError
from .hubtypes import RepoFile, RepoRef, is_commit
from .store import storage_error

if TYPE_CHECKING:
    from .hfscan import CacheScan

TREE_FORMAT_VERSION = 1  # huggingface_hub/_tree_cache.py TREE_CACHE_FORMAT_VERSION
LOCK_MODE = 0o664  # huggingface_hub's WeakFileLock: group-writable, so users can share a cache
CACHEDIR_TAG = "CACHEDIR.TAG"
CACHEDIR_TAG_CONTENT = (  # huggingface_hub/_local_folder.py, byte for byte
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by huggingface_hub.\n"
    "# For information about cache directory tags, see:\n"
    "#\thttps://bford.info/cachedir/\n"
)
_ETAG = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def check_etag(etag: str) -> str:
    """`etag` if it is a blob name huggingface_hub could write (40 or 64 lowercase hex)."""
    if not isinstance(etag, str) or not _ETAG.fullmatch(etag):
        raise StorageError(f"{etag!r} is not a blob name (a SHA-256 or git SHA-1 in hex)")
    return etag


def check_commit(commit: str) -> str:
    if not isinstance(commit, str) or not is_commit(commit):
        raise StorageError(f"{commit!r} is not a commit sha (40 lowercase hex digits)")
    return commit


class HFCache:
    """One Hugging Face cache dir: find, install and link blobs; refs; tree listings; locks."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()
        self._file_mode: int | None = None

    @classmethod
    def resolve(
        cls, flag: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
    ) -> HFCache:
        """The cache `--cache-dir` (or else HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub,
        as huggingface_hub resolves it) names; `Settings.huggingface.cache_dir` holds the same."""
        from .config import hf_cache_dir

        return cls(hf_cache_dir(os.environ if env is None else env, flag))

    def __repr__(self) -> str:
        return f"HFCache({str(self.root)!r})"

    # -- paths ------------------------------------------------------------------------------

    def repo_dir(self, repo: RepoRef) -> Path:
        return self.root / repo.folder_name

    def blob_path(self, repo: RepoRef, etag: str) -> Path:
        return self.repo_dir(repo) / "blobs" / check_etag(etag)

    def snapshot_dir(self, repo: RepoRef, commit: str) -> Path:
        return self.repo_dir(repo) / "snapshots" / check_commit(commit)

    def snapshot_path(self, repo: RepoRef, commit: str, path: str) -> Path:
        """Where huggingface_hub looks for `path` of `commit` (a symlink to its blob)."""
        check_relpath(path)
        return self.snapshot_dir(repo, commit).joinpath(*path.split("/"))

    def tree_path(self, repo: RepoRef, commit: str) -> Path:
        return self.repo_dir(repo) / "trees" / f"{check_commit(commit)}.json"

    def ref_path(self, repo: RepoRef, revision: str) -> Path:
        check_relpath(revision, what="revision")
        return self.repo_dir(repo).joinpath("refs", *revision.split("/"))

    def lock_path(self, repo: RepoRef, etag: str) -> Path:
        """`<root>/.locks/<repo folder>/<etag>.lock`, as file_download.py names it."""
        return self.root / ".locks" / repo.folder_name / f"{check_etag(etag)}.lock"

    # -- reading ----------------------------------------------------------------------------

    def find_blob(self, repo: RepoRef, etag: str) -> Path | None:
        """The blob named `etag` if it is there and is a file (possibly through huggingface_hub's
        shared Xet store symlink); its bytes are not checked here."""
        path = self.blob_path(repo, etag)
        try:
            return path if path.is_file() else None
        except OSError:
            return None

    def linked_etag(self, repo: RepoRef, commit: str, path: str) -> str | None:
        """The blob a snapshot path links to, if it is a link into this repo's blobs."""
        link = self.snapshot_path(repo, commit, path)
        try:
            target = Path(os.path.abspath(link.parent / os.readlink(link)))
        except OSError:
            return None
        blobs = self.repo_dir(repo) / "blobs"
        if target.parent != Path(os.path.abspath(blobs)) or not _ETAG.fullmatch(target.name):
            return None
        return target.name

    def read_ref(self, repo: RepoRef, revision: str) -> str | None:
        """The commit `refs/<revision>` names, or None (missing or not a commit sha)."""
        try:
            text = self.ref_path(repo, revision).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return text if is_commit(text) else None

    def read_tree(self, repo: RepoRef, commit: str) -> dict[str, RepoFile] | None:
        """The commit's tree listing (`trees/<commit>.json`), or None if absent or unusable."""
        return read_tree_listing(self.tree_path(repo, commit))

    # -- locks ------------------------------------------------------------------------------

    def lock(self, repo: RepoRef, etag: str) -> FileLock:
        """The lock huggingface_hub takes around writing `blobs/<etag>` (flock, mode 0o664).

        Hold it from checking the blob to linking it. `thread_local=False`: it may be taken
        and released from different worker threads.
        """
        path = self.lock_path(repo, etag)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, path.parent) from None
        return FileLock(str(path), mode=LOCK_MODE, thread_local=False)

    # -- writing ----------------------------------------------------------------------------

    def install_blob(self, repo: RepoRef, etag: str, source: Path, *, move: bool = True) -> bool:
        """Make verified `source` the blob `etag`; False (and nothing written) if one exists.

        `move=True`: `source` is a temp file of ours; it is renamed in (copied then renamed
        from another filesystem) and is gone afterwards. `move=False`: `source` stays (a
        hard link when on one filesystem, else a copy). Never replaces an existing blob:
        an existing one belongs to whoever wrote it (see `replace_blob`); only a dangling
        blob symlink, which no reader can use, is replaced.
        """
        blob = self.blob_path(repo, etag)
        try:
            self._prepare(blob.parent)
            if blob.exists():
                installed = False
            elif os.path.lexists(blob):
                self.replace_blob(repo, etag, source, move=move)
                return True
            else:
                installed = self._link_new(source, blob, move=move)
            if move:
                source.unlink(missing_ok=True)
        except OSError as exc:
            raise storage_error(exc, blob) from None
        return installed

    def _link_new(self, source: Path, blob: Path, *, move: bool) -> bool:
        staged, owned = self._stage(source, blob, move=move)
        try:
            fsync_file(staged)
            try:
                os.link(staged, blob)  # atomic, and never clobbers a blob written meanwhile
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                if os.path.lexists(blob):  # no hard links here: rename, under the blob's lock
                    return False
                if not move and not owned:
                    staged, owned = self._stage(source, blob, move=move, link_ok=False)
                os.rename(staged, blob)
                owned = False
        finally:
            if owned:
                staged.unlink(missing_ok=True)
        fsync_dir(blob.parent)
        return True

    def replace_blob(self, repo: RepoRef, etag: str, source: Path, *, move: bool = True) -> Path:
        """Atomically put verified `source` in place of blob `etag` (rename over it).

        Only for a blob proven wrong (its bytes do not match `etag`): the caller decides.
        Readers see the old bytes or the new ones, never a missing or partial blob.
        """
        blob = self.blob_path(repo, etag)
        try:
            self._prepare(blob.parent)
            staged, owned = self._stage(source, blob, move=move, link_ok=False)
            try:
                fsync_file(staged)
                os.replace(staged, blob)
                owned = False
            finally:
                if owned:
                    staged.unlink(missing_ok=True)
            if move:
                source.unlink(missing_ok=True)
            fsync_dir(blob.parent)
        except OSError as exc:
            raise storage_error(exc, blob) from None
        return blob

    def link(self, repo: RepoRef, commit: str, path: str, etag: str) -> Path:
        """Point `snapshots/<commit>/<path>` at blob `etag` with a relative symlink.

        A right link is left alone; a wrong or broken one (or a plain file) is replaced
        atomically (a new link made under a temp name, then renamed over). The blob must
        exist: this never makes a broken link.
        """
        blob = self.blob_path(repo, etag)
        dest = self.snapshot_path(repo, commit, path)
        if self.find_blob(repo, etag) is None:
            raise StorageError(f"{blob} is missing: refusing to link {dest} to it")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            relative = os.path.relpath(blob, dest.parent)
            if os.path.islink(dest):
                if os.readlink(dest) == relative or _same_file(dest, blob):
                    return dest
            elif dest.is_dir():
                raise StorageError(f"{dest} is a directory where the file {path} should be")
            temp = self.repo_dir(repo) / f".{uuid.uuid4().hex[:12]}.link.tmp"
            try:
                try:
                    os.symlink(relative, temp)
                except OSError as exc:
                    if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                        raise
                    shutil.copyfile(blob, temp)  # no symlinks here: a copy, as huggingface_hub
                os.replace(temp, dest)
            finally:
                temp.unlink(missing_ok=True)
            fsync_dir(dest.parent)
        except OSError as exc:
            raise storage_error(exc, dest) from None
        return dest

    def write_ref(self, repo: RepoRef, revision: str, commit: str) -> None:
        """`refs/<revision>` = `commit` (no newline), atomically; nothing if already so.

        The commit's snapshot dir is made first, so no scan sees a ref to a missing commit.
        A revision that is the commit itself gets no ref (as huggingface_hub).
        """
        check_commit(commit)
        if revision == commit:
            return
        ref = self.ref_path(repo, revision)
        if self.read_ref(repo, revision) == commit:
            return
        try:
            self._prepare(self.snapshot_dir(repo, commit))
            ref.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(ref, commit.encode("ascii"), temp_dir=self.repo_dir(repo))
        except OSError as exc:
            raise storage_error(exc, ref) from None

    def write_tree(self, repo: RepoRef, commit: str, files: Iterable[RepoFile]) -> Path:
        """Write `trees/<commit>.json` (every file of the commit, not only those pulled), so an
        offline `snapshot_download` can tell a complete snapshot from a partial one."""
        path = self.tree_path(repo, commit)
        try:
            self._prepare(path.parent)
        except OSError as exc:
            raise storage_error(exc, path.parent) from None
        write_tree_listing(path, files)
        return path

    # -- helpers ----------------------------------------------------------------------------

    def _prepare(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        tag = self.root / CACHEDIR_TAG  # huggingface_hub tags the cache for backup tools
        if not tag.exists():
            with contextlib.suppress(OSError):
                write_atomic(tag, CACHEDIR_TAG_CONTENT.encode(), temp_dir=self.root)

    def _stage(
        self, source: Path, blob: Path, *, move: bool, link_ok: bool = True
    ) -> tuple[Path, bool]:
        """A file on the blob's filesystem with `source`'s bytes: (path, whether it is a temp
        of ours to remove). A moved source is used as is when it is on that filesystem (given
        the mode a new file gets here, as huggingface_hub does); a kept one is hard-linked."""
        if same_device(source, blob.parent) and (move or link_ok):
            if move:
                os.chmod(source, self._mode(blob.parent))
            return source, False
        # huggingface_hub's own temp name for blob data: `<etag>.<8 hex>.incomplete`
        temp = blob.with_name(f"{blob.name}.{uuid.uuid4().hex[:8]}.incomplete")
        try:
            shutil.copyfile(source, temp)  # created with the default mode (umask applies)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return temp, True

    def _mode(self, directory: Path) -> int:
        if self._file_mode is None:
            self._file_mode = default_file_mode(directory)
        return self._file_mode

    # -- reading the whole cache ------------------------------------------------------------

    def scan(self) -> CacheScan:
        """Every repo here with its size, refs and snapshot files (see `hfscan.scan`)."""
        from .hfscan import scan

        return scan(self.root)


# -- tree listings (huggingface_hub/_tree_cache.py format) ---------------------------------------


def tree_entry(f: RepoFile) -> dict[str, Any]:
    """One file as `_tree_cache.TreeCacheEntry.to_json` writes it."""
    info: dict[str, Any] = {"size": f.size, "blob_id": f.blob_id}
    if f.lfs_sha256 is not None:
        info["lfs_sha256"] = f.lfs_sha256
        info["lfs_size"] = f.size
    if f.xet_hash is not None:
        info["xet_hash"] = f.xet_hash
    return info


def write_tree_listing(path: Path, files: Iterable[RepoFile]) -> None:
    """`{"format_version": 1, "files": {path: entry}}`, paths sorted, indent 1, atomically."""
    entries = {f.path: f for f in files}
    data = {
        "format_version": TREE_FORMAT_VERSION,
        "files": {p: tree_entry(entries[p]) for p in sorted(entries)},
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(data, indent=1).encode(), temp_dir=path.parent)
    except OSError as exc:
        raise storage_error(exc, path) from None


def read_tree_listing(path: Path) -> dict[str, RepoFile] | None:
    """A tree listing as RepoFiles; None when absent, of another format, or not valid."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format_version") != TREE_FORMAT_VERSION:
            return None
        files = {}
        for name, info in data["files"].items():
            check_relpath(name)
            sha = info.get("lfs_sha256")
            files[name] = RepoFile(
                path=name,
                size=int(info["size"]),
                blob_id=check_etag(str(info["blob_id"])),
                lfs_sha256=check_etag(sha) if sha is not None else None,
                xet_hash=info.get("xet_hash"),
            )
        return files
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ModelfetchError):
        return None  # unsafe names or bad hashes included: a listing we must not use


# -- small atomic file operations -----------------------------------------------------------------


def write_atomic(path: Path, data: bytes, *, temp_dir: Path) -> None:
    """Write `data` to a temp file in `temp_dir` (same filesystem), fsync, rename over `path`.

    The temp file is made with mode 0o666 less the umask, as a plain `open` would (mkstemp's
    0o600 would hide refs and listings from the other users of a shared cache).
    """
    temp = temp_dir / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)


def default_file_mode(directory: Path) -> int:
    """The mode a new file gets in `directory` (0o666 less the umask), found as huggingface_hub
    finds it: by making one (reading the umask is not thread-safe)."""
    probe = directory / f"tmp_{uuid.uuid4()}"
    fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        return os.fstat(fd).st_mode & 0o7777
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def same_device(a: Path, directory: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(directory).st_dev
    except OSError:
        return False


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
