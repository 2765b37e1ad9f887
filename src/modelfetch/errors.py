"""Every exception modelfetch raises, grouped in families a caller can catch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class ModelfetchError(Exception):
    """Base class of every error modelfetch raises on purpose."""


# -- configuration and usage (CLI exit 2) ---------------------------------------------


class ConfigError(ModelfetchError):
    """The configuration, a model entry or a command line is not usable."""


class UnsafePath(ConfigError):
    """A file name would escape the model directory or is not a plain relative path."""


class UnknownModel(ConfigError):
    """No model of that name is in the built-in catalog or the config file."""


class InvalidRepoId(ConfigError):
    """A Hugging Face repo id is malformed (not `name` or `org/name` as the hub allows)."""


class NoMatchingFiles(ConfigError):
    """`--include`/`--exclude` keep no file of the repository."""


# -- sources (network) ----------------------------------------------------------------


class SourceError(ModelfetchError):
    """A source could not deliver the bytes; `retryable` says whether trying again may help."""

    retryable: bool = True


class ConnectFailed(SourceError):
    """The connection to the origin could not be opened, or was reset.

    `origin_down` is set when the origin cannot be reached at all (connection refused, host
    not found): asking it again in the same run would only cost time.
    """

    def __init__(self, message: str, *, origin_down: bool = False) -> None:
        super().__init__(message)
        self.origin_down = origin_down


class Stalled(SourceError):
    """The origin sent no bytes for longer than the stall timeout."""


class HTTPStatus(SourceError):
    """The origin answered with an HTTP status other than success."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.retryable = status in (408, 429) or status >= 500


class Truncated(ConnectFailed):
    """The answer ended before all its data arrived; what did arrive can be resumed from."""


class TooManyRedirects(SourceError):
    """The origin redirected too many times (a redirect loop)."""

    retryable = False


class InsecureRedirect(SourceError):
    """An HTTPS origin redirected to plain HTTP on a non-loopback host."""

    retryable = False


class NoSuchFile(SourceError):
    """The source does not have this file (not applicable, not an error of the network)."""

    retryable = False


class InvalidHubAnswer(SourceError):
    """A hub answered with something that is not the hub API (not JSON, fields missing or bad)."""

    retryable = False


class HubError(HTTPStatus):
    """The hub refused with a typed error (`X-Error-Code`); trying again will not help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.retryable = False


class RepoNotFound(HubError):
    """No such repository on the hub, or it is private and the token (if any) has no access."""


class RevisionNotFound(HubError):
    """The repository exists but not the branch, tag or commit asked for."""


class EntryNotFound(HubError):
    """The repository and revision exist but not this file or directory."""


class GatedRepo(HubError):
    """The repository is gated: its terms must be accepted and a token with access given."""


# -- verification -----------------------------------------------------------------------


class VerificationError(ModelfetchError):
    """Bytes were received but are not the expected file; they were thrown away."""


class SizeMismatch(VerificationError):
    """The byte count differs from the expected size."""


class HashMismatch(VerificationError):
    """The content hash differs from the expected one."""


class NotONNX(VerificationError):
    """A `.onnx` file does not parse as an ONNX model."""


class Unverifiable(VerificationError):
    """There is no evidence (manifest, Hugging Face metadata, CID) to check the file against."""


class BadBlock(VerificationError):
    """An IPFS block does not hash to its CID, or a DAG is incomplete."""


# -- local storage ----------------------------------------------------------------------


class StorageError(ModelfetchError):
    """The models directory cannot be written or read."""


class DiskFull(StorageError):
    """No space left on the device holding the models directory."""


class ReadOnly(StorageError):
    """The models directory (or a file in it) is not writable."""


class LockUnavailable(StorageError):
    """Cross-process file locks do not work here, or one could not be taken in time."""


class NotCached(StorageError):
    """Offline (`--offline`, HF_HUB_OFFLINE): a file or revision is not on disk to use."""


# -- the whole chain ---------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One try of one source for one file, as reported when every source failed."""

    layer: str
    origin: str | None
    error_type: str
    message: str

    def line(self) -> str:
        where = f" {self.origin}" if self.origin else ""
        if self.error_type == "Skipped":
            return f"{self.layer}{where}: skipped: {self.message}"
        return f"{self.layer}{where}: {self.error_type}: {self.message}"


