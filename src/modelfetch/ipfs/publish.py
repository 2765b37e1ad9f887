"""Publishing a model directory to IPFS: kubo RPC, Pinata, or a Pinning Service."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from ..catalog import ModelSpec
from ..config import Settings
from ..errors import (
    ConfigError,
    StorageError,
)
from ..inventory import inspect_model
from ..records import Records
from ..store import Store
from .blockindex import BlockIndex, DirectoryIndex, index_file
from .importer import DagNode, Profile, get_profile
from .pinning import (  # noqa: F401  (re-exported: the constants are part of publish's API)
    CONNECT_TIMEOUT,
    DEFAULT_KUBO_API,
    DEFAULT_PINATA_API,
    DEFAULT_PSA_ENDPOINT,
    ENV_KUBO_API,
    ENV_KUBO_TOKEN,
    ENV_PINATA_API,
    ENV_PINATA_JWT,
    ENV_PINATA_KEY,
    ENV_PINATA_SECRET,
    ENV_PSA_ENDPOINT,
    ENV_PSA_TOKEN,
    KUBO_LINKS,
    MAX_POLL_INTERVAL,
    PINATA_GATEWAY,
    TARGETS,
    Target,
    check_origins,
    display_url,
    endpoint_and_auth,
    is_pinata,
    kubo_add,
    pinata_upload,
    require_same,
)
from .psa import psa_pin

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalModel:
    """A model's verified files on disk and the UnixFS nodes `ipfs add` would make of them."""

    spec: ModelSpec
    profile: Profile
    root: DagNode
    files: Mapping[str, DagNode]
    paths: Mapping[str, Path]
    sizes: Mapping[str, int]
    sha256: Mapping[str, str]
    indexes: Mapping[str, BlockIndex] = field(default_factory=dict)  # each file's DAG
    tree: DirectoryIndex | None = None  # the directory's own blocks (and HAMT shards)

    @property
    def cid(self) -> str:
        """The root directory's CID text (`Qm…` for CIDv0, base32 `bafy…` for v1)."""
        return str(self.root.cid)

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())

    @property
    def model_hash(self) -> str:
        """SHA-256 over the sorted `path NUL size NUL sha256 LF` lines: the files' identity."""
        h = hashlib.sha256()
        for path in sorted(self.sizes):
            h.update(f"{path}\0{self.sizes[path]}\0{self.sha256[path]}\n".encode())
        return h.hexdigest()


@dataclass(frozen=True)
class PublishResult:
    """A model published and pinned: the CID recorded, and what the service said."""

    model: str
    cid: str
    target: Target
    pinned: bool
    local_cid: str
    service_cid: str = ""
    endpoint: str = ""
    profile: str = ""
    files: int = 0
    bytes: int = 0
    request_id: str | None = None
    delegates: tuple[str, ...] = ()
    published_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "cid": self.cid,
            "target": self.target,
            "pinned": self.pinned,
            "local_cid": self.local_cid,
            "service_cid": self.service_cid,
            "endpoint": self.endpoint,
            "profile": self.profile,
            "files": self.files,
            "bytes": self.bytes,
            "request_id": self.request_id,
            "delegates": list(self.delegates),
            "published_at": self.published_at,
        }


# -- the local side ---------------------------------------------------------------------


