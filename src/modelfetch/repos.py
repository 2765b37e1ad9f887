"""Any Hugging Face repo by id: resolve it to one commit, then pull its files into the cache.

`pull_names` is what `modelfetch pull` and `modelfetch.apull` run: each name is a catalog
model or, failing that, a repo id (`org/name`). A repo's revision is resolved with one request
(none for a commit); its file list and identities come from the tree listing kept in the
Hugging Face cache for that commit, else from the hub's recursive tree. So pulling a branch
again while it has not moved costs one request, and after it moves only the files whose
identity changed are transferred (the others are blobs already there); the old snapshot is
left as it was. Offline, no request at all: what is in place is verified, anything missing
is a `NotCached` error naming it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .catalog import HuggingFaceRef, ModelSpec, check_relpath
from .errors import (
    ConfigError,
    GatedRepo,
    InvalidHubAnswer,
    ModelfetchError,
    NoMatchingFiles,
    NotCached,
    UnknownModel,
    UnsafePath,
)
from .hashes import Identity
from .hfcache import HFCache
from .hfdest import HFCacheDestination, LocalDirDestination, Stamps, identity_of_etag
from .hflocal import LocalDir
from .hubtypes import RepoFile, RepoRef, RepoType, filter_paths, is_commit
from .results import ModelResult

if TYPE_CHECKING:
    from .config import Settings
    from .engine import Fetcher
    from .transfer import RunState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RepoOptions:
    """How repo ids are pulled (`pull` flags); catalog models ignore these."""

    revision: str | None = None  # None: "main"
    repo_type: RepoType = "model"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    local_dir: Path | None = None


def parse_name(settings: Settings, name: str, repo_type: RepoType = "model") -> ModelSpec | RepoRef:
    """A catalog model, else a repo id; UnknownModel / InvalidRepoId (exit 2) otherwise."""
    if name in settings.models:
        return settings.models[name]
    if "/" not in name:
        settings.model(name)  # raises UnknownModel naming the known models
        raise UnknownModel(name)  # pragma: no cover
    return RepoRef(name, repo_type)


@dataclass(frozen=True)
class RepoPlan:
    """A repo pinned to one commit: every file's identity, and those selected."""

    repo: RepoRef
    revision: str
    commit: str
    tree: dict[str, RepoFile | None]  # None: known only by its cached blob (offline)
    etags: dict[str, str]
    identities: dict[str, Identity]
    selected: tuple[str, ...]
    fresh_tree: bool  # listed by the hub now (write it to the cache)


async def pull_names(
    fetcher: Fetcher, names: Sequence[str], options: RepoOptions = RepoOptions()
) -> list[ModelResult]:
    """Pull each name (catalog model or repo id) in one run; names are checked first."""
    from .transfer import RunState

    targets = [parse_name(fetcher.settings, n, options.repo_type) for n in names]
    if options.revision is not None:
        check_relpath(options.revision, what="revision")  # before anything is pulled
    run = RunState()
    results = []
    for target in targets:
        if isinstance(target, RepoRef):
            results.append(await pull_repo(fetcher, target, options, run=run))
        else:
            results.append(await fetcher.pull_model(target, run=run))
    return results