class AllSourcesFailed(ModelfetchError):
    """Every layer and every origin failed for a file; `attempts` lists each try."""

    def __init__(self, model: str, path: str, attempts: Sequence[Attempt]) -> None:
        self.model = model
        self.path = path
        self.attempts = list(attempts)
        lines = "\n".join(f"  {a.line()}" for a in self.attempts) or "  (no source could be tried)"
        super().__init__(f"{model}: {path}: all download layers exhausted\n{lines}")


@dataclass(frozen=True)
class FailureGroup:
    """Files of one model that failed in the same way (same origins, same errors)."""

    files: tuple[str, ...]
    error: ModelfetchError  # the first file's error

    def text(self) -> str:
        if len(self.files) == 1 or not isinstance(self.error, AllSourcesFailed):
            return str(self.error)
        shown = ", ".join(self.files[:5]) + (", …" if len(self.files) > 5 else "")
        lines = "\n".join(f"  {a.line()}" for a in _generic(self.error))
        return (
            f"{self.error.model}: {len(self.files)} files ({shown}): "
            f"all download layers exhausted, each the same way:\n{lines}"
        )


def group_failures(errors: Sequence[ModelfetchError]) -> list[FailureGroup]:
    """Errors of one model, those identical but for the file's name told once."""
    groups: dict[object, list[ModelfetchError]] = {}
    for exc in errors:
        if isinstance(exc, AllSourcesFailed):
            key: object = tuple(same_failure(a) for a in _generic(exc))
        else:
            key = id(exc)
        groups.setdefault(key, []).append(exc)
    return [
        FailureGroup(
            tuple(e.path if isinstance(e, AllSourcesFailed) else "" for e in same),
            min(same, key=_skips_for_earlier_files),
        )
        for same in groups.values()
    ]


def _skips_for_earlier_files(exc: ModelfetchError) -> int:
    """How many of a failure's attempts only repeat what an earlier file found: the group
    is told through the file that found it (its real error), whichever file ran first."""
    if not isinstance(exc, AllSourcesFailed):
        return 0
    return sum(
        1 for a in exc.attempts if same_failure(a) != (a.layer, a.origin, a.error_type, a.message)
    )


DOWN_EARLIER = " (earlier in this run)"


def same_failure(a: Attempt) -> tuple[str, str | None, str, str]:
    """What makes two attempts the same failure: an origin skipped because it was found
    down for an earlier file failed the same way as the file that found it down."""
    if a.error_type == "Skipped" and a.message.startswith("down: "):
        return (a.layer, a.origin, "ConnectFailed", a.message[6:].removesuffix(DOWN_EARLIER))
    return (a.layer, a.origin, a.error_type, a.message)


def _generic(exc: AllSourcesFailed) -> list[Attempt]:
    """The attempts with the file's own name (and URL-quoted name) replaced by `{file}`."""
    from urllib.parse import quote

    names = sorted({exc.path, quote(exc.path), f"{exc.model}/{exc.path}"}, key=len, reverse=True)

    def scrub(text: str) -> str:
        for name in names:
            text = text.replace(name, "{file}")
        return text

    return [Attempt(a.layer, a.origin, a.error_type, scrub(a.message)) for a in exc.attempts]


def error_report(model: str, exc: BaseException) -> dict[str, Any]:
    """An error as `pull --json` and the HTTP API report it (every attempt, for exhaustion)."""
    if not isinstance(exc, ModelfetchError):
        return {
            "model": model,
            "error_type": "InternalError",
            "message": "internal error (details in the log)",
        }
    item: dict[str, Any] = {
        "model": model,
        "error_type": type(exc).__name__,
        "message": str(exc).splitlines()[0],
    }
    if isinstance(exc, AllSourcesFailed):
        item["file"] = exc.path
        item["attempts"] = [
            {
                "layer": a.layer,
                "gateway": a.origin,
                "error_type": a.error_type,
                "message": a.message,
            }
            for a in exc.attempts
        ]
    return item


def grouped_error_reports(model: str, errors: Sequence[ModelfetchError]) -> list[dict[str, Any]]:
    """`error_report`s of a model's errors, one per group: `file` is the first file,
    `files` all of them (a group of one is reported exactly as `error_report` does)."""
    reports = []
    for group in group_failures(errors):
        item = error_report(model, group.error)
        if len(group.files) > 1:
            item["files"] = list(group.files)
            item["message"] = group.text().splitlines()[0]
        reports.append(item)
    return reports


def error_type(exc: BaseException) -> str:
    """The short name used for an error in reports and records."""
    return type(exc).__name__
