"""A trustless IPFS gateway over the store: every verified model with a CID, block by block.

`add_gateway(app, settings)` adds `GET|HEAD /ipfs/{cid}[/{path}]` to an aiohttp app:

- `?format=raw` (or `Accept: application/vnd.ipld.raw`): one block, hash-checked;
- `?format=car` (or `Accept: application/vnd.ipld.car; version=1`): a CARv1 stream with
  `dag-scope` (`block`, `entity`, `all`) and `entity-bytes=from:to`, `dups=y|n`;
- anything else: the file's bytes (with `Range`), or an HTML listing of a directory;
- `/ipfs/bafkqaaa`: the empty identity CID, the probe gateways answer at once.

Every answer carries `X-Ipfs-Path`, `X-Ipfs-Roots`, an `Etag` and
`Cache-Control: public, max-age=29030400, immutable`. Blocks are read from the verified files
(leaves) or rebuilt with them (directory and file nodes), and hash-checked on the way out; a
file that no longer matches its stamp is not served. Auth is the app's: its middlewares run
first, and these are read routes, which `serve --mirror --open-reads` opens (what has a CID
was published to IPFS: it is public by nature).
"""

from __future__ import annotations

import dataclasses

from aiohttp import web

from ...config import Settings
from ..auth import CONFIG
from .dags import StoreDags
from .handlers import CACHE_CONTROL, DAGS, PROBE_CID, handle

#: Where the gateway's routes live (read routes, for the app's auth rules).
GATEWAY_PREFIX = "/ipfs/"


def is_gateway_path(path: str) -> bool:
    """Whether `path` is one of the gateway's (read-only) routes."""
    return path.startswith(GATEWAY_PREFIX)


def add_gateway(
    app: web.Application, settings: Settings, *, dags: StoreDags | None = None
) -> StoreDags:
    """Serve the store's models with a CID as a trustless gateway on `app` (see module doc).

    Returns the StoreDags behind it (which models are served, and why others are not).

    Example::

        app = create_app(settings)
        add_gateway(app, settings)
    """
    store_dags = dags if dags is not None else StoreDags(settings)
    app[DAGS] = store_dags

    def is_gateway_read(request: web.Request) -> bool:
        """A GET or HEAD routed to the gateway (what `--open-reads` opens)."""
        return request.method in ("GET", "HEAD") and request.match_info.handler is handle

    config = app[CONFIG]
    app[CONFIG] = dataclasses.replace(
        config, open_read_checks=(*config.open_read_checks, is_gateway_read)
    )
    app.router.add_get("/ipfs/{cid}", handle)
    app.router.add_get("/ipfs/{cid}/{path:.*}", handle)
    return store_dags


__all__ = [
    "CACHE_CONTROL",
    "GATEWAY_PREFIX",
    "PROBE_CID",
    "StoreDags",
    "add_gateway",
    "is_gateway_path",
]
