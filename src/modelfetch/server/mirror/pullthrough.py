"""Pull-through: a file the mirror lacks is fetched upstream once, however many ask for it.

One transfer per (repo, commit, path) at a time, through the engine's repo pull (the
configured endpoint and mirrors, hedged, every byte checked against the tree's identity)
into the mirror's Hugging Face cache, exactly as huggingface_hub lays it out (blob, snapshot
link, under huggingface_hub's own blob lock, with a verified stamp in the models dir).
Clients are served from the installed, verified blob only: nothing is streamed while it
arrives, so a byte that fails verification can never reach one.
"""

from __future__ import annotations

import asyncio
import glob
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ...engine import Fetcher
from ...errors import AllSourcesFailed, ModelfetchError, StorageError
from ...hubtypes import RepoFile, RepoRef
from ...repos import RepoOptions, pull_repo
from .flight import SingleFlight
from .holdings import Copy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pulled:
    """A file the pull-through got: a verified copy, and how many bytes came from upstream
    (0 when a copy was found first)."""

    copy: Copy | None
    bytes_downloaded: int


async def pull_file(fetcher: Fetcher, repo: RepoRef, commit: str, f: RepoFile) -> int:
    """Fetch one file of `commit` upstream into the HF cache; the bytes downloaded.

    `modelfetch.apull`'s repo pull, on the server's own engine (its events feed /metrics
    and the dashboard): pinned to the commit (no revision request), one file selected
    (its name escaped, so it is no glob), its identity from the tree listing the mirror
    already keeps in the HF cache. Raises the engine's error when no origin delivered.
    """
    options = RepoOptions(revision=commit, repo_type=repo.repo_type, include=(glob.escape(f.path),))
    result = await pull_repo(fetcher, repo, options)
    if result.errors:
        raise result.errors[0]
    return sum(x.bytes_downloaded for x in result.files)


PullFn = Callable[[RepoRef, str, RepoFile], Awaitable[int]]
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
            return Pulled(held, 0)
        self.started += 1
        try:
            downloaded = await self._pull(repo, commit, f)
        except (ModelfetchError, OSError) as exc:
            self.failed += 1
            log.warning("pull-through of %s@%s %s failed: %s", repo, commit[:8], f.path, exc)
            if isinstance(exc, OSError):
                raise StorageError(f"{f.path}: {exc}") from None
            raise
        self.bytes_downloaded += downloaded
        return Pulled(await self._check(repo, f), downloaded)

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
