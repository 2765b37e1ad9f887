"""The aiohttp application: routes under /gm, auth and JSON-error middleware, running it.

Auth rules
----------
- Without a token the server only listens on loopback (`run_server` refuses anything
  else) and, against DNS rebinding, answers only requests whose `Host` is a loopback name
  or address (403 otherwise).
- With a token (`--token` or `MODELFETCH_TOKEN`), every endpoint except the page `/gm/`
  and `/gm/static/` needs `Authorization: Bearer <token>` (401 otherwise): the REST API,
  the WebSocket and `/metrics`. A WebSocket may pass it as `?token=<token>` instead,
  since browsers cannot set headers on one. Tokens are compared in constant time.
- Mutating requests (POST) and WebSocket handshakes that carry an `Origin` header from
  another site are refused (403): a web page cannot drive the service from a browser.
- The token is never logged: the access log prints the path without the query string and
  no headers, and it never reaches the engine or the records.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest

from .._net import is_loopback_host
from ..config import Settings
from ..errors import ConfigError, ModelfetchError, UnknownModel
from ..records import Records
from .broadcast import Broadcaster
from .downloads import Downloads
from .params import parse_layer, parse_limit, parse_since
from .prometheus import ServerMetrics

log = logging.getLogger(__name__)
access_log = logging.getLogger("modelfetch.server.access")

BASE = "/gm"
API = f"{BASE}/api"
WS_PATH = f"{API}/ws"
STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY = 64 * 1024
FLUSH_TIMEOUT = 2.0  # s to wait for queued records before answering a metrics query


@dataclass(frozen=True)
class ServerConfig:
    """What the middlewares need to know."""

    token: str | None


CONFIG = web.AppKey("modelfetch_config", ServerConfig)
DOWNLOADS = web.AppKey("modelfetch_downloads", Downloads)
BROADCASTER = web.AppKey("modelfetch_broadcaster", Broadcaster)
METRICS = web.AppKey("modelfetch_metrics", ServerMetrics)


class ApiError(Exception):
    """An expected error answered as `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


# -- host checks -------------------------------------------------------------------------


def _host_name(host_header: str) -> str:
    """The host of a `Host` header value, without the port."""
    value = host_header.strip()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def check_bind(host: str, token: str | None) -> None:
    """Refuse (ConfigError) to listen beyond loopback without a token."""
    if not is_loopback_host(host) and not token:
        raise ConfigError(
            f"refusing to listen on {host!r}: it is not a loopback address and no token is "
            "set. Set MODELFETCH_TOKEN (or --token) to a long random secret; clients then "
            "send 'Authorization: Bearer <token>'. Or keep the default --host 127.0.0.1."
        )


# -- middlewares -------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as JSON `{"error": ...}`; unexpected ones are 500 and logged."""
    try:
        return await handler(request)
    except ApiError as exc:
        return json_error(exc.status, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kept = {k: v for k, v in exc.headers.items() if k.lower() not in _BODY_HEADERS}
        return json_error(exc.status, exc.reason, kept)
    except UnknownModel as exc:
        return json_error(404, str(exc))
    except ModelfetchError as exc:
        log.warning("%s %s: %s", request.method, request.path, exc)
        return json_error(500, str(exc))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("internal error answering %s %s", request.method, request.path)
        return json_error(500, "internal error")


_BODY_HEADERS = {"content-type", "content-length", "content-encoding", "transfer-encoding"}


def _open_path(path: str) -> bool:
    """Paths served without a token: the page and its static files (no data in them)."""
    return path in (BASE, f"{BASE}/") or path.startswith(f"{BASE}/static/")


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser, or a same-origin GET
    return urlsplit(origin).netloc.lower() == request.host.lower()


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host, Origin and token checks (rules in the module docstring)."""
    token = request.app[CONFIG].token
    path = request.path
    if token is None and not is_loopback_host(_host_name(request.host)):
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
        given = _bearer(request)
        if given is None and path == WS_PATH:
            given = request.query.get("token")
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(
                401,
                "missing or wrong token: send 'Authorization: Bearer <token>'",
                {"WWW-Authenticate": 'Bearer realm="modelfetch"'},
            )
    return await handler(request)


class SafeAccessLogger(AbstractAccessLogger):
    """Access log lines without query strings or headers (a `?token=` never shows)."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %s %.3fs',
            request.remote,
            request.method,
            request.path,
            response.status,
            response.body_length,
            time,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


# -- handlers ----------------------------------------------------------------------------


async def index(request: web.Request) -> web.StreamResponse:
    page = STATIC_DIR / "index.html"
    if await asyncio.to_thread(page.is_file):
        return web.FileResponse(page, headers=_PAGE_HEADERS)
    return web.Response(text=_PLACEHOLDER, content_type="text/html", headers=_PAGE_HEADERS)


async def redirect_to_index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(f"{BASE}/")


async def list_models(request: web.Request) -> web.StreamResponse:
    return web.json_response({"models": await request.app[DOWNLOADS].models()})


async def one_model(request: web.Request) -> web.StreamResponse:
    (model,) = await request.app[DOWNLOADS].models([request.match_info["name"]])
    return web.json_response(model)


async def start_download(request: web.Request) -> web.StreamResponse:
    downloads = request.app[DOWNLOADS]
    name = request.match_info["name"]
    downloads.settings.model(name)  # unknown: 404 before the body is looked at
    await _read_options(request)
    status = downloads.start_download(name)
    return web.json_response(
        {"model": name, "status": status},
        status=202,
        headers={"Location": f"{API}/models/{name}"},
    )


async def _read_options(request: web.Request) -> dict[str, Any]:
    """The request body, if any: a JSON object with no fields known yet (400 otherwise)."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    if body:
        raise ApiError(400, f"unknown field(s) {sorted(body)}: this request takes none")
    return body


def _records(request: web.Request) -> Records:
    records = request.app[DOWNLOADS].records
    if records is None:
        raise ApiError(503, "download records are off (the records database could not be opened)")
    return records


async def _fresh(records: Records) -> None:
    """Let what the engine queued be written before reading (read-your-writes)."""
    await asyncio.to_thread(records.flush, FLUSH_TIMEOUT)


def _query(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    return value if value is not None and value.strip() else None


async def metrics_downloads(request: web.Request) -> web.StreamResponse:
    since: datetime | None = None
    layer: str | None = None
    limit: int | None = None
    try:
        if (text := _query(request, "since")) is not None:
            since = parse_since(text)
        if (text := _query(request, "layer")) is not None:
            layer = parse_layer(text)
        if (text := _query(request, "limit")) is not None:
            limit = parse_limit(text)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    records = _records(request)
    await _fresh(records)
    rows = await asyncio.to_thread(records.attempts, since, layer, limit)
    return web.json_response({"metrics": rows})


async def metrics_summary(request: web.Request) -> web.StreamResponse:
    records = _records(request)
    await _fresh(records)
    return web.json_response(await asyncio.to_thread(records.summary))


async def metrics_health(request: web.Request) -> web.StreamResponse:
    records = _records(request)
    await _fresh(records)
    return web.json_response(await asyncio.to_thread(records.health))


async def metrics_reset(request: web.Request) -> web.StreamResponse:
    records = _records(request)
    await asyncio.to_thread(records.reset)
    return web.json_response({"ok": True, "message": "Metrics reset"})


async def prometheus_metrics(request: web.Request) -> web.StreamResponse:
    body, content_type = request.app[METRICS].exposition(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def websocket(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(heartbeat=20.0, compress=False, max_msg_size=MAX_BODY, timeout=2.0)
    await ws.prepare(request)
    gauge = request.app[METRICS].ws_clients
    gauge.inc()
    try:
        await request.app[BROADCASTER].serve(request, ws, request.app[DOWNLOADS].snapshot)
    finally:
        gauge.dec()
    return ws


# -- the application ---------------------------------------------------------------------


def create_app(
    settings: Settings, *, token: str | None = None, mirror: bool = False
) -> web.Application:
    """The service as an aiohttp application (a Fetcher is created at startup).

    `token`: when set, requests need `Authorization: Bearer <token>` (see the module doc).
    `mirror`: also serve the store to other machines (the trustless gateway under /ipfs/).

    Example::

        app = create_app(load_settings(), token=None)
        web.run_app(app, host="127.0.0.1", port=8765)  # or run_server(...)
    """
    if token is not None and not token.strip():
        raise ConfigError("the token is empty: set a long random secret, or none")
    metrics = ServerMetrics()
    broadcaster = Broadcaster(on_drop=metrics.ws_dropped.inc)
    app = web.Application(
        middlewares=[error_middleware, guard_middleware],
        client_max_size=MAX_BODY,
        handler_args={"access_log_class": SafeAccessLogger, "access_log": access_log},
    )
    app[CONFIG] = ServerConfig(token.strip() if token else None)
    app[METRICS] = metrics
    app[BROADCASTER] = broadcaster
    app[DOWNLOADS] = Downloads(settings, broadcaster, metrics)

    router = app.router
    router.add_get(BASE, redirect_to_index)
    router.add_get(f"{BASE}/", index)
    if STATIC_DIR.is_dir():
        router.add_static(f"{BASE}/static/", STATIC_DIR)
    router.add_get(f"{API}/models", list_models)
    router.add_get(f"{API}/models/{{name}}", one_model)
    router.add_post(f"{API}/models/{{name}}/download", start_download)
    router.add_get(f"{API}/metrics/downloads", metrics_downloads)
    router.add_get(f"{API}/metrics/downloads/summary", metrics_summary)
    router.add_get(f"{API}/metrics/downloads/health", metrics_health)
    router.add_post(f"{API}/metrics/downloads/reset", metrics_reset)
    router.add_get(WS_PATH, websocket)
    router.add_get("/metrics", prometheus_metrics)
    if mirror:  # the trustless IPFS gateway over the store (`serve --mirror`)
        from .gateway import add_gateway

        add_gateway(app, settings)

    app.cleanup_ctx.append(_downloads_lifecycle)
    app.on_shutdown.append(_close_websockets)
    app.on_response_prepare.append(_static_headers)
    return app


async def _static_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The dashboard's files: revalidated on every load (an upgrade shows at once), no sniffing."""
    if request.path.startswith(f"{BASE}/static/"):
        response.headers.setdefault("Cache-Control", "no-cache")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")


async def _downloads_lifecycle(app: web.Application) -> AsyncIterator[None]:
    downloads = app[DOWNLOADS]
    await downloads.start()
    yield
    await downloads.close()


async def _close_websockets(app: web.Application) -> None:
    await app[BROADCASTER].close_all()


# -- running -----------------------------------------------------------------------------


def url_for(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}{BASE}/"


async def serve(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    *,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until `stop` is set, SIGINT or SIGTERM; then close clients and downloads."""
    check_bind(host, token)
    app = create_app(settings, token=token)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port"
            ) from None
        bound = runner.addresses[0][1] if runner.addresses else port
        url = url_for(host, bound)
        if not is_loopback_host(host):
            log.warning(
                "listening beyond loopback over plain HTTP: the token travels in clear; "
                "put a TLS reverse proxy in front for untrusted networks"
            )
        log.info("serving on %s (models dir %s)", url, settings.models_dir)
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
                handled.append(sig)
        if on_ready is not None:
            on_ready(url)
        await stop.wait()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def run_server(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    *,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the service in the foreground until Ctrl-C or SIGTERM (blocking).

    Raises ConfigError before binding when `host` is not loopback and there is no token,
    or when the address cannot be bound.
    """
    check_bind(host, token)
    asyncio.run(serve(settings, host, port, token, on_ready=on_ready))


_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

_PLACEHOLDER = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>modelfetch</title></head>
<body>
<h1>modelfetch</h1>
<p>The dashboard is not built yet. The API:</p>
<ul>
<li><a href="{API}/models">GET {API}/models</a> &mdash; models and their state</li>
<li>POST {API}/models/&lt;name&gt;/download &mdash; start (or join) a download</li>
<li><a href="{API}/metrics/downloads">GET {API}/metrics/downloads</a>
  [?since=&amp;layer=&amp;limit=] &mdash; recorded attempts</li>
<li><a href="{API}/metrics/downloads/summary">GET {API}/metrics/downloads/summary</a></li>
<li><a href="{API}/metrics/downloads/health">GET {API}/metrics/downloads/health</a></li>
<li>POST {API}/metrics/downloads/reset</li>
<li>WebSocket {WS_PATH} &mdash; a snapshot, then live progress events</li>
<li><a href="/metrics">GET /metrics</a> &mdash; Prometheus</li>
</ul>
</body></html>
"""
