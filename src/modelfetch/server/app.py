"""The aiohttp application: routes under /gm, the JSON-error middleware, running it.

Who may ask what (bind rule, Host/Origin checks, tokens, `--open-reads`) is in `auth`.
With `mirror=True` the Hugging Face read API of `mirror/` is added beside /gm.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest

from .._net import is_loopback_host
from ..config import Settings
from ..errors import ConfigError, ModelfetchError, UnknownModel
from ..records import Records
from ..scores import Scores, with_scores
from .auth import CONFIG, ApiError, Handler, ServerConfig, check_bind, guard_middleware
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


DOWNLOADS = web.AppKey("modelfetch_downloads", Downloads)
BROADCASTER = web.AppKey("modelfetch_broadcaster", Broadcaster)
METRICS = web.AppKey("modelfetch_metrics", ServerMetrics)


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


# -- middlewares -------------------------------------------------------------------------


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

    def health() -> dict[str, Any]:  # with each gateway's score, ttfb_ms, throughput_bps
        return with_scores(records.health(), Scores.load(records))

    return web.json_response(await asyncio.to_thread(health))


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
    settings: Settings,
    *,
    token: str | None = None,
    mirror: bool = False,
    open_reads: bool = False,
) -> web.Application:
    """The service as an aiohttp application (a Fetcher is created at startup).

    `token`: when set, requests need `Authorization: Bearer <token>` (see `auth`).
    `mirror`: also serve the store as a Hugging Face hub (`mirror.add_mirror`) and as a
    trustless IPFS gateway (`gateway.add_gateway`);
    `open_reads`: its read routes answer without a token (needs `mirror`).

    Example::

        app = create_app(load_settings(), token=None)
        web.run_app(app, host="127.0.0.1", port=8765)  # or run_server(...)
    """
    if token is not None and not token.strip():
        raise ConfigError("the token is empty: set a long random secret, or none")
    if open_reads and not mirror:
        raise ConfigError("--open-reads opens the mirror's read routes: it needs --mirror")
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

    app.cleanup_ctx.append(_downloads_lifecycle)
    if mirror:
        from .gateway import add_gateway
        from .mirror import add_mirror

        add_mirror(app, settings, open_reads=open_reads)
        add_gateway(app, settings)  # the trustless IPFS gateway, under /ipfs/
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
    mirror: bool = False,
    open_reads: bool = False,
) -> None:
    """Serve until `stop` is set, SIGINT or SIGTERM; then close clients and downloads."""
    check_bind(host, token, open_reads=open_reads and mirror)
    app = create_app(settings, token=token, mirror=mirror, open_reads=open_reads)
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
    mirror: bool = False,
    open_reads: bool = False,
) -> None:
    """Run the service in the foreground until Ctrl-C or SIGTERM (blocking).

    Raises ConfigError before binding when `host` is not loopback and there is no token
    (unless `mirror` and `open_reads`), or when the address cannot be bound.
    """
    check_bind(host, token, open_reads=open_reads and mirror)
    asyncio.run(
        serve(settings, host, port, token, on_ready=on_ready, mirror=mirror, open_reads=open_reads)
    )


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
