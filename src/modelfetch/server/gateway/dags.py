"""The store's models as IPFS DAGs: which have a CID, and their blocks read from verified files."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from ...catalog import ModelSpec
from ...config import Settings
from ...errors import BadBlock, ModelfetchError
from ...hashes import file_signature
from ...inventory import inspect_model
from ...ipfs.cid import Cid, verify_block
from ...store import Store
from .index import DagIndex, Place, build_index

log = logging.getLogger(__name__)

#: Seconds between two looks at the manifest for models published or pulled meanwhile.
REFRESH_INTERVAL = 1.0

IndexBuilder = Callable[[Store, ModelSpec, Cid, dict[str, Path]], DagIndex | None]


class Stale(Exception):
    """A file changed since its blocks were indexed: the index must be rebuilt."""


def read_leaf(place: Place, signature: tuple[int, int, int] | None) -> bytes:
    """A leaf block's bytes, read from its verified file (blocking).

    Raises Stale when the file's signature is no longer the one it was verified with.
    """
    leaf = place.leaf
    try:
        if signature is not None and file_signature(place.path) != signature:
            raise Stale(f"{place.path} changed since it was verified")
        with open(place.path, "rb", buffering=0) as f:
            data = os.pread(f.fileno(), leaf.length, leaf.offset)
    except FileNotFoundError:
        raise Stale(f"{place.path} is gone") from None
    if len(data) != leaf.length:
        raise Stale(f"{place.path} is shorter than when it was verified")
    return place.block(data)


class StoreDags:
    """Every model of the store that has a CID (manifest `ipfsHash`, else the catalog's), as
    blocks: `await dags(cid)` -> verified bytes, KeyError when no served model holds it.

    A model is served once all its files are verified (stamps, as `status` checks them); its
    DAG index is built from those files on first need. A file whose signature changed makes
    its model re-checked (and re-indexed, or dropped) before any of its blocks is served, and
    every block read from a file is hashed against its CID on the way out.
    """

    def __init__(self, settings: Settings, *, builder: IndexBuilder | None = None) -> None:
        self.settings = settings
        self.store = Store(settings.models_dir)
        self._build: IndexBuilder = builder or build_index
        self._indexes: dict[str, DagIndex] = {}
        self._refused: dict[str, tuple[str, str]] = {}  # model -> (cid, why), until it changes
        self._lock = asyncio.Lock()
        self._checked = 0.0

    # -- which models --------------------------------------------------------------------

    def _wanted(self) -> dict[str, tuple[ModelSpec, Cid]]:
        """(spec, CID) of each model that names a CID (blocking: reads the manifest)."""
        try:
            manifest = self.store.manifest.read()
        except ModelfetchError as exc:
            log.warning("gateway: cannot read the manifest: %s", exc)
            manifest = {}
        out: dict[str, tuple[ModelSpec, Cid]] = {}
        for name, spec in self.settings.models.items():
            text = (manifest.get(name) or {}).get("ipfsHash") or (
                spec.ipfs.cid if spec.ipfs else None
            )
            if not text:
                continue
            try:
                out[name] = (spec, Cid.parse(str(text)))
            except ValueError:
                log.warning("gateway: model %s has an invalid CID %r: not served", name, text)
        return out

    async def refresh(self, *, force: bool = False) -> None:
        """Index models whose CID is new or whose files changed (throttled unless `force`)."""
        if not force and time.monotonic() - self._checked < REFRESH_INTERVAL:
            return
        async with self._lock:
            if not force and time.monotonic() - self._checked < REFRESH_INTERVAL:
                return
            wanted = await asyncio.to_thread(self._wanted)
            for name in list(self._indexes):
                index = self._indexes[name]
                moved = name not in wanted or wanted[name][1] != index.root
                if moved or not await asyncio.to_thread(index.unchanged):
                    del self._indexes[name]
            for name, (spec, cid) in wanted.items():
                if name in self._indexes:
                    continue
                refused = self._refused.get(name)
                if refused is not None and refused[0] == str(cid):
                    continue
                built, why = await self._index(spec, cid)
                if built is not None:
                    self._indexes[name] = built
                    self._refused.pop(name, None)
                else:
                    self._refused[name] = (str(cid), why)
            self._checked = time.monotonic()

    async def _index(self, spec: ModelSpec, cid: Cid) -> tuple[DagIndex | None, str]:
        status = await inspect_model(self.store, spec)
        bad = [f for f in status.files if f.state != "verified"]
        if bad:
            why = ", ".join(f"{f.path} {f.state}" for f in bad)
            log.info("gateway: %s not served under %s: %s", spec.name, cid, why)
            return None, why
        files = {f.path: self.store.final_path(spec, f.path) for f in status.files}
        try:
            index = await asyncio.to_thread(self._build, self.store, spec, cid, files)
        except (OSError, ValueError) as exc:
            log.warning("gateway: cannot index %s: %s", spec.name, exc)
            return None, str(exc)
        if index is None:
            return None, "its files do not give its CID with a known profile"
        log.info("gateway: serving %s as %s (from %s)", spec.name, cid, index.how)
        return index, ""

    def forget(self, model: str) -> None:
        """Drop a model's index and the refusal note (it is looked at again on next refresh)."""
        self._indexes.pop(model, None)
        self._refused.pop(model, None)
        self._checked = 0.0

    @property
    def served(self) -> dict[str, Cid]:
        """Model name -> root CID of each model served now."""
        return {name: index.root for name, index in self._indexes.items()}

    def indexed_from(self, model: str) -> str | None:
        """Where a served model's index came from (saved block indexes, or re-chunked)."""
        index = self._indexes.get(model)
        return index.how if index is not None else None

    def refused(self) -> dict[str, tuple[str, str]]:
        """Model name -> (CID, why) of each model with a CID that is not served."""
        return dict(self._refused)

    # -- blocks --------------------------------------------------------------------------

    def _find(self, cid: Cid) -> tuple[DagIndex, bytes | Place] | None:
        for index in self._indexes.values():
            where = index.locate(cid)
            if where is not None:
                return index, where
        return None

    async def has(self, cid: Cid) -> bool:
        """Whether a served model holds block `cid`."""
        await self.refresh()
        return cid.is_identity or self._find(cid) is not None

    async def __call__(self, cid: Cid) -> bytes:
        """The verified bytes of block `cid`; KeyError when no served model holds it."""
        if cid.is_identity:
            return cid.digest
        for attempt in range(2):
            await self.refresh(force=attempt > 0)
            found = self._find(cid)
            if found is None:
                break
            index, where = found
            if isinstance(where, bytes):
                return where  # built here from verified files; the reader re-hashes it anyway
            try:
                data = await asyncio.to_thread(read_leaf, where, index.signatures.get(where.path))
                verify_block(cid, data)
                return data
            except (Stale, BadBlock) as exc:
                log.warning("gateway: %s: %s; checking the model again", index.model, exc)
                self.forget(index.model)
        raise KeyError(cid)


__all__ = ["REFRESH_INTERVAL", "Stale", "StoreDags", "read_leaf"]
