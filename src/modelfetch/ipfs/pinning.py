"""Pinning targets (kubo's RPC, Pinata, a Pinning Service API): endpoints, credentials, uploads."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, get_args
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from ..errors import (
    ConfigError,
    ConnectFailed,
    HashMismatch,
    HTTPStatus,
    ModelfetchError,
    SourceError,
    Stalled,
)
from .cid import Cid
from .upload import MultipartUpload, Part

if TYPE_CHECKING:
    from .publish import LocalModel

log = logging.getLogger(__name__)

Target = Literal["kubo", "pinata", "psa"]
TARGETS: Final[tuple[Target, ...]] = get_args(Target)

DEFAULT_KUBO_API: Final = "http://127.0.0.1:5001"
DEFAULT_PINATA_API: Final = "https://api.pinata.cloud"
DEFAULT_PSA_ENDPOINT: Final = "https://api.pinata.cloud/psa"
PINATA_GATEWAY: Final = "https://gateway.pinata.cloud"

#: Environment variables read for endpoints and credentials (credentials are never logged).
ENV_KUBO_API: Final = "MODELFETCH_KUBO_API"
ENV_KUBO_TOKEN: Final = "MODELFETCH_KUBO_TOKEN"
ENV_PINATA_API: Final = "MODELFETCH_PINATA_API"
ENV_PINATA_JWT: Final = "PINATA_JWT"
ENV_PINATA_KEY: Final = "PINATA_API_KEY"
ENV_PINATA_SECRET: Final = "PINATA_SECRET_KEY"
ENV_PSA_ENDPOINT: Final = "MODELFETCH_PSA_ENDPOINT"
ENV_PSA_TOKEN: Final = "MODELFETCH_PSA_TOKEN"

CONNECT_TIMEOUT: Final = 10.0
MAX_POLL_INTERVAL: Final = 15.0
KUBO_LINKS: Final = 174  # the balanced-DAG width kubo and Pinata use (not settable over RPC)


@dataclass(frozen=True)
class Auth:
    """Request headers carrying credentials; `secrets` are scrubbed from every message."""

    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)
    source: str = "none"  # which variable or argument they came from (never their value)

    def __repr__(self) -> str:
        return f"Auth(source={self.source!r})"

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "***")
        return text


def require_same(local: LocalModel, service_cid: str, where: str, files: str = "") -> None:
    try:
        same = Cid.parse(service_cid) == local.root.cid
    except ValueError:
        same = False
    if not same:
        raise HashMismatch(
            f"{local.spec.name}: {where} reports CID {service_cid or '(none)'} but the local "
            f"files give {local.cid} ({local.profile.name}); nothing was recorded. The service "
            f"may chunk or link differently (profile), or a file changed during the upload." + files
        )


# -- endpoints and credentials ----------------------------------------------------------


def endpoint_and_auth(
    to: Target, endpoint: str | None, token: str | None, env: Mapping[str, str]
) -> tuple[str, Auth]:
    token = token.strip() if token and token.strip() else None
    if to == "kubo":
        base = _base_url(endpoint or env.get(ENV_KUBO_API) or DEFAULT_KUBO_API, to)
        if not base.endswith("/api/v0"):
            base += "/api/v0"
        secret = token or env.get(ENV_KUBO_TOKEN, "").strip() or None
        auth = (
            Auth(
                {"Authorization": f"Bearer {secret}"},
                (secret,),
                "token" if token else ENV_KUBO_TOKEN,
            )
            if secret
            else Auth()
        )
    elif to == "pinata":
        base = _base_url(endpoint or env.get(ENV_PINATA_API) or DEFAULT_PINATA_API, to)
        auth = _pinata_auth(token, env)
    else:
        base = _base_url(endpoint or env.get(ENV_PSA_ENDPOINT) or DEFAULT_PSA_ENDPOINT, to)
        secret = token or env.get(ENV_PSA_TOKEN, "").strip() or None
        source = "token" if token else ENV_PSA_TOKEN
        if secret is None and is_pinata(base):
            secret, source = env.get(ENV_PINATA_JWT, "").strip() or None, ENV_PINATA_JWT
        if secret is None:
            more = f" (or ${ENV_PINATA_JWT} for Pinata's)" if is_pinata(base) else ""
            raise ConfigError(
                f"the pinning service at {display_url(base)} needs an access token: set "
                f"${ENV_PSA_TOKEN}{more}"
            )
        auth = Auth({"Authorization": f"Bearer {secret}"}, (secret,), source)
    if auth.secrets and not _safe_for_secrets(base):
        raise ConfigError(
            f"refusing to send {to} credentials over plain http to {display_url(base)}: "
            "use an https endpoint (plain http is only allowed to loopback)"
        )
    return base, auth


def _pinata_auth(token: str | None, env: Mapping[str, str]) -> Auth:
    jwt = token or env.get(ENV_PINATA_JWT, "").strip() or None
    if jwt:
        return Auth(
            {"Authorization": f"Bearer {jwt}"}, (jwt,), "token" if token else ENV_PINATA_JWT
        )
    key = env.get(ENV_PINATA_KEY, "").strip()
    secret = env.get(ENV_PINATA_SECRET, "").strip()
    if key and secret:
        return Auth(
            {"pinata_api_key": key, "pinata_secret_api_key": secret},
            (key, secret),
            f"{ENV_PINATA_KEY}+{ENV_PINATA_SECRET}",
        )
    if key or secret:
        missing = ENV_PINATA_SECRET if key else ENV_PINATA_KEY
        raise ConfigError(f"Pinata credentials are incomplete: ${missing} is not set")
    raise ConfigError(
        f"Pinata needs credentials: set ${ENV_PINATA_JWT} (a JWT), or ${ENV_PINATA_KEY} and "
        f"${ENV_PINATA_SECRET}"
    )


def _base_url(value: str, to: str) -> str:
    value = value.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{to} endpoint {display_url(value)!r} is not an http(s) URL")
    return value


def display_url(url: str) -> str:
    """The URL without any user:password part."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(invalid URL)"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def is_pinata(base: str) -> bool:
    host = urlsplit(base).hostname or ""
    return host == "pinata.cloud" or host.endswith(".pinata.cloud")