async def prepare(
    settings: Settings,
    model_name: str,
    *,
    cid_version: int = 1,
    profile: str | Profile | None = None,
) -> LocalModel:
    """Check every file of the model is present and verified, then compute its directory CID.

    The CID is that of a directory holding exactly the model's listed files at their relative
    paths (nested paths are subdirectories), as `ipfs add -r` computes it with this profile.
    Raises ConfigError naming each missing, corrupt or unverified file.
    """
    spec = settings.model(model_name)
    try:
        prof = get_profile(cid_version, profile)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    store = Store(settings.models_dir)
    status = await inspect_model(store, spec, deep=True)
    bad = [f for f in status.files if f.state != "verified"]
    if bad:
        lines = "\n".join(
            f"  {f.path}: {f.state}" + (f" ({f.reason})" if f.reason else "") for f in bad
        )
        raise ConfigError(
            f"cannot publish {spec.name}: {len(bad)} of {len(status.files)} file(s) are not "
            f"present and verified in {store.root / spec.dir}:\n{lines}\n"
            f"run `modelfetch pull {spec.name}` (or `modelfetch manifest generate`) first"
        )
    paths = {f.path: store.final_path(spec, f.path) for f in status.files}
    sizes = {f.path: int(f.size or 0) for f in status.files}
    digests = {f.path: str(f.sha256) for f in status.files}

    def compute() -> tuple[dict[str, DagNode], dict[str, BlockIndex], DirectoryIndex]:
        nodes: dict[str, DagNode] = {}
        indexes: dict[str, BlockIndex] = {}
        for rel in spec.files:
            nodes[rel], indexes[rel] = index_file(paths[rel], prof)
        return nodes, indexes, DirectoryIndex.build(nodes, prof)

    try:
        nodes, indexes, tree = await asyncio.to_thread(compute)
    except ValueError as exc:  # a path that is both a file and a directory
        raise ConfigError(f"cannot publish {spec.name}: {exc}") from None
    except OSError as exc:
        raise StorageError(f"cannot read {spec.name} for publishing: {exc}") from None
    for rel, node in nodes.items():
        if node.filesize != sizes[rel]:
            raise StorageError(
                f"{spec.name}: {rel} changed while it was being hashed "
                f"({sizes[rel]:,} bytes verified, {node.filesize:,} read): try again"
            )
    await asyncio.to_thread(_save_indexes, store, spec, indexes, tree)
    root = DagNode(tree.root, tree.size)
    return LocalModel(spec, prof, root, nodes, paths, sizes, digests, indexes, tree)


def _save_indexes(
    store: Store, spec: ModelSpec, indexes: Mapping[str, BlockIndex], tree: DirectoryIndex
) -> None:
    """Keep the blocks' whereabouts beside the stamps, so the files' blocks can be served."""
    for rel, index in indexes.items():
        store.save_block_index(spec, rel, index)
    where = store.directory_index_path(spec, tree.root)
    try:
        tree.save(where)
    except OSError as exc:  # only serving needs it: never fail a publish for it
        log.warning("could not write directory index %s: %s", where, exc.strerror)


# -- entry point ------------------------------------------------------------------------


