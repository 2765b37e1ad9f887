"""modelfetch: model files from the cache, IPFS gateways or Hugging Face, verified."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .catalog import HuggingFaceRef, IPFSRef, ModelSpec
    from .config import Settings, load_settings
    from .engine import Fetcher, FileResult, ModelResult
    from .errors import (
        AllSourcesFailed,
        ConfigError,
        ModelfetchError,
        SourceError,
        StorageError,
        UnknownModel,
        UnsafePath,
        VerificationError,
    )
    from .events import AttemptEvent, Listener, ProgressEvent

__version__ = "0.1.0"

__all__ = [
    "AllSourcesFailed",
    "AttemptEvent",
    "ConfigError",
    "Fetcher",
    "FileResult",
    "HuggingFaceRef",
    "IPFSRef",
    "ModelResult",
    "ModelSpec",
    "ModelfetchError",
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
    "FileResult": ".engine",
    "ModelResult": ".engine",
    "AllSourcesFailed": ".errors",
    "ConfigError": ".errors",
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
) -> list[ModelResult]:
    """Pull one or more models; each result lists its files (path, size, sha256, source, gateway).

    Example::

        results = await modelfetch.apull("whisper-base")
        for f in results[0].files:
            print(f.path, f.source, f.gateway)

    A file that no source could deliver is reported in `ModelResult.errors`
    (an AllSourcesFailed naming every attempt); nothing unverified is installed.
    """
    from .config import load_settings
    from .engine import Fetcher

    names = [models] if isinstance(models, str) else list(models)
    if settings is None:
        settings = load_settings(config_file=config, models_dir=models_dir, prefer=prefer)
    async with Fetcher(settings, listeners=listeners) as fetcher:
        return await fetcher.pull(names)


def pull(
    models: str | Sequence[str],
    *,
    models_dir: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] | None = None,
    prefer: str | None = None,
    settings: Settings | None = None,
    listeners: Iterable[Listener] = (),
) -> list[ModelResult]:
    """Blocking form of `apull` (runs its own event loop)."""
    import asyncio

    return asyncio.run(
        apull(
            models,
            models_dir=models_dir,
            config=config,
            prefer=prefer,
            settings=settings,
            listeners=listeners,
        )
    )