def _safe_for_secrets(base: str) -> bool:
    parts = urlsplit(base)
    host = parts.hostname or ""
    return parts.scheme == "https" or host in ("localhost", "::1") or host.startswith("127.")


def check_origins(origins: Iterable[str]) -> tuple[str, ...]:
    out = []
    for origin in origins:
        origin = origin.strip()
        if not origin.startswith("/") or " " in origin:
            raise ConfigError(
                f"--origin {origin!r} is not a multiaddr (e.g. /ip4/203.0.113.5/tcp/4001/p2p/12D3…)"
            )
        out.append(origin)
    return tuple(out)


# -- HTTP helpers -----------------------------------------------------------------------


def error_text(body: str) -> str:
    """The message inside a service's JSON error (kubo, Pinata, PSA shapes), else the body."""
    text = body.strip()
    with contextlib.suppress(ValueError):
        data = json.loads(text)
        if isinstance(data, dict):
            if isinstance(data.get("Message"), str):  # kubo
                return str(data["Message"])
            error = data.get("error")
            if isinstance(error, dict):  # PSA Failure, Pinata
                parts = [str(error.get(k)) for k in ("reason", "details") if error.get(k)]
                if parts:
                    return ": ".join(parts)
            if isinstance(error, str):
                return error
            if isinstance(data.get("message"), str):
                return str(data["message"])
    return " ".join(text.split())[:300] or "(empty body)"


async def _raise_for_status(resp: aiohttp.ClientResponse, what: str, auth: Auth) -> None:
    if 200 <= resp.status < 300:
        return
    try:
        body = (await resp.content.read(64 * 1024)).decode("utf-8", "replace")
    except (aiohttp.ClientError, TimeoutError):
        body = ""
    message = auth.redact(f"{what}: HTTP {resp.status}: {error_text(body)}")
    if resp.status in (401, 403):
        used = f" (from {auth.source})" if auth.source != "none" else " (none were sent)"
        raise ConfigError(f"{message}: the service rejected the credentials{used}")
    retry_after = None
    with contextlib.suppress(TypeError, ValueError):
        retry_after = float(resp.headers.get("Retry-After", ""))
    raise HTTPStatus(resp.status, message, retry_after=retry_after)


@contextlib.asynccontextmanager
async def request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    what: str,
    auth: Auth,
    *,
    timeout: float,
    **kwargs: Any,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """One request with timeouts, aiohttp errors translated into SourceError families."""
    client_timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=CONNECT_TIMEOUT, sock_read=timeout
    )
    headers = {**kwargs.pop("headers", {}), **auth.headers}
    try:
        async with session.request(
            method, url, headers=headers, timeout=client_timeout, **kwargs
        ) as resp:
            await _raise_for_status(resp, what, auth)
            yield resp
    except ModelfetchError:
        raise
    except TimeoutError:
        raise Stalled(f"{what}: no answer for {timeout:g} s") from None
    except aiohttp.ClientConnectorError as exc:
        reason = exc.os_error.strerror if exc.os_error is not None else str(exc)
        raise ConnectFailed(auth.redact(f"{what}: cannot connect: {reason}")) from None
    except aiohttp.ClientError as exc:
        raise SourceError(auth.redact(f"{what}: {type(exc).__name__}: {exc}")) from None


