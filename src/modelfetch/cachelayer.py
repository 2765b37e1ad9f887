"""The Hugging Face cache as a read source for every pull, catalog models included.

A file whose model has a Hugging Face source may already be a blob of huggingface_hub's cache
(`blobs/<sha256>` or `blobs/<git sha1>`, or whatever `snapshots/<commit>/<path>` links to).
A blob whose bytes match the file's identity is used with no transfer: the destination hard
links it (else copies it). With no identity known (offline, no manifest), the blob's own name
is the evidence: it is the hash the hub gave huggingface_hub. A blob that does not match is
reported and never used, never deleted. Blocking: call from a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .catalog import ModelSpec
from .destination import Destination
from .errors import ConfigError, StorageError
from .hashes import Identity, Verified
from .hfcache import HFCache
from .hfdest import Stamps, check_file, identity_of_etag
from .hubtypes import RepoRef, is_commit


@dataclass
class CacheFind:
    """A verified blob for the file (or None), and the blobs found wrong on the way."""

    blob: Path | None = None
    verified: Verified | None = None
    problems: list[str] = field(default_factory=list)


def find_blob(
    cache: HFCache,
    stamps: Stamps,
    model: ModelSpec,
    path: str,
    identity: Identity,
    destination: Destination,
) -> CacheFind:
    """A blob of `cache` that holds `model`'s file `path`, checked against `identity`."""
    found = CacheFind()
    ref = model.huggingface
    if ref is None:
        return found
    try:
        repo = RepoRef(ref.repo, "dataset" if ref.type == "dataset" else "model")
        repo_path = ref.repo_path(path)
    except ConfigError:
        return found
    if destination.reads_hf_blob(cache.root, repo.folder_name):
        return found  # the destination's own lookup has already looked there
    etags = [e for e in (identity.sha256, identity.git_sha1) if e]
    commit = ref.revision if is_commit(ref.revision) else cache.read_ref(repo, ref.revision)
    if commit is not None:
        try:
            linked = cache.linked_etag(repo, commit, repo_path)
        except ConfigError:
            linked = None
        if linked is not None:
            etags.append(linked)
    for etag in dict.fromkeys(etags):
        try:
            blob = cache.find_blob(repo, etag)
        except StorageError:  # not a blob name: nothing to find
            continue
        if blob is None:
            continue
        want = identity if identity.verifiable else identity_of_etag(etag, blob.stat().st_size)
        key = Stamps.blob_key(cache, repo.folder_name, etag)
        verified, error = check_file(blob, want, path, stamps, key, etag)
        if verified is not None:
            found.blob, found.verified = blob, verified
            return found
        found.problems.append(
            f"the Hugging Face cache's blob {blob} does not match ({error}): not used, "
            "left in place"
        )
    return found
