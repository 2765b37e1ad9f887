"""The mirror's logic behind the routes: which commit, which files, which verified copy.

A revision resolves from the HF cache while its ref is fresh (`ref_ttl`), else from
upstream (falling back to the cached ref when upstream fails). A commit's files come from
its tree listing, else from upstream (then written to the HF cache, as huggingface_hub
writes them). A file's bytes are a verified local copy, else a pull-through.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ...errors import ModelfetchError, Stalled, StorageError
from ...hubtypes import RepoFile, RepoRef, is_commit
from .answers import HubAnswer, entry_not_found, upstream_failed
from .flight import SingleFlight
from .holdings import Copy, Holdings, RepoView
from .pullthrough import PullThrough, describe_failure
from .stats import MirrorStats
from .upstream import Upstream

log = logging.getLogger(__name__)

REF_TTL = 300.0  # s a ref in the HF cache is used without asking upstream
HOLD = 8.0  # s a GET waits for a pull-through before answering 429 (clients time out at 10)
RETRY_AFTER = 5  # s, told to a client sent away while its file is still arriving


@dataclass
class Mirror:
    """The HF read API's state: holdings, upstream, pull-through, figures."""

    holdings: Holdings
    upstream: Upstream
    pulls: PullThrough
    stats: MirrorStats
    ref_ttl: float = REF_TTL
    hold: float = HOLD

    def __post_init__(self) -> None:
        self._checks: SingleFlight[Copy | None] = SingleFlight()
        self._background: set[asyncio.Task[object]] = set()

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.pulls.close()
        await self._checks.cancel_all()
        self.upstream.close()

    # -- metadata -----------------------------------------------------------------------------

    async def commit(self, repo: RepoRef, revision: str) -> str:
        """The commit `revision` names: the HF cache's while fresh, else upstream's."""
        local = await asyncio.to_thread(self.holdings.local_commit, repo, revision)
        if local is not None and (is_commit(revision) or local[1] < self.ref_ttl):
            return local[0]
        if is_commit(revision):
            return revision  # a commit needs no resolving; its tree says if it exists
        try:
            info = await self.upstream.revision(repo, revision)
        except HubAnswer:
            if local is not None:
                return local[0]  # upstream down or refusing: what the cache says
            raise
        if local is None or local[0] != info.commit:
            await self._keep(lambda: self.holdings.cache.write_ref(repo, revision, info.commit))
        return info.commit

    async def view(self, repo: RepoRef, revision: str, *, complete: bool) -> RepoView:
        """The files of the commit `revision` names (all of them if `complete`)."""
        commit = await self.commit(repo, revision)
        local = await asyncio.to_thread(self.holdings.local_view, repo, commit)
        if local is not None and (local.complete or not complete):
            return local
        try:
            files = await self.upstream.tree(repo, commit)
        except HubAnswer:
            if local is not None and not complete:
                return local
            raise
        view = RepoView(repo, commit, {f.path: f for f in files}, complete=True)
        await self._keep(lambda: self.holdings.cache.write_tree(repo, commit, files))
        return view

    async def file(self, repo: RepoRef, revision: str, path: str) -> tuple[RepoView, RepoFile]:
        """The file `path` at `revision` (404 EntryNotFound if the commit has none)."""
        view = await self.view(repo, revision, complete=False)
        if path not in view.files and not view.complete:
            view = await self.view(repo, revision, complete=True)
        found = view.files.get(path)
        if found is None:
            raise entry_not_found(path, view.commit)
        return view, found

    async def _keep(self, write: Callable[[], object]) -> None:
        """Write what upstream said into the HF cache; a failure only costs a later request."""
        try:
            await asyncio.to_thread(write)
        except (ModelfetchError, OSError) as exc:
            log.warning("could not keep upstream metadata in the HF cache: %s", exc)

    # -- bytes --------------------------------------------------------------------------------

    async def copy(self, repo: RepoRef, f: RepoFile) -> Copy | None:
        """A verified local copy of `f` (hashed once, by one worker, however many ask)."""
        return await self._checks.run(
            (repo, f.etag, f.path), lambda: asyncio.to_thread(self.holdings.find_copy, repo, f)
        )

    def prefetch(self, repo: RepoRef, commit: str, f: RepoFile) -> None:
        """Start getting `f` in the background (a HEAD announces the GET that follows)."""

        async def warm() -> None:
            if await self.copy(repo, f) is None:
                await self.pulls.start(repo, commit, f)

        task: asyncio.Task[object] = asyncio.ensure_future(warm())
        self._background.add(task)
        task.add_done_callback(self._done_background)

    def _done_background(self, task: asyncio.Task[object]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("prefetch failed: %s", task.exception())

    async def obtain(self, repo: RepoRef, commit: str, f: RepoFile) -> tuple[Copy, bool]:
        """A verified copy of `f`, pulled through if need be: (copy, whether it was held).

        Waits up to `hold` seconds for a pull; longer, the client is told to come back (429
        with Retry-After, which huggingface_hub honours) while the transfer goes on.
        """
        held = await self.copy(repo, f)
        if held is not None:
            return held, True
        task = self.pulls.start(repo, commit, f)
        try:
            pulled = await asyncio.wait_for(asyncio.shield(task), self.hold)
        except TimeoutError:
            raise HubAnswer(
                429,
                f"the mirror is fetching {f.path} ({f.size:,} bytes) from upstream: "
                f"retry in {RETRY_AFTER} s",
                None,
                {"Retry-After": str(RETRY_AFTER)},
            ) from None
        except StorageError as exc:
            raise HubAnswer(503, f"the mirror could not keep {f.path}: {exc}") from None
        except ModelfetchError as exc:
            raise upstream_failed(describe_failure(exc), timeout=isinstance(exc, Stalled)) from None
        if pulled.copy is None:
            raise HubAnswer(503, f"{f.path}: the mirror's fresh copy changed: retry")
        return pulled.copy, pulled.bytes_downloaded == 0
