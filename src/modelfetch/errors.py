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
        return f"{self.layer}{where}: {self.error_type}: {self.message}"


class AllSourcesFailed(ModelfetchError):
    """Every layer and every origin failed for a file; `attempts` lists each try."""

    def __init__(self, model: str, path: str, attempts: Sequence[Attempt]) -> None:
        self.model = model
        self.path = path
        self.attempts = list(attempts)
        lines = "\n".join(f"  {a.line()}" for a in self.attempts) or "  (no source could be tried)"
        super().__init__(f"{model}: {path}: all download layers exhausted\n{lines}")


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


def error_type(exc: BaseException) -> str:
    """The short name used for an error in reports and records."""
    return type(exc).__name__