async def publish(
    settings: Settings,
    model_name: str,
    *,
    to: Target,
    cid_version: int = 1,
    profile: str | Profile | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    origins: Sequence[str] = (),
    gateway_url: str | None = None,
    pin_timeout: float = 300.0,
    poll_interval: float = 1.0,
    io_timeout: float = 300.0,
    session: aiohttp.ClientSession | None = None,
    env: Mapping[str, str] | None = None,
    on_local: Callable[[LocalModel], None] | None = None,
) -> PublishResult:
    """Publish a verified model to IPFS and record its CID so the next pull can use it.

    Steps: check every file of `model_name` is present and verified against the manifest;
    compute the directory CID locally (`cid_version` 0/1, or a `profile` name, which wins);
    upload or pin it with the target; require the CID the service reports to equal the local
    one (else HashMismatch, and nothing is recorded); write `ipfsHash`/`publishedAt` into the
    manifest and a row into the records' `ipfs_cids`.

    Targets:
        - "kubo": kubo's RPC `POST /api/v0/add` (multipart, one part per file, wrapped in a
          directory, pinned). `endpoint` default `$MODELFETCH_KUBO_API` or
          http://127.0.0.1:5001; an optional bearer `token` (or `$MODELFETCH_KUBO_TOKEN`).
        - "pinata": `POST /pinning/pinFileToIPFS`. Credentials: `token` or `$PINATA_JWT`
          (Bearer), else `$PINATA_API_KEY` + `$PINATA_SECRET_KEY`. `endpoint` default
          `$MODELFETCH_PINATA_API` or https://api.pinata.cloud.
        - "psa": an IPFS Pinning Service API (`POST /pins`, then `GET /pins/{requestid}`
          until `pinned`, or `failed`, or `pin_timeout` seconds). It pins by CID only: the
          content must already be served by a node the service can reach; pass that node's
          multiaddrs as `origins`. `endpoint` default `$MODELFETCH_PSA_ENDPOINT` or Pinata's
          https://api.pinata.cloud/psa; `token` or `$MODELFETCH_PSA_TOKEN` (`$PINATA_JWT` for
          a pinata.cloud endpoint).

    `on_local(model)` is called with the local CID before any upload. Credentials are never
    logged, put in exceptions, records or reprs. Raises ConfigError (bad usage, missing or
    rejected credentials, model not verified), SourceError (service failures, timeouts) or
    HashMismatch (the service reports another CID).

    Example::

        result = await publish(settings, "whisper-base", to="kubo")
        print(result.cid)
    """
    if to not in TARGETS:
        raise ConfigError(f"unknown publish target {to!r}: use one of {', '.join(TARGETS)}")
    env = os.environ if env is None else env
    base, auth = endpoint_and_auth(to, endpoint, token, env)
    shown = display_url(base)
    prof = _profile_or_config_error(cid_version, profile)
    if to == "pinata" and (prof.chunk_size != 262144 or prof.max_links != KUBO_LINKS):
        raise ConfigError(
            f"Pinata chunks files with kubo's defaults (256 KiB, 174 links): profile "
            f"{prof.name} would give another CID; use --cid-version 0 or 1"
        )
    checked_origins = check_origins(origins) if to == "psa" else ()
    if origins and to != "psa":
        raise ConfigError("--origin only applies to --to psa (a pinning service fetches by CID)")

    local = await prepare(settings, model_name, profile=prof)
    if on_local is not None:
        on_local(local)
    log.info(
        "publishing %s (%d files, %d bytes, %s) to %s at %s: local CID %s",
        local.spec.name,
        len(local.files),
        local.total_bytes,
        prof.name,
        to,
        shown,
        local.cid,
    )

    own = session is None
    client = session or aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT)
    )
    request_id: str | None = None
    delegates: tuple[str, ...] = ()
    try:
        if to == "kubo":
            service_cid = await kubo_add(client, base, auth, local, io_timeout)
        elif to == "pinata":
            service_cid = await pinata_upload(client, base, auth, local, io_timeout)
        else:
            service_cid, request_id, delegates = await psa_pin(
                client,
                base,
                auth,
                local,
                checked_origins,
                pin_timeout=pin_timeout,
                poll_interval=poll_interval,
                io_timeout=io_timeout,
            )
    finally:
        if own:
            await client.close()

    require_same(local, service_cid, f"{to} at {shown}")
    if gateway_url is None and (to == "pinata" or is_pinata(base)):
        gateway_url = PINATA_GATEWAY
    when = datetime.now(UTC)
    await _record(settings, local, when, gateway_url)
    log.info("published %s as %s (%s at %s)", local.spec.name, local.cid, to, shown)
    return PublishResult(
        model=local.spec.name,
        cid=local.cid,
        target=to,
        pinned=True,
        local_cid=local.cid,
        service_cid=service_cid,
        endpoint=shown,
        profile=prof.name,
        files=len(local.files),
        bytes=local.total_bytes,
        request_id=request_id,
        delegates=tuple(delegates),
        published_at=when.isoformat().replace("+00:00", "Z"),
    )


def _profile_or_config_error(cid_version: int, profile: str | Profile | None) -> Profile:
    try:
        return get_profile(cid_version, profile)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


async def _record(
    settings: Settings, local: LocalModel, when: datetime, gateway_url: str | None
) -> None:
    store = Store(settings.models_dir)
    await asyncio.to_thread(store.manifest.record_publication, local.spec.name, local.cid, when)

    def upsert() -> None:
        records = Records(settings.records_path)
        try:
            records.upsert_cid(
                local.spec.name,
                local.cid,
                model_type=local.spec.type,
                model_hash=local.model_hash,
                gateway_url=gateway_url,
            )
        finally:
            records.close()

    try:
        await asyncio.to_thread(upsert)
    except StorageError as exc:  # the manifest, which pull reads first, already has the CID
        log.warning("%s: CID recorded in the manifest but not in the records: %s", local.cid, exc)


__all__ = [
    "DEFAULT_KUBO_API",
    "DEFAULT_PINATA_API",
    "DEFAULT_PSA_ENDPOINT",
    "PINATA_GATEWAY",
    "TARGETS",
    "LocalModel",
    "PublishResult",
    "Target",
    "prepare",
    "publish",
]