async def pull_repo(
    fetcher: Fetcher, repo: RepoRef, options: RepoOptions, *, run: RunState | None = None
) -> ModelResult:
    """One repo at one commit into the Hugging Face cache (or `options.local_dir`)."""
    settings = fetcher.settings
    revision = check_relpath(options.revision or "main", what="revision")  # a refs/ path
    cache = HFCache(settings.huggingface.cache_dir)
    local = LocalDir(options.local_dir) if options.local_dir is not None else None
    name = repo.repo_id
    try:
        if settings.huggingface.offline:
            plan = await asyncio.to_thread(_plan_offline, cache, local, repo, revision, options)
        else:
            plan = await _plan_online(settings, cache, local, repo, revision, options)
    except UnsafePath as exc:  # a name from the hub, not the user's: the work failed
        bad = InvalidHubAnswer(
            f"{repo}: the hub's file list has an unsafe name, nothing was written: {exc}"
        )
        return ModelResult(name, local.root if local else cache.repo_dir(repo), errors=[bad])
    except ConfigError:
        raise
    except ModelfetchError as exc:
        return ModelResult(name, local.root if local else cache.repo_dir(repo), errors=[exc])
    stamps = Stamps(settings.models_dir)
    dest: HFCacheDestination | LocalDirDestination
    if local is not None:
        dest = LocalDirDestination(local, plan.commit, plan.etags, stamps)
        where = local.root
    else:
        dest = HFCacheDestination(cache, repo, plan.commit, plan.etags, stamps)
        where = dest.snapshot
    result = ModelResult(name, where, snapshot=where, commit=plan.commit)
    wanted = list(plan.selected)
    if settings.huggingface.offline:
        wanted = []
        for path in plan.selected:
            if _present(cache, local, repo, plan, path):
                wanted.append(path)
            else:
                result.errors.append(_not_cached(repo, path, plan.commit, cache, local))
    if wanted:
        spec = ModelSpec(
            name=name,
            dir=repo.folder_name,
            files=tuple(wanted),
            huggingface=HuggingFaceRef(repo.repo_id, plan.commit, repo.repo_type),
        )
        got = await fetcher.pull_model(
            spec,
            run=run,
            destination=dest,
            identities={p: plan.identities[p] for p in wanted},
        )
        result.files, result.errors = got.files, result.errors + got.errors
    if not settings.huggingface.offline:
        await asyncio.to_thread(_record, cache, local, plan)
    return result


# -- planning --------------------------------------------------------------------------------


async def _plan_online(
    settings: Settings,
    cache: HFCache,
    local: LocalDir | None,
    repo: RepoRef,
    revision: str,
    options: RepoOptions,
) -> RepoPlan:
    from .hub import HubAPI

    hf = settings.huggingface
    api = HubAPI.from_settings(hf)
    try:
        if is_commit(revision):
            commit = revision  # nothing to resolve, as snapshot_download
        else:
            info = await api.revision_info(repo, revision)
            commit = info.commit
            if info.gated and not hf.token:
                raise GatedRepo(
                    401,
                    f"{repo} is gated: accept its terms on the hub ({hf.endpoint}/"
                    f"{repo.url_prefix.lstrip('/')}), then set HF_TOKEN, or run "
                    f"`hf auth login` (which writes {hf.token_path})",
                )
        listing = await asyncio.to_thread(_cached_tree, cache, local, repo, commit)
        fresh = listing is None
        if listing is None:
            listing = {f.path: f for f in await api.list_tree(repo, commit)}
    finally:
        api.close()
    return _plan(repo, revision, commit, dict(listing), options, fresh)


def _cached_tree(
    cache: HFCache, local: LocalDir | None, repo: RepoRef, commit: str
) -> dict[str, RepoFile] | None:
    if local is not None:
        found = local.read_tree(commit)
        if found is not None:
            return found
    return cache.read_tree(repo, commit)


def _plan_offline(
    cache: HFCache, local: LocalDir | None, repo: RepoRef, revision: str, options: RepoOptions
) -> RepoPlan:
    commit = revision if is_commit(revision) else cache.read_ref(repo, revision)
    if commit is None and local is not None:
        commit = _newest_local_commit(local)
    if commit is None:
        raise NotCached(
            f"{repo}: revision {revision!r} is not in the Hugging Face cache ({cache.root}), "
            "and offline mode (--offline or HF_HUB_OFFLINE) allows no request: pull it once "
            "online, or name a commit"
        )
    listing: dict[str, RepoFile | None] | None = None
    found = _cached_tree(cache, local, repo, commit)
    if found is not None:
        listing = dict(found)
    else:  # no tree listing: the snapshot's links say what is there
        snapshot = cache.snapshot_dir(repo, commit)
        if not snapshot.is_dir():
            raise NotCached(
                f"{repo}: commit {commit} is not in the Hugging Face cache ({cache.root}) and "
                "offline mode allows no request: pull it once online"
            )
        listing = {}
        for root, _dirs, names in os.walk(snapshot):
            for n in names:
                rel = Path(root, n).relative_to(snapshot).as_posix()
                listing[rel] = None
    return _plan(repo, revision, commit, listing, options, False, cache)


