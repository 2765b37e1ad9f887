"""Pull-through: a file the mirror lacks is fetched upstream once, however many ask for it.

One transfer per (repo, commit, path) at a time, through the engine (the configured
endpoint and mirrors, hedged, every byte checked against the tree's identity), installed
into the mirror's Hugging Face cache as huggingface_hub would (blob, snapshot link, under
huggingface_hub's own blob lock). Clients are served from the installed, verified blob only:
nothing is streamed while it arrives, so a byte that fails verification can never reach one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from ...catalog import HuggingFaceRef, ModelSpec
from ...engine import Fetcher
from ...errors import AllSourcesFailed, ModelfetchError, StorageError
from ...hfcache import HFCache
from ...hubtypes import RepoFile, RepoRef
from .flight import SingleFlight
from .holdings import Copy, Holdings, Signature, signature_of

log = logging.getLogger(__name__)

STAGING = ".modelfetch/mirror/incoming"


@dataclass(frozen=True)
class Pulled:
    """A file the pull-through installed: its blob in the HF cache."""

    blob: Path
    signature: Signature  # the blob's (size, mtime, inode) right after it was installed
    bytes_downloaded: int
    held: Copy | None = None  # no transfer: a verified copy was found first


async def pull_file(
    fetcher: Fetcher, cache: HFCache, holdings: Holdings, repo: RepoRef, commit: str, f: RepoFile
) -> Pulled:
    """Fetch one file of `commit` upstream through the engine into the HF cache.

    The engine writes the verified file to a staging dir of the models dir; it is then
    moved into `blobs/<etag>` (replacing only a blob proven wrong) and linked from
    `snapshots/<commit>/<path>`, holding huggingface_hub's lock for that blob.
    """
    spec = ModelSpec(
        name=f"mirror:{repo.repo_type}:{repo.repo_id}@{commit}",
        dir=f"{STAGING}/{repo.folder_name}/{commit}",
        files=(f.path,),
        huggingface=HuggingFaceRef(repo.repo_id, commit, repo.repo_type),
    )
    result = await fetcher.fetch_file(spec, f.path, identity=f.identity())

    def install() -> Pulled:
        blob = cache.blob_path(repo, f.etag)
        with cache.lock(repo, f.etag):
            ours = True
            if holdings.blob_is_wrong(repo, f):
                cache.replace_blob(repo, f.etag, result.local_path, move=True)
            else:  # False: another tool installed it meanwhile; it is hashed before use
                ours = cache.install_blob(repo, f.etag, result.local_path, move=True)
            cache.link(repo, commit, f.path, f.etag)
            signature = signature_of(blob) if ours else (-1, 0, 0)
            return Pulled(blob, signature, result.bytes_downloaded)

    return await asyncio.to_thread(install)


PullFn = Callable[[RepoRef, str, RepoFile], Awaitable[Pulled]]
CheckFn = Callable[[RepoRef, RepoFile], Awaitable[Copy | None]]


class PullThrough:
    """Single-flight pulls of missing files; counts transfers started and in flight.

    Each flight first looks for a verified copy again (`check`): a caller that found none
    just before another flight ended joins nothing and must not start a second transfer.
    """

    def __init__(self, pull: PullFn, check: CheckFn) -> None:
        self._pull = pull
        self._check = check
        self._flights: SingleFlight[Pulled] = SingleFlight()
        self.started = 0
        self.failed = 0
        self.bytes_downloaded = 0

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    def start(self, repo: RepoRef, commit: str, f: RepoFile) -> asyncio.Task[Pulled]:
        """The transfer of `f` (joined if running, started otherwise)."""
        return self._flights.task((repo, commit, f.path), lambda: self._one(repo, commit, f))

    async def _one(self, repo: RepoRef, commit: str, f: RepoFile) -> Pulled:
        held = await self._check(repo, f)
        if held is not None:
            return Pulled(held.path, held.signature, 0, held)
        self.started += 1
        try:
            pulled = await self._pull(repo, commit, f)
        except (ModelfetchError, OSError) as exc:
            self.failed += 1
            log.warning("pull-through of %s@%s %s failed: %s", repo, commit[:8], f.path, exc)
            if isinstance(exc, OSError):
                raise StorageError(f"{f.path}: {exc}") from None
            raise
        self.bytes_downloaded += pulled.bytes_downloaded
        return pulled

    async def close(self) -> None:
        await self._flights.cancel_all()


def describe_failure(exc: BaseException) -> str:
    """One line for a client: what failed upstream (every origin, briefly)."""
    if isinstance(exc, AllSourcesFailed):
        tried = "; ".join(
            f"{a.origin or a.layer}: {a.error_type}" for a in exc.attempts if a.layer != "cache"
        )
        return f"every upstream origin failed for {exc.path} ({tried or 'none could serve it'})"
    return f"{type(exc).__name__}: {exc}"
