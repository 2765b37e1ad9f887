"""modelfetch: model files from the cache, IPFS gateways or Hugging Face, verified."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .catalog import HuggingFaceRef, IPFSRef, ModelSpec
    from .config import Settings, load_settings
    from .engine import Fetcher
    from .errors import (
        AllSourcesFailed,
        ConfigError,
        InvalidRepoId,
        ModelfetchError,
        NoMatchingFiles,
        NotCached,
        SourceError,
        StorageError,
        UnknownModel,
        UnsafePath,
        VerificationError,
    )
    from .events import AttemptEvent, Listener, ProgressEvent
    from .hubtypes import RepoType
    from .results import FileResult, ModelResult

__version__ = "0.1.0"

__all__ = [
    "AllSourcesFailed",
    "AttemptEvent",
    "ConfigError",
    "Fetcher",
    "FileResult",
    "HuggingFaceRef",
    "IPFSRef",
    "InvalidRepoId",
    "ModelResult",
    "ModelSpec",
    "ModelfetchError",
    "NoMatchingFiles",
    "NotCached",
    "ProgressEvent",
    "Settings",
    "SourceError",
    "StorageError",
    "UnknownModel",
    "UnsafePath",
    "VerificationError",
    "apull",
    "load_settings",
    "pull",
]

# Where each public name lives. They are imported on first use (PEP 562), so that
# `import modelfetch.cli` (every run of the command) does not import the engine and aiohttp.
_EXPORTS = {
    "HuggingFaceRef": ".catalog",
    "IPFSRef": ".catalog",
    "ModelSpec": ".catalog",
    "Settings": ".config",
    "load_settings": ".config",
    "Fetcher": ".engine",
    "FileResult": ".results",
    "ModelResult": ".results",
    "AllSourcesFailed": ".errors",
    "ConfigError": ".errors",
    "InvalidRepoId": ".errors",
    "NoMatchingFiles": ".errors",
    "NotCached": ".errors",
    "ModelfetchError": ".errors",
    "SourceError": ".errors",
    "StorageError": ".errors",
    "UnknownModel": ".errors",
    "UnsafePath": ".errors",
    "VerificationError": ".errors",
    "AttemptEvent": ".events",
    "ProgressEvent": ".events",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


async def apull(
    models: str | Sequence[str],
    *,
    models_dir: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] | None = None,
    prefer: str | None = None,
    settings: Settings | None = None,
    listeners: Iterable[Listener] = (),
    revision: str | None = None,
    repo_type: RepoType = "model",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    cache_dir: str | os.PathLike[str] | None = None,
    local_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
) -> list[ModelResult]:
    """Pull catalog models or Hugging Face repos; each result lists its files (path, size,
    sha256, source, gateway), and for a repo its `snapshot` dir and `commit`.

    A name that is not a catalog model and has the form `org/name` is a Hugging Face repo:
    its files (`include`/`exclude` fnmatch globs, as `hf download`) at `revision` (branch,
    tag or commit; default "main") go into the Hugging Face cache (`cache_dir`, else
    HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub) in huggingface_hub's own layout, or
    plain into `local_dir`. `offline=True` (or HF_HUB_OFFLINE=1) sends no request at all.

    Example::

        results = await modelfetch.apull("whisper-base")
        for f in results[0].files:
            print(f.path, f.source, f.gateway)
        [repo] = await modelfetch.apull("org/name", include=["*.json"])
        print(repo.snapshot, repo.commit)

    A file that no source could deliver is reported in `ModelResult.errors`
    (an AllSourcesFailed naming every attempt); nothing unverified is installed.
    """
    from dataclasses import replace
    from pathlib import Path

    from .config import hf_cache_dir, load_settings
    from .engine import Fetcher
    from .repos import RepoOptions, pull_names

    names = [models] if isinstance(models, str) else list(models)
    if settings is None:
        settings = load_settings(
            config_file=config,
            models_dir=models_dir,
            prefer=prefer,
            cache_dir=cache_dir,
            offline=offline,
        )
    else:
        hf = settings.huggingface
        if cache_dir is not None:
            hf = replace(hf, cache_dir=hf_cache_dir(os.environ, cache_dir))
        if offline is not None:
            hf = replace(hf, offline=offline)
        settings = replace(settings, huggingface=hf).preferring(prefer)
    options = RepoOptions(
        revision=revision,
        repo_type=repo_type,
        include=tuple(include),
        exclude=tuple(exclude),
        local_dir=Path(local_dir).expanduser() if local_dir is not None else None,
    )
    async with Fetcher(settings, listeners=listeners) as fetcher:
        return await pull_names(fetcher, names, options)


def pull(
    models: str | Sequence[str],
    *,
    models_dir: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] | None = None,
    prefer: str | None = None,
    settings: Settings | None = None,
    listeners: Iterable[Listener] = (),
    revision: str | None = None,
    repo_type: RepoType = "model",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    cache_dir: str | os.PathLike[str] | None = None,
    local_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
) -> list[ModelResult]:
    """Blocking form of `apull`, with the same arguments (runs its own event loop)::

    [repo] = modelfetch.pull("org/name", include=["*.json"], revision="main")
    """
    import asyncio

    return asyncio.run(
        apull(
            models,
            models_dir=models_dir,
            config=config,
            prefer=prefer,
            settings=settings,
            listeners=listeners,
            revision=revision,
            repo_type=repo_type,
            include=include,
            exclude=exclude,
            cache_dir=cache_dir,
            local_dir=local_dir,
            offline=offline,
        )
    )
