"""Who may ask what: the bind rule, Host/Origin checks and bearer tokens of the service.

Rules
-----
- Without a token the server only listens on loopback (`check_bind` refuses anything else)
  and, against DNS rebinding, answers only requests whose `Host` is a loopback name or
  address and whose peer is a loopback address (403 otherwise).
- With a token (`--token` or `MODELFETCH_TOKEN`), every endpoint except the page `/gm/`
  and `/gm/static/` needs `Authorization: Bearer <token>` (401 otherwise): the REST API,
  the WebSocket, `/metrics` and the mirror's routes. A WebSocket may pass it as
  `?token=<token>` instead, since browsers cannot set headers on one. Tokens are compared
  in constant time.
- `--mirror --open-reads`: the mirror's read routes (GET/HEAD of the Hugging Face API)
  answer anyone, token or not, on any bind; a non-loopback bind is then allowed without a
  token, and every other route keeps the rules above (so without a token it answers
  loopback peers only). Mutating routes never open.
- Mutating requests (POST) and WebSocket handshakes that carry an `Origin` header from
  another site are refused (403): a web page cannot drive the service from a browser.
- The token is never logged: the access log prints the path without the query string and
  no headers, and it never reaches the engine or the records.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from .._net import is_loopback_host
from ..errors import ConfigError

BASE = "/gm"
WS_PATH = f"{BASE}/api/ws"


@dataclass(frozen=True)
class ServerConfig:
    """What the middlewares need to know."""

    token: str | None
    open_reads: bool = False
    # each says whether a request is one of the read routes `open_reads` opens (the
    # mirror's Hugging Face API, the IPFS gateway): added by `add_mirror` and the like
    open_read_checks: tuple[Callable[[web.Request], bool], ...] = ()


CONFIG = web.AppKey("modelfetch_config", ServerConfig)


class ApiError(Exception):
    """An expected error answered as `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _host_name(host_header: str) -> str:
    """The host of a `Host` header value, without the port."""
    value = host_header.strip()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def check_bind(host: str, token: str | None, *, open_reads: bool = False) -> None:
    """Refuse (ConfigError) to listen beyond loopback without a token (unless `open_reads`:
    a mirror whose read routes are meant for the whole network)."""
    if not is_loopback_host(host) and not token and not open_reads:
        raise ConfigError(
            f"refusing to listen on {host!r}: it is not a loopback address and no token is "
            "set. Set MODELFETCH_TOKEN (or --token) to a long random secret; clients then "
            "send 'Authorization: Bearer <token>'. Or keep the default --host 127.0.0.1"
            " (or, for a LAN mirror of public models, add --mirror --open-reads)."
        )


def _open_path(path: str) -> bool:
    """Paths served without a token: the page and its static files (no data in them)."""
    return path in (BASE, f"{BASE}/") or path.startswith(f"{BASE}/static/")


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def loopback_peer(request: web.Request) -> bool:
    """Whether the request comes from this machine (IPv4-mapped loopback included)."""
    remote = request.remote or ""
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def has_token(request: web.Request) -> bool:
    """Whether the request proves it may see everything: the server's token, or (with no
    token set) a loopback peer addressing the server by a loopback name."""
    token = request.app[CONFIG].token
    if token is None:
        return loopback_peer(request) and is_loopback_host(_host_name(request.host))
    given = bearer(request)
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser, or a same-origin GET
    return urlsplit(origin).netloc.lower() == request.host.lower()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host, peer, Origin and token checks (rules in the module docstring)."""
    config = request.app[CONFIG]
    token = config.token
    path = request.path
    if config.open_reads and any(check(request) for check in config.open_read_checks):
        return await handler(request)
    local = is_loopback_host(_host_name(request.host)) and loopback_peer(request)
    if token is None and not local:
        raise ApiError(
            403,
            "this server only answers requests addressed to localhost/127.0.0.1 "
            "(it has no token); set one to serve other host names",
        )
    if (request.method not in ("GET", "HEAD", "OPTIONS") or path == WS_PATH) and not (
        _same_origin(request)
    ):
        raise ApiError(403, "cross-origin request refused")
    if token is not None and not _open_path(path):
        given = bearer(request)
        if given is None and path == WS_PATH:
            given = request.query.get("token")
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(
                401,
                "missing or wrong token: send 'Authorization: Bearer <token>'",
                {"WWW-Authenticate": 'Bearer realm="modelfetch"'},
            )
    return await handler(request)
