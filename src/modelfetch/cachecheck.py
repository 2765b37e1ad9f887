"""The cache layer of the chain: the destination's own copy, then the Hugging Face cache.

Both verify what they find against the file's identity (a stamp, else one hashing pass) and
report a hit as the engine reports any source: an attempt event, a progress event, a
`FileResult` with no byte transferred. What they find wrong is named in the failure report.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .attempts import FileLog
from .cachelayer import find_blob
from .config import Settings
from .destination import Destination
from .errors import Attempt
from .events import AttemptEvent, ProgressEvent
from .hashes import Identity
from .hfcache import HFCache
from .hfdest import Stamps
from .results import FileResult
from .sources.base import FileRequest

log = logging.getLogger(__name__)


async def from_destination(
    request: FileRequest,
    identity: Identity,
    file_log: FileLog,
    dest: Destination,
    *,
    final: bool = True,
) -> FileResult | None:
    """The destination's own copy. With `final=False` (a quick look) a miss is silent and
    nothing is moved."""
    model, path = request.model, request.path
    started = time.monotonic()
    if not identity.verifiable:
        present = dest.final_path(path).is_file()
        kind = "Unverifiable" if present else "CacheMiss"
        message = "present, but nothing to verify it against" if present else "not on disk"
        if present:
            file_log.attempts.append(Attempt("cache", None, kind, message))
        file_log.emit(
            AttemptEvent(model.name, path, "cache", "error", error_type=kind, error_message=message)
        )
        return None
    found = await dest.lookup(path, identity, repair=final)
    latency = (time.monotonic() - started) * 1000
    if found.status == "hit" and found.verified is not None:
        size, sha256 = found.verified.size, found.verified.sha256
        file_log.emit(AttemptEvent(model.name, path, "cache", "hit", latency_ms=latency))
        file_log.emit(
            ProgressEvent(
                model.name, path, "cache", "success", bytes_downloaded=size, total_bytes=size
            )
        )
        return FileResult(path, found.path, size, sha256, "cache", None, 0)
    if not final:
        return None
    kind = found.error_type or "CacheMiss"
    message = found.reason or "not in the models dir"
    file_log.emit(
        AttemptEvent(
            model.name,
            path,
            "cache",
            "error",
            latency_ms=latency,
            error_type=kind,
            error_message=message,
        )
    )
    if found.status == "corrupt":
        note = f"{message} ({dest.corrupt_note})"
        file_log.attempts.append(Attempt("cache", None, kind, note))
        log.warning("%s: %s: %s", model.name, path, note)
    return None


async def from_hf_cache(
    settings: Settings,
    request: FileRequest,
    identity: Identity,
    file_log: FileLog,
    dest: Destination,
) -> FileResult | None:
    """The Hugging Face cache, read as a cache: a matching blob, no transfer."""
    model, path = request.model, request.path
    if model.huggingface is None:
        return None
    started = time.monotonic()
    cache = HFCache(settings.huggingface.cache_dir)
    found = await asyncio.to_thread(
        find_blob, cache, Stamps(settings.models_dir), model, path, identity, dest
    )
    for problem in found.problems:
        file_log.attempts.append(Attempt("cache", None, "HashMismatch", problem))
        log.warning("%s: %s: %s", model.name, path, problem)
    if found.blob is None or found.verified is None:
        return None
    final = await asyncio.to_thread(dest.install_copy, path, found.blob, found.verified)
    size, sha256 = found.verified.size, found.verified.sha256
    latency = (time.monotonic() - started) * 1000
    file_log.emit(AttemptEvent(model.name, path, "cache", "hit", latency_ms=latency))
    file_log.emit(
        ProgressEvent(model.name, path, "cache", "success", bytes_downloaded=size, total_bytes=size)
    )
    return FileResult(path, final, size, sha256, "cache", None, 0)
