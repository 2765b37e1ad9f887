"""Where each block of a model's DAG lives: small nodes as bytes, leaves as places in its files.

This is the gateway's one view of a block index. Until the store keeps one beside its stamps
(`ipfs/blockindex.py`), it is computed here from the verified files with the importer, on the
first request that needs the model, and kept in memory: the files are re-chunked once, no
block's bytes are ever stored a second time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ...hashes import file_signature
from ...ipfs.cid import RAW, Cid
from ...ipfs.importer import DagNode, DirectoryBuilder, Profile, UnixFSFileBuilder
from ...ipfs.unixfs import decode_pbnode, decode_unixfs, file_leaf_affixes
from ...ipfs.verify import candidate_profiles

log = logging.getLogger(__name__)

_READ_SIZE = 4 * 1024 * 1024
Signature = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Leaf:
    """A leaf block: `length` bytes of `path` at `offset`, wrapped in `prefix`/`suffix` when
    the leaf is a dag-pb UnixFS node (both empty for a raw leaf)."""

    path: Path
    offset: int
    length: int
    prefix: bytes = b""
    suffix: bytes = b""


def block_key(cid: Cid) -> Cid:
    """The key blocks are found by: a CIDv0 and its CIDv1 name the same block."""
    return cid if cid.version == 1 else cid.to_v1()


@dataclass
class DagIndex:
    """The blocks of one model's directory DAG (`root`), and the file signatures they hold for.

    `nodes` are the small blocks (directories, file parents), `leaves` the file chunks, both
    keyed by `block_key`; `signatures` are (size, mtime, inode) of each file when indexed.
    """

    model: str
    root: Cid
    profile: str
    nodes: dict[Cid, bytes] = field(default_factory=dict)
    leaves: dict[Cid, Leaf] = field(default_factory=dict)
    files: dict[str, Cid] = field(default_factory=dict)
    signatures: dict[Path, Signature] = field(default_factory=dict)

    def __contains__(self, cid: Cid) -> bool:
        key = block_key(cid)
        return key in self.nodes or key in self.leaves

    def locate(self, cid: Cid) -> bytes | Leaf | None:
        """The block's bytes (a small node), where it lives (a leaf), or None."""
        key = block_key(cid)
        node = self.nodes.get(key)
        return node if node is not None else self.leaves.get(key)

    def unchanged(self) -> bool:
        """Whether every file still has the signature it had when indexed."""
        try:
            return all(file_signature(p) == sig for p, sig in self.signatures.items())
        except OSError:
            return False


class _Collector:
    """Sorts the blocks one builder emits for one file into the index's nodes and leaves."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.nodes: dict[Cid, bytes] = {}
        self.leaves: dict[Cid, Leaf] = {}

    def __call__(self, cid: Cid, block: bytes) -> None:
        key = block_key(cid)
        if cid.codec == RAW:
            self._leaf(key, len(block), b"", b"")
            return
        pb = decode_pbnode(block)
        data = decode_unixfs(pb.data).data if pb.data is not None else None
        if not pb.links and data:
            prefix, suffix = file_leaf_affixes(len(data))
            if len(prefix) + len(data) + len(suffix) == len(block):
                self._leaf(key, len(data), prefix, suffix)
                return
        self.nodes[key] = block
        # a parent (or an empty file's node): its leaves came before it, offsets are right

    def _leaf(self, key: Cid, length: int, prefix: bytes, suffix: bytes) -> None:
        self.leaves.setdefault(key, Leaf(self.path, self.offset, length, prefix, suffix))
        self.offset += length


def _keep_in(nodes: dict[Cid, bytes]) -> Callable[[Cid, bytes], None]:
    def keep(cid: Cid, block: bytes) -> None:
        nodes[block_key(cid)] = block

    return keep


def _index_files(
    files: Mapping[str, Path], profiles: tuple[Profile, ...]
) -> list[tuple[dict[str, DagNode], list[_Collector], Mapping[Path, Signature]]]:
    """Chunk every file once, with each candidate profile (one read feeds all builders)."""
    per_profile: list[tuple[dict[str, DagNode], list[_Collector]]] = [({}, []) for _ in profiles]
    signatures: dict[Path, Signature] = {}
    buf = bytearray(_READ_SIZE)
    view = memoryview(buf)
    for rel, path in files.items():
        before = file_signature(path)
        collectors = [_Collector(path) for _ in profiles]
        builders = [
            UnixFSFileBuilder(p, on_block=c) for p, c in zip(profiles, collectors, strict=True)
        ]
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                for b in builders:
                    b.update(view[:n])
        if file_signature(path) != before:
            raise OSError(f"{path} changed while it was being indexed")
        signatures[path] = before
        for (nodes, kept), builder, collector in zip(
            per_profile, builders, collectors, strict=True
        ):
            nodes[rel] = builder.finish_node()
            kept.append(collector)
    return [(nodes, kept, signatures) for nodes, kept in per_profile]


def build_index(
    model: str,
    root: Cid,
    files: Mapping[str, Path],
    *,
    profiles: tuple[Profile, ...] | None = None,
    on_miss: Callable[[str], None] | None = None,
) -> DagIndex | None:
    """Index the DAG `root` names over a model's verified `files` (relative path -> file).

    The directory is rebuilt as `ipfs add -r` would with each profile that can give `root`;
    the first that does is kept. None (and `on_miss(reason)`) when none gives it: those files
    are then not served under that CID. Blocking: run it in a worker thread.
    """
    candidates = profiles or candidate_profiles(root)
    results = _index_files(files, candidates)
    want = block_key(root)
    got: list[str] = []
    for profile, (nodes, collectors, signatures) in zip(candidates, results, strict=True):
        index = DagIndex(model, root, profile.name, signatures=dict(signatures))
        dir_nodes: dict[Cid, bytes] = {}
        builder = DirectoryBuilder(profile, on_block=_keep_in(dir_nodes))
        for rel, node in nodes.items():
            builder.add(rel, node)
        dir_root = builder.finish_node().cid
        got.append(f"{dir_root} ({profile.name})")
        if block_key(dir_root) != want:
            continue
        index.nodes.update(dir_nodes)
        for rel, node in nodes.items():
            index.files[rel] = node.cid
        for c in collectors:
            index.nodes.update(c.nodes)
            for key, leaf in c.leaves.items():
                index.leaves.setdefault(key, leaf)
        return index
    reason = (
        f"model {model}: its verified files give {', '.join(got)}, not its CID {root}: "
        "they are not served under it (published with another chunker or another file set?)"
    )
    log.warning("%s", reason)
    if on_miss is not None:
        on_miss(reason)
    return None


__all__ = ["DagIndex", "Leaf", "block_key", "build_index"]
