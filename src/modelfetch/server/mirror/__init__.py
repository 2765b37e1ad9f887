"""`modelfetch serve --mirror`: the store as a Hugging Face hub for other machines.

`add_mirror(app, settings)` adds the hub's read API (resolve URLs, revision info, tree) over
the mirror's Hugging Face cache and the catalog models of its models dir, with pull-through
of what it lacks, and `GET /gm/api/mirror` (its figures). Every other machine then sets
`HF_ENDPOINT=http://this-machine:8765` or lists it under `[huggingface] mirrors`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

from aiohttp import web

from ...config import Settings
from ...hfcache import HFCache
from ...hfdest import Stamps
from ...hubtypes import RepoFile, RepoRef
from ...store import Store
from ..auth import CONFIG, has_token
from .answers import HubAnswer, gated, not_shown
from .holdings import Copy, Holdings
from .pullthrough import PullThrough, pull_file
from .routes import MirrorRequest, answer, parse
from .service import Mirror
from .stats import MirrorStats
from .upstream import Upstream

MIRROR = web.AppKey("modelfetch_mirror", Mirror)
ROUTES = (
    "/api/models/{tail:.+}",  # the info, revision and tree routes
    "/api/datasets/{tail:.+}",
    "/datasets/{tail:.+}",
    "/{org}/{name}/resolve/{tail:.+}",
    "/{name}/resolve/{tail:.+}",
)
_READ_METHODS = ("GET", "HEAD")

__all__ = ["MIRROR", "Mirror", "add_mirror"]


def add_mirror(
    app: web.Application,
    settings: Settings,
    *,
    open_reads: bool = False,
    hold: float | None = None,
    ref_ttl: float | None = None,
) -> Mirror:
    """Serve the Hugging Face read API on `app` (call before the app starts).

    `open_reads`: the read routes answer without the server's token. `hold` (s): how long
    a GET waits for a pull-through before a 429 with Retry-After; `ref_ttl` (s): how long
    a ref in the HF cache is used without asking upstream.
    """
    from ..app import DOWNLOADS, METRICS

    cache = HFCache(settings.huggingface.cache_dir)
    store = Store(settings.models_dir)
    holdings = Holdings(cache, store, list(settings.models.values()), Stamps(store.root))
    upstream = Upstream(settings.huggingface, store.state_dir)

    async def pull(repo: RepoRef, commit: str, f: RepoFile) -> int:
        return await pull_file(app[DOWNLOADS].fetcher, repo, commit, f)

    async def check(repo: RepoRef, f: RepoFile) -> Copy | None:
        return await mirror.copy(repo, f)

    pulls = PullThrough(pull, check)
    stats = MirrorStats(app[METRICS].registry, pulls)
    mirror = Mirror(holdings, upstream, pulls, stats)
    if hold is not None:
        mirror.hold = hold
    if ref_ttl is not None:
        mirror.ref_ttl = ref_ttl
    app[MIRROR] = mirror

    async def dispatch(request: web.Request) -> web.StreamResponse:
        try:
            m = parse(request.rel_url.raw_path)
        except HubAnswer as exc:
            return exc.response()
        if m is None:
            return HubAnswer(404, f"no such route: {request.path}").response()
        try:
            await _check_access(request, mirror, m)
        except HubAnswer as exc:
            stats.request(m.route, "refused", request.remote)
            return exc.response()
        return await answer(request, mirror, m)

    async def figures(request: web.Request) -> web.StreamResponse:
        return web.json_response(stats.snapshot())

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        yield
        await mirror.close()

    def is_mirror_read(request: web.Request) -> bool:
        """What `--open-reads` opens: a GET or HEAD routed to the mirror's read API (the
        route is resolved before the middlewares run, so no other handler can be reached)."""
        return request.method in _READ_METHODS and request.match_info.handler is dispatch

    config = app[CONFIG]
    app[CONFIG] = dataclasses.replace(
        config,
        open_reads=open_reads,
        open_read_checks=(*config.open_read_checks, is_mirror_read),
    )
    app.router.add_get("/gm/api/mirror", figures)
    for pattern in ROUTES:  # GET and HEAD; the raw path is parsed again by `parse`
        app.router.add_get(pattern, dispatch)
    app.cleanup_ctx.append(lifecycle)
    return mirror


async def _check_access(request: web.Request, mirror: Mirror, m: MirrorRequest) -> None:
    """Repos not known to be public upstream (gated, private, or unknown while upstream is
    down) are served only to a client with the server's token (or, with no token set, to a
    client on this machine)."""
    if has_token(request):
        return
    access = await mirror.upstream.access(m.repo, m.revision)
    if access == "gated":
        raise gated(str(m.repo), token_given=request.headers.get("Authorization") is not None)
    if access != "public":
        raise not_shown(str(m.repo))
