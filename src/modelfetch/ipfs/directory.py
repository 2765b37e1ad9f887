"""UnixFS directories as `ipfs add -r` builds them (HAMT-sharded when big), and paths on disk."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Final

from modelfetch.ipfs import hamt
from modelfetch.ipfs.cid import Cid
from modelfetch.ipfs.importer import (
    DagNode,
    Profile,
    UnixFSFileBuilder,
    _pb_cid,
    get_profile,
    symlink_node,
)
from modelfetch.ipfs.unixfs import DIRECTORY_DATA, PBLink, encode_pbnode

# -- building ---------------------------------------------------------------------------


def _check_rel_path(path: str) -> tuple[str, ...]:
    if not path or path.startswith("/") or "\\" in path or "\0" in path:
        raise ValueError(f"not a relative POSIX path: {path!r}")
    parts = tuple(path.split("/"))
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a plain relative path: {path!r}")
    return parts


class DirectoryBuilder:
    """Builds the UnixFS directory tree `ipfs add -r DIR` makes from (path -> node) entries.

    Nested paths become subdirectories; links are sorted bytewise by name; Tsize is cumulative.
    A directory whose estimated size passes 256 KiB becomes a HAMT (fanout 256), as kubo
    stores it (see modelfetch.ipfs.hamt). `on_block(cid, block)`, if given, receives each
    directory and shard block made (deepest first).

    >>> from modelfetch.ipfs.importer import file_node
    >>> d = DirectoryBuilder()
    >>> d.add("hello.txt", file_node(b"hello world\\n"))
    >>> d.finish()
    'QmfLiVjH2vujCVP2e75zyzBYmpcjktmDeU1YBz6Ct8BBsc'
    """

    def __init__(
        self,
        profile: Profile | str | None = None,
        *,
        cid_version: int = 0,
        on_block: Callable[[Cid, bytes], None] | None = None,
    ) -> None:
        self.profile = get_profile(cid_version, profile)
        self._on_block = on_block
        self._root: dict[str, object] = {}

    def add(self, path: str, node: DagNode | tuple[str | Cid, int]) -> None:
        """Put a finished node (file, symlink or directory) at a relative POSIX path."""
        if not isinstance(node, DagNode):
            cid, size = node
            node = DagNode(Cid.parse(cid), int(size))
        *dirs, name = _check_rel_path(path)
        here = self._root
        for i, part in enumerate(dirs):
            sub = here.setdefault(part, {})
            if not isinstance(sub, dict):
                raise ValueError(f"{'/'.join(dirs[: i + 1])} is both a file and a directory")
            here = sub
        if name in here:
            raise ValueError(f"{path} added twice")
        here[name] = node

    def add_dir(self, path: str) -> None:
        """Make sure a (possibly empty) directory exists at `path`."""
        here = self._root
        for part in _check_rel_path(path):
            sub = here.setdefault(part, {})
            if not isinstance(sub, dict):
                raise ValueError(f"{path} is a file, not a directory")
            here = sub

    def finish_node(self) -> DagNode:
        """The root directory's node (CID and cumulative size)."""
        return self._build(self._root, "")

    def finish(self) -> str:
        """The root directory's CID text."""
        return str(self.finish_node().cid)

    def _build(self, entries: dict[str, object], where: str) -> DagNode:
        links: list[PBLink] = []
        for name, child in entries.items():
            if isinstance(child, dict):
                node = self._build(child, f"{where}{name}/")
            else:
                assert isinstance(child, DagNode)
                node = child
            links.append(PBLink(node.cid, name, node.size))
        if hamt.needs_sharding(links, self.profile.hamt_estimation):
            cid, size = hamt.build_shard(
                links, cid_version=self.profile.cid_version, on_block=self._on_block
            )
            return DagNode(cid, size)
        links.sort(key=lambda link: (link.name or "").encode("utf-8"))
        block = encode_pbnode(links, DIRECTORY_DATA)
        cid = _pb_cid(self.profile, block)
        if self._on_block is not None:
            self._on_block(cid, block)
        return DagNode(cid, len(block) + sum(x.tsize or 0 for x in links))


