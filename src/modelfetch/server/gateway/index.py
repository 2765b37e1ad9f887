"""Where each block of a model's DAG lives: small nodes as bytes, leaves as places in its files.

Built from the block indexes the store keeps beside its stamps (`ipfs/blockindex.py`: saved by
`publish`, and by pulls whose files were verified by their DAG), so serving a model reads no
file until a leaf is asked for. A model whose files have no saved index (verified by SHA-256
only) is re-chunked once with the profiles that can give its CID, and the indexes found are
saved for the next start. No block's bytes are ever stored a second time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ...catalog import ModelSpec
from ...hashes import file_signature
from ...ipfs import blockindex
from ...ipfs.blockindex import BlockIndex, DirectoryIndex, index_file
from ...ipfs.cid import Cid
from ...ipfs.importer import PROFILES, Profile
from ...store import Store

log = logging.getLogger(__name__)

Signature = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Place:
    """A leaf block: its bytes are `leaf.length` bytes of `path` at `leaf.offset`."""

    path: Path
    leaf: blockindex.Leaf

    def block(self, data: bytes) -> bytes:
        """The leaf block these file bytes make (a dag-pb leaf wraps them)."""
        return self.leaf.block(data)


def block_key(cid: Cid) -> Cid:
    """The key blocks are found by: a CIDv0 and its CIDv1 name the same block."""
    return cid if cid.version == 1 else cid.to_v1()


@dataclass
class DagIndex:
    """The blocks of one model's directory DAG (`root`), and the file signatures they hold for.

    `nodes` are the small blocks (directories, HAMT shards, file parents), `leaves` the file
    chunks, both keyed by `block_key`; `signatures` are (size, mtime, inode) of each file.
    """

    model: str
    root: Cid
    nodes: dict[Cid, bytes] = field(default_factory=dict)
    leaves: dict[Cid, Place] = field(default_factory=dict)
    files: dict[str, Cid] = field(default_factory=dict)
    signatures: dict[Path, Signature] = field(default_factory=dict)
    how: str = ""  # where the index came from (saved indexes, or re-chunked with a profile)

    def __contains__(self, cid: Cid) -> bool:
        key = block_key(cid)
        return key in self.nodes or key in self.leaves

    def locate(self, cid: Cid) -> bytes | Place | None:
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

    def add_file(self, rel: str, path: Path, index: BlockIndex, signature: Signature) -> None:
        self.files[rel] = index.root
        self.signatures[path] = signature
        for cid, block in index.nodes.items():
            self.nodes[block_key(cid)] = block
        for leaf in index.leaves:
            if leaf.kind != "inline":  # inline bytes live in their node, not a block
                self.leaves.setdefault(block_key(leaf.cid), Place(path, leaf))


def candidate_profiles(root: Cid) -> tuple[Profile, ...]:
    """The known import profiles that can give a directory CID of this version."""
    return tuple(p for p in PROFILES.values() if p.cid_version == root.version)


def _from_saved(
    store: Store, spec: ModelSpec, root: Cid, files: Mapping[str, Path]
) -> DagIndex | None:
    tree = DirectoryIndex.load(store.directory_index_path(spec, root))
    indexes: dict[str, BlockIndex] = {}
    for rel in files:
        cids = [tree.files[rel]] if tree is not None and rel in tree.files else None
        for text in cids or store.block_index_roots(spec, rel):
            found = store.load_block_index(spec, rel, text)  # None if the file changed since
            if found is not None:
                indexes[rel] = found
                break
        if rel not in indexes:
            return None
    if tree is None:  # saved by a pull: the files' DAGs only, the directory is rebuilt
        tree = _matching_tree(root, indexes, candidate_profiles(root))
        if tree is None:
            return None
    if block_key(tree.root) != block_key(root) or set(tree.files) != set(files):
        return None
    return _assemble(spec.name, root, tree, indexes, files, "saved block indexes")


def _matching_tree(
    root: Cid, indexes: Mapping[str, BlockIndex], profiles: tuple[Profile, ...]
) -> DirectoryIndex | None:
    for profile in profiles:
        tree = DirectoryIndex.build(indexes, profile)
        if block_key(tree.root) == block_key(root):
            return tree
    return None


def _assemble(
    model: str,
    root: Cid,
    tree: DirectoryIndex,
    indexes: Mapping[str, BlockIndex],
    files: Mapping[str, Path],
    how: str,
) -> DagIndex | None:
    out = DagIndex(model, root, how=how)
    for cid, block in tree.nodes.items():
        out.nodes[block_key(cid)] = block
    for rel, index in indexes.items():
        try:
            out.add_file(rel, files[rel], index, file_signature(files[rel]))
        except OSError:
            return None
    return out


def build_index(
    store: Store,
    spec: ModelSpec,
    root: Cid,
    files: Mapping[str, Path],
    *,
    profiles: tuple[Profile, ...] | None = None,
) -> DagIndex | None:
    """Index the DAG `root` names over a model's verified `files` (relative path -> file).

    Saved block indexes first; else each file is re-chunked with every profile that can give
    `root` (one read per profile), the directory rebuilt, and the profile that gives `root`
    kept (its indexes saved beside the stamps). None when none does: the files are then not
    served under that CID. Blocking: run it in a worker thread.
    """
    if profiles is None:
        saved = _from_saved(store, spec, root, files)
        if saved is not None:
            return saved
    got: list[str] = []
    for profile in profiles or candidate_profiles(root):
        indexes = {rel: index_file(path, profile)[1] for rel, path in files.items()}
        tree = DirectoryIndex.build(indexes, profile)
        got.append(f"{tree.root} ({profile.name})")
        if block_key(tree.root) != block_key(root):
            continue
        for rel, index in indexes.items():
            store.save_block_index(spec, rel, index)
        try:
            tree.save(store.directory_index_path(spec, tree.root))
        except OSError as exc:
            log.warning("could not save the directory index of %s: %s", spec.name, exc)
        return _assemble(spec.name, root, tree, indexes, files, f"re-chunked ({profile.name})")
    log.warning(
        "model %s: its verified files give %s, not its CID %s: they are not served under it "
        "(published with another chunker, or another file set?)",
        spec.name,
        ", ".join(got) or "no CID of this version",
        root,
    )
    return None


__all__ = ["DagIndex", "Place", "block_key", "build_index", "candidate_profiles"]
