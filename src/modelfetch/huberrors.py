"""The hub's errors: typed as huggingface_hub types them, worded with what to do about them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from ._hubhttp import retry_after
from .errors import (
    EntryNotFound,
    GatedRepo,
    HTTPStatus,
    HubError,
    RepoNotFound,
    RevisionNotFound,
    SourceError,
)


def _login_hint(token_path: Path | None) -> str:
    where = f" (which writes {token_path})" if token_path is not None else ""
    return f"set HF_TOKEN, or run `hf auth login`{where}"


def describe_hub_error(
    status: int,
    headers: Mapping[str, str],
    url: str,
    *,
    reason: str = "",
    token_sent: bool = False,
    token_path: Path | None = None,
) -> str:
    """The hub's typed error (X-Error-Code) as a sentence naming the URL and what to do."""
    code = _header(headers, "X-Error-Code")
    message = _header(headers, "X-Error-Message")
    login = _login_hint(token_path)
    hint: str | None
    if code == "GatedRepo":
        hint = (
            "the repository is gated and this token has no access: accept its terms on the "
            f"hub with the token's account, or give another token ({login})"
            if token_sent
            else f"the repository is gated: accept its terms on the hub, then {login}"
        )
    elif code == "RepoNotFound":
        hint = (
            "repository not found (or private, and this token has no access to it)"
            if token_sent
            else f"repository not found (or private: {login})"
        )
    else:
        hint = {
            "RevisionNotFound": "revision not found",
            "EntryNotFound": "file not found in the repository",
            "DisabledRepo": "the repository has been disabled",
        }.get(code)
    if hint is None:
        if status == 401:
            hint = (
                f"the token was refused (invalid or expired): {login}"
                if token_sent
                else f"authentication required: {login} (or the repository does not exist)"
            )
        elif status == 403:
            hint = "access denied: the token lacks access to this repository"
        elif status == 404:
            hint = "not found"
        elif status == 429:
            hint = "rate limited by the hub"
        else:
            hint = reason or "error"
    detail = f" ({message})" if message else ""
    return f"HTTP {status}: {hint}{detail}: {url}"


_TYPED: dict[str, type[HubError]] = {
    "RepoNotFound": RepoNotFound,
    "RevisionNotFound": RevisionNotFound,
    "EntryNotFound": EntryNotFound,
    "GatedRepo": GatedRepo,
}


def hub_error(status: int, headers: Mapping[str, str], url: str, message: str) -> SourceError:
    """The exception for a failed hub answer, typed as huggingface_hub types it."""
    code = _header(headers, "X-Error-Code")
    cls = _TYPED.get(code)
    # huggingface_hub: a 401 on a repo API URL is "repository not found", unless the hub
    # says the credentials themselves are bad.
    if (
        cls is None
        and status == 401
        and "/api/" in urlsplit(url).path
        and _header(headers, "X-Error-Message") != "Invalid credentials in Authorization header"
    ):
        cls = RepoNotFound
    if cls is not None:
        return cls(status, message)
    if code or status in (401, 403):
        return HubError(status, message)
    return HTTPStatus(status, message, retry_after=retry_after(_header(headers, "Retry-After")))


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        lower = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lower), "")
    return value
