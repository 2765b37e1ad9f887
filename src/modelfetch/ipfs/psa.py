"""Pinning with a Pinning Service API (IPFS Pinning Services spec): pin by CID, poll to pinned."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp

from ..errors import (
    ConfigError,
    ConnectFailed,
    HTTPStatus,
    ModelfetchError,
    SourceError,
    Stalled,
)
from .pinning import (
    MAX_POLL_INTERVAL,
    Auth,
    display_url,
    error_text,
    request,
    require_same,
    same_cid,
)

if TYPE_CHECKING:
    from .publish import LocalModel

log = logging.getLogger(__name__)


async def psa_pin(
    session: aiohttp.ClientSession,
    base: str,
    auth: Auth,
    local: LocalModel,
    origins: Sequence[str],
    *,
    pin_timeout: float,
    poll_interval: float,
    io_timeout: float,
) -> tuple[str, str, tuple[str, ...]]:
    """Ask the service to pin the CID (reusing a request it already has), wait for `pinned`."""
    shown = display_url(base)
    deadline = time.monotonic() + pin_timeout
    request_timeout = min(io_timeout, 60.0)
    status = await _psa_existing(session, base, auth, local, request_timeout)
    if status is None:
        body: dict[str, Any] = {
            "cid": local.cid,
            "name": local.spec.name,
            "meta": {
                "model": local.spec.name,
                "type": local.spec.type,
                "files": str(len(local.files)),
            },
        }
        if origins:
            body["origins"] = list(origins)
        async with request(
            session,
            "POST",
            f"{base}/pins",
            f"pinning service {shown} POST /pins",
            auth,
            timeout=request_timeout,
            json=body,
        ) as resp:
            status = _pin_status(await resp.text(), f"pinning service {shown}")
    request_id = str(status["requestid"])
    delegates = tuple(str(d) for d in status.get("delegates") or ())
    require_same(local, str(status.get("pin", {}).get("cid", "")), f"pinning service {shown}")
    interval = max(poll_interval, 0.01)
    state = str(status.get("status"))
    what = f"pinning service {shown} GET /pins/{request_id}"
    while state != "pinned":
        if state == "failed":
            info = status.get("info") or {}
            detail = f": {json.dumps(info)}" if info else ""
            raise SourceError(
                auth.redact(
                    f"pinning service {shown}: pin request {request_id} for {local.cid} "
                    f"failed{detail}; could it fetch the content? (--origin)"
                )
            )
        if state not in ("queued", "pinning"):
            raise SourceError(f"{what}: unknown pin status {state!r}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise Stalled(
                f"pinning service {shown}: pin request {request_id} for {local.cid} is still "
                f"{state} after {pin_timeout:g} s; the service keeps trying (check GET "
                f"/pins/{request_id}). It must fetch the content from an IPFS node that has it: "
                "pass that node's addresses with --origin and keep it online"
            )
        await asyncio.sleep(min(interval, left))
        interval = min(interval * 1.5, MAX_POLL_INTERVAL)
        try:
            async with request(
                session,
                "GET",
                f"{base}/pins/{quote(request_id, safe='')}",
                what,
                auth,
                timeout=request_timeout,
            ) as resp:
                status = _pin_status(await resp.text(), what)
        except (ConnectFailed, Stalled) as exc:
            log.debug("%s: %s (will ask again)", what, exc)
            continue
        except HTTPStatus as exc:
            if not exc.retryable:
                raise
            log.debug("%s: %s (will ask again)", what, exc)
            continue
        state = str(status.get("status"))
        log.debug("%s: %s", what, state)
    return str(status.get("pin", {}).get("cid", local.cid)), request_id, delegates


async def _psa_existing(
    session: aiohttp.ClientSession, base: str, auth: Auth, local: LocalModel, timeout: float
) -> dict[str, Any] | None:
    """A pin request the service already has for this CID (so a re-run adds no duplicate)."""
    what = f"pinning service {display_url(base)} GET /pins"
    try:
        async with request(
            session,
            "GET",
            f"{base}/pins",
            what,
            auth,
            timeout=timeout,
            params={"cid": local.cid, "status": "queued,pinning,pinned"},
        ) as resp:
            listing = json.loads(await resp.text())
    except ConfigError:
        raise  # rejected credentials: POST would fail the same way
    except (ModelfetchError, ValueError) as exc:
        log.debug("%s: %s (asking for a new pin)", what, exc)
        return None
    results = listing.get("results") if isinstance(listing, dict) else None
    for item in results or ():
        if (
            isinstance(item, dict)
            and "requestid" in item
            and isinstance(item.get("pin"), dict)
            and same_cid(str(item["pin"].get("cid", "")), local.root.cid)
        ):
            return item
    return None


def _pin_status(body: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict) or "requestid" not in data or "status" not in data:
        raise SourceError(f"{what}: not a PinStatus: {error_text(body)}")
    if not isinstance(data.get("pin"), dict):
        data["pin"] = {}
    return data
