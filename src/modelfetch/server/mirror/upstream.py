"""The mirror's upstream hub: revision info and trees through HubAPI, cached briefly.

The mirror's own token (HF_TOKEN of the machine it runs on) goes to the upstream only:
HubAPI sends it to the endpoint's host alone and scrubs it from every message, and the
mirror answers with its own messages, never with upstream headers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Literal

from ...config import HuggingFaceSettings
from ...errors import (
    EntryNotFound,
    GatedRepo,
    ModelfetchError,
    RepoNotFound,
    RevisionNotFound,
    Stalled,
)
from ...hub import HubAPI
from ...hubtypes import RepoFile, RepoRef, RevisionInfo
from ...manifest import write_json_atomic
from .answers import (
    HubAnswer,
    entry_not_found,
    repo_not_found,
    revision_not_found,
    upstream_failed,
)
from .flight import SingleFlight

log = logging.getLogger(__name__)

Access = Literal["public", "gated", "private"]
REVISION_TTL = 60.0  # s a branch's commit from upstream is trusted before asking again
MAX_TREES = 256  # commits' trees kept in memory (a commit's tree never changes)


class Upstream:
    """Revision info and trees of the upstream hub, with the answers typed for clients.

    Every call raises HubAnswer on failure: 404 with the hub's error code for what upstream
    says does not exist, 401/403 GatedRepo for what the mirror must not hand out, 502/504
    for an upstream that cannot be reached or answers nonsense.
    """

    def __init__(
        self, settings: HuggingFaceSettings, state_dir: Path, *, ttl: float = REVISION_TTL
    ) -> None:
        self.offline = settings.offline
        self.endpoint = settings.endpoint
        self.api = HubAPI.from_settings(settings)
        self.ttl = ttl
        self._revisions: dict[tuple[RepoRef, str], tuple[float, RevisionInfo]] = {}
        self._trees: OrderedDict[tuple[RepoRef, str], list[RepoFile]] = OrderedDict()
        self._flights: SingleFlight[object] = SingleFlight()
        self._access_path = state_dir / "mirror" / "access.json"
        self._access: dict[str, Access] | None = None

    def close(self) -> None:
        self.api.close()

    async def revision(self, repo: RepoRef, revision: str) -> RevisionInfo:
        """What upstream says `revision` is now (cached for `ttl` seconds)."""
        key = (repo, revision)
        hit = self._revisions.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        info = await self._flights.run(("rev", key), lambda: self._revision(repo, revision))
        assert isinstance(info, RevisionInfo)
        self._revisions[key] = (time.monotonic(), info)
        access: Access = "private" if info.private else "gated" if info.gated else "public"
        await self._remember_access(repo, access)
        return info

    async def tree(self, repo: RepoRef, commit: str) -> list[RepoFile]:
        """Every file of `commit` (the recursive tree)."""
        key = (repo, commit)
        if key in self._trees:
            self._trees.move_to_end(key)
            return self._trees[key]
        files = await self._flights.run(("tree", key), lambda: self._tree(repo, commit))
        assert isinstance(files, list)
        self._trees[key] = files
        while len(self._trees) > MAX_TREES:
            self._trees.popitem(last=False)
        return files

    async def access(self, repo: RepoRef, revision: str) -> Access:
        """Whether upstream serves `repo` to anyone ("public"), or not ("gated", "private").

        Asked of upstream (the revision info says `gated` and `private`), remembered on
        disk for when upstream is down. A repo upstream does not show the mirror, or one
        unknown while upstream cannot be asked, is "private" (fail closed).
        """
        try:
            await self.revision(repo, revision)
        except HubAnswer as answer:
            if answer.code == "RepoNotFound":
                return "private"
            if answer.code == "GatedRepo":
                return "gated"
        known = await self._known_access()
        return known.get(_access_key(repo), "private")

    # -- calls --------------------------------------------------------------------------------

    def _check_online(self) -> None:
        if self.offline:
            raise upstream_failed(
                "the mirror runs offline (HF_HUB_OFFLINE): it serves only what it holds"
            )

    async def _revision(self, repo: RepoRef, revision: str) -> RevisionInfo:
        self._check_online()
        try:
            return await self.api.revision_info(repo, revision)
        except ModelfetchError as exc:
            raise _answer(exc, repo, revision, None) from None

    async def _tree(self, repo: RepoRef, commit: str) -> list[RepoFile]:
        self._check_online()
        try:
            files = await self.api.list_tree(repo, commit)
        except ModelfetchError as exc:
            raise _answer(exc, repo, commit, None) from None
        # Xet hashes are dropped: a client told of one would ask this mirror for Xet tokens.
        return [RepoFile(f.path, f.size, f.blob_id, f.lfs_sha256) for f in files]

    # -- access memory ------------------------------------------------------------------------

    async def _known_access(self) -> dict[str, Access]:
        if self._access is None:
            self._access = await asyncio.to_thread(_read_access, self._access_path)
        return self._access

    async def _remember_access(self, repo: RepoRef, access: Access) -> None:
        known = await self._known_access()
        if known.get(_access_key(repo)) == access:
            return
        known[_access_key(repo)] = access
        try:
            await asyncio.to_thread(_write_access, self._access_path, dict(known))
        except OSError as exc:
            log.warning("could not remember repo access in %s: %s", self._access_path, exc)


def _access_key(repo: RepoRef) -> str:
    return f"{repo.repo_type}:{repo.repo_id}"


def _read_access(path: Path) -> dict[str, Access]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if v in ("public", "gated", "private")}


def _write_access(path: Path, data: dict[str, Access]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data)


def _answer(exc: ModelfetchError, repo: RepoRef, revision: str, path: str | None) -> HubAnswer:
    """A client's answer for what went wrong upstream (the upstream's token is not in it)."""
    if isinstance(exc, RepoNotFound):
        return repo_not_found(repo.repo_id)
    if isinstance(exc, RevisionNotFound):
        return revision_not_found(revision)
    if isinstance(exc, EntryNotFound):
        return entry_not_found(path or "", None)
    if isinstance(exc, GatedRepo):
        return HubAnswer(403, f"{repo}: the upstream hub refuses the mirror access", "GatedRepo")
    return upstream_failed(f"{type(exc).__name__}: {exc}", timeout=isinstance(exc, Stalled))