def _newest_local_commit(local: LocalDir) -> str | None:
    """The commit of the newest tree listing a `--local-dir` pull left (offline, no ref)."""
    try:
        listings = sorted(
            (p for p in (local.meta_dir / "trees").glob("*.json") if is_commit(p.stem)),
            key=lambda p: p.stat().st_mtime,
        )
    except OSError:
        return None
    return listings[-1].stem if listings else None


def _plan(
    repo: RepoRef,
    revision: str,
    commit: str,
    listing: dict[str, RepoFile | None] | dict[str, RepoFile],
    options: RepoOptions,
    fresh: bool,
    cache: HFCache | None = None,
) -> RepoPlan:
    tree: dict[str, RepoFile | None] = dict(listing)
    kept = set(filter_paths(list(tree), options.include, options.exclude))
    # A pattern that is a file's exact name selects it, even when it has glob characters
    # (the mirror's pull-through asks for files by name).
    exact = [p for p in options.include if p in tree]
    kept.update(filter_paths(exact, (), options.exclude))
    selected = tuple(sorted(kept))
    if not selected:
        patterns = " ".join(
            [f"--include {p!r}" for p in options.include]
            + [f"--exclude {p!r}" for p in options.exclude]
        )
        raise NoMatchingFiles(
            f"{repo}@{commit[:12]}: no file matches {patterns or 'the selection'} "
            f"({len(tree)} file(s) in the repo)"
        )
    etags: dict[str, str] = {}
    identities: dict[str, Identity] = {}
    for path in selected:
        entry = tree[path]
        if entry is not None:
            etags[path], identities[path] = entry.etag, entry.identity()
            continue
        assert cache is not None
        etag = cache.linked_etag(repo, commit, path)
        if etag is None:
            continue
        blob = cache.find_blob(repo, etag)
        etags[path] = etag
        identities[path] = identity_of_etag(etag, blob.stat().st_size if blob else None)
    selected = tuple(p for p in selected if p in etags)
    return RepoPlan(repo, revision, commit, tree, etags, identities, selected, fresh)


def _present(
    cache: HFCache, local: LocalDir | None, repo: RepoRef, plan: RepoPlan, path: str
) -> bool:
    if local is not None and local.file_path(path).is_file():
        return True
    return cache.find_blob(repo, plan.etags[path]) is not None


def _not_cached(
    repo: RepoRef, path: str, commit: str, cache: HFCache, local: LocalDir | None
) -> NotCached:
    where = f"{local.root} or the Hugging Face cache" if local else "the Hugging Face cache"
    return NotCached(
        f"{repo}: {path} (commit {commit[:12]}) is not in {where} ({cache.root}), and offline "
        "mode (--offline or HF_HUB_OFFLINE) allows no download: pull it once online"
    )


def _record(cache: HFCache, local: LocalDir | None, plan: RepoPlan) -> None:
    """The commit's whole tree listing and the ref, once the snapshot has its files."""
    files = [f for f in plan.tree.values() if f is not None]
    if local is not None:
        if plan.fresh_tree or local.read_tree(plan.commit) is None:
            local.write_tree(plan.commit, files)
        return
    if plan.fresh_tree or cache.read_tree(plan.repo, plan.commit) is None:
        cache.write_tree(plan.repo, plan.commit, files)
    cache.write_ref(plan.repo, plan.revision, plan.commit)