def directory_node(
    files: Mapping[str, DagNode | tuple[str | Cid, int]],
    profile: Profile | str | None = None,
    *,
    cid_version: int = 0,
    empty_dirs: Iterable[str] = (),
) -> DagNode:
    """The root node of a directory holding `files` (relative POSIX path -> node or (cid, size))."""
    builder = DirectoryBuilder(profile, cid_version=cid_version)
    for d in empty_dirs:
        builder.add_dir(d)
    for path, node in files.items():
        builder.add(path, node)
    return builder.finish_node()


def directory_cid(
    files: Mapping[str, DagNode | tuple[str | Cid, int]],
    profile: Profile | str | None = None,
    *,
    cid_version: int = 0,
) -> str:
    """The CID `ipfs add -r DIR` gives DIR holding exactly `files` (path -> node or (cid, size))."""
    return str(directory_node(files, profile, cid_version=cid_version).cid)


# -- files and directories on disk --------------------------------------------------------

_READ_SIZE: Final = 1024 * 1024


def _file_node_on_disk(path: Path, profile: Profile) -> DagNode:
    builder = UnixFSFileBuilder(profile)
    buf = bytearray(_READ_SIZE * 4)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(view)
            if not n:
                break
            builder.update(view[:n])
    return builder.finish_node()


def _walk(root: Path, include_hidden: bool) -> Iterable[tuple[str, os.DirEntry[str]]]:
    stack = [(root, "")]
    while stack:
        here, prefix = stack.pop()
        with os.scandir(here) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if not include_hidden and entry.name.startswith("."):
                continue
            rel = prefix + entry.name
            yield rel, entry
            if entry.is_dir(follow_symlinks=False):
                stack.append((Path(entry.path), rel + "/"))


def file_nodes(
    directory: str | os.PathLike[str],
    profile: Profile | str | None = None,
    *,
    cid_version: int = 0,
    include_hidden: bool = False,
) -> dict[str, DagNode]:
    """Every regular file under `directory` (relative POSIX path -> its UnixFS node).

    What publishing a model directory needs: each file's CID and cumulative size, as `ipfs add
    -r` would store them. Hidden names (starting with `.`) are skipped unless `include_hidden`,
    as kubo does without `--hidden`; symlinks and special files are left out.
    """
    prof = get_profile(cid_version, profile)
    out: dict[str, DagNode] = {}
    for rel, entry in _walk(Path(directory), include_hidden):
        if entry.is_file(follow_symlinks=False):
            out[rel] = _file_node_on_disk(Path(entry.path), prof)
    return out


def tree_node(
    path: str | os.PathLike[str],
    profile: Profile | str | None = None,
    *,
    cid_version: int = 0,
    include_hidden: bool = False,
) -> DagNode:
    """The UnixFS node of a file or directory on disk, as `ipfs add [-r]` builds it.

    Directories keep empty subdirectories and store symlinks as UnixFS symlinks (never
    followed), like kubo; sockets, FIFOs and devices raise ValueError.
    """
    prof = get_profile(cid_version, profile)
    p = Path(path)
    st = p.stat()
    if stat.S_ISREG(st.st_mode):
        return _file_node_on_disk(p, prof)
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{p}: neither a regular file nor a directory")
    builder = DirectoryBuilder(prof)
    for rel, entry in _walk(p, include_hidden):
        if entry.is_symlink():
            builder.add(rel, symlink_node(os.readlink(entry.path), prof))
        elif entry.is_dir(follow_symlinks=False):
            builder.add_dir(rel)
        elif entry.is_file(follow_symlinks=False):
            builder.add(rel, _file_node_on_disk(Path(entry.path), prof))
        else:
            raise ValueError(f"{entry.path}: not a regular file, directory or symlink")
    return builder.finish_node()


def cid_of_path(
    path: str | os.PathLike[str],
    *,
    cid_version: int = 0,
    profile: str | Profile | None = None,
    include_hidden: bool = False,
) -> str:
    """The CID `ipfs add --only-hash [-r] PATH` prints for a file or directory on disk.

    `profile` (`unixfs-v0-2015`, `unixfs-v1-2025`) wins over `cid_version`. A directory's CID is
    that of the directory itself (its own name is not part of it).
    """
    return str(tree_node(path, profile, cid_version=cid_version, include_hidden=include_hidden).cid)