def _file_parts(local: LocalModel, name: str = "") -> list[Part]:
    """The model's files as form parts, ordered so each directory's files are adjacent.

    kubo's multipart reader walks parts as a stream and closes an implicit directory at the
    first part outside it: grouping by path components keeps every directory in one piece.
    `name` prefixes each file name (Pinata wants the top directory in every path).
    """
    ordered = sorted(local.spec.files, key=lambda rel: rel.split("/"))
    return [
        Part(
            "file",
            "application/octet-stream",
            filename=f"{name}/{rel}" if name else rel,
            path=local.paths[rel],
            size=local.sizes[rel],
        )
        for rel in ordered
    ]


@contextlib.asynccontextmanager
async def _uploading(upload: MultipartUpload) -> AsyncIterator[None]:
    """Report why the body could not be sent, rather than the dropped connection it caused."""
    try:
        yield
    except SourceError:
        if upload.error is not None:
            raise upload.error from None
        raise


# -- kubo -------------------------------------------------------------------------------


async def kubo_add(
    session: aiohttp.ClientSession, api: str, auth: Auth, local: LocalModel, io_timeout: float
) -> str:
    """`/api/v0/add` every file (one part each, filename = relative path), wrapped, pinned."""
    prof = local.profile
    params = {
        "cid-version": str(prof.cid_version),
        "raw-leaves": "true" if prof.raw_leaves else "false",
        "chunker": f"size-{prof.chunk_size}",
        "hash": "sha2-256",
        "wrap-with-directory": "true",
        "pin": "true",
        "progress": "false",
    }
    what = f"kubo RPC {display_url(api)}/add"
    lines: list[dict[str, Any]] = []
    form = MultipartUpload(_file_parts(local))  # names quoted (%2F), as kubo's client does
    async with (
        _uploading(form),
        request(
            session, "POST", f"{api}/add", what, auth, timeout=io_timeout, params=params, data=form
        ) as resp,
    ):
        async for raw in resp.content:
            line = raw.strip()
            if not line:
                continue
            try:
                item = json.loads(line)
            except ValueError:
                raise SourceError(f"{what}: not an NDJSON answer: {line[:200]!r}") from None
            if isinstance(item, dict) and item.get("Type") == "error":
                raise SourceError(auth.redact(f"{what}: {error_text(line.decode())}"))
            if isinstance(item, dict) and "Hash" in item:
                lines.append(item)
    wrapper = [x for x in lines if x.get("Name", None) == ""]
    if not wrapper:
        raise SourceError(f'{what}: the answer has no wrapping directory line (Name "")')
    root = str(wrapper[-1]["Hash"])
    if not same_cid(root, local.root.cid):
        differing = [
            f"  {x['Name']}: node {x['Hash']}, local {local.files[x['Name']].cid}"
            for x in lines
            if x.get("Name") in local.files
            and not same_cid(str(x["Hash"]), local.files[x["Name"]].cid)
        ]
        require_same(
            local,
            root,
            f"kubo at {display_url(api)}",
            ("\nfiles that differ:\n" + "\n".join(differing[:10])) if differing else "",
        )
    return root


def same_cid(text: str, cid: Cid) -> bool:
    try:
        return Cid.parse(text) == cid
    except ValueError:
        return False


# -- Pinata -----------------------------------------------------------------------------


async def pinata_upload(
    session: aiohttp.ClientSession, base: str, auth: Auth, local: LocalModel, io_timeout: float
) -> str:
    """`pinFileToIPFS`: each file as `file` named `<model>/<relpath>`; returns `IpfsHash`."""
    shown = display_url(base)
    async with request(
        session,
        "GET",
        f"{base}/data/testAuthentication",
        f"Pinata {shown} authentication check",
        auth,
        timeout=min(io_timeout, 60.0),
    ):
        pass  # fail in a second on bad credentials, not after uploading the whole model
    top = local.spec.name.replace("/", "-")
    metadata = {
        "name": local.spec.name,
        "keyvalues": {
            "model": local.spec.name,
            "type": local.spec.type,
            "files": str(len(local.files)),
            "localCid": local.cid,
        },
    }
    options = {"cidVersion": local.profile.cid_version, "wrapWithDirectory": False}
    what = f"Pinata {shown}/pinning/pinFileToIPFS"
    parts = [
        *_file_parts(local, top),
        Part("pinataMetadata", "application/json", data=json.dumps(metadata).encode()),
        Part("pinataOptions", "application/json", data=json.dumps(options).encode()),
    ]
    # Raw file paths, as the form-data library of Pinata's own examples sends them.
    form = MultipartUpload(parts, quote_filenames=False)
    async with (
        _uploading(form),
        request(
            session,
            "POST",
            f"{base}/pinning/pinFileToIPFS",
            what,
            auth,
            timeout=io_timeout,
            data=form,
        ) as resp,
    ):
        body = await resp.text()
    try:
        answer = json.loads(body)
        cid = str(answer["IpfsHash"])
    except (ValueError, KeyError, TypeError):
        raise SourceError(f"{what}: unexpected answer: {error_text(body)}") from None
    return cid
