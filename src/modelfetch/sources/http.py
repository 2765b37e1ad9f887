"""HTTP GET/HEAD with checked redirects, ranges and errors translated to modelfetch's."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin, urlsplit

import aiohttp

from ..errors import (
    ConnectFailed,
    HTTPStatus,
    InsecureRedirect,
    SourceError,
    Stalled,
    TooManyRedirects,
)

MAX_REDIRECTS = 10
READ_CHUNK = 1 << 20
USER_AGENT = "modelfetch/0.1"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

# Turns a failed response into the sentence the user reads (which hub error, what to do).
DescribeError = Callable[[aiohttp.ClientResponse], str]


def default_description(resp: aiohttp.ClientResponse) -> str:
    return f"HTTP {resp.status} {resp.reason or ''}".strip() + f" from {resp.url}"


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class HTTPByteStream:
    """A response body read in chunks; network errors become SourceErrors."""

    def __init__(self, resp: aiohttp.ClientResponse, offset: int, stall_timeout: float) -> None:
        self._resp = resp
        self.url = str(resp.url)
        self.offset = offset
        self.length = resp.content_length
        self.content_type = resp.headers.get("Content-Type", "").lower()
        self._stall_timeout = stall_timeout

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except TimeoutError:
            raise Stalled(f"no bytes for {self._stall_timeout:g} s from {self.url}") from None
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError) as exc:
            raise ConnectFailed(
                f"connection broken mid-body from {self.url}: {_why(exc)}"
            ) from None

    def close(self) -> None:
        self._resp.close()


def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def _timeout(connect: float, stall: float) -> aiohttp.ClientTimeout:
    # sock_read covers both a server that never answers and one that stops mid-body.
    return aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect, sock_read=stall)


async def request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    connect_timeout: float,
    stall_timeout: float,
    follow: Callable[[aiohttp.ClientResponse], bool] | None = None,
    describe: DescribeError = default_description,
) -> aiohttp.ClientResponse:
    """Send a request, following safe redirects by hand; raise SourceError for errors.

    `follow(resp)` decides whether a redirect response is followed (default: always).
    The Authorization header is dropped when a redirect leaves the original host.
    """
    sent = dict(headers or {})
    sent.setdefault("User-Agent", USER_AGENT)
    origin_host = urlsplit(url).netloc
    for _ in range(MAX_REDIRECTS + 1):
        resp = await _send(session, method, url, sent, connect_timeout, stall_timeout)
        if resp.status in (301, 302, 303, 307, 308) and (follow is None or follow(resp)):
            location = resp.headers.get("Location")
            resp.release()
            if not location:
                raise HTTPStatus(resp.status, f"redirect without a Location from {url}")
            target = urljoin(url, location)
            if url.startswith("https:") and target.startswith("http:") and not is_loopback(target):
                raise InsecureRedirect(f"{url} redirected to plain HTTP {target}: refused")
            if urlsplit(target).scheme not in ("http", "https"):
                raise InsecureRedirect(f"{url} redirected to {target}: not an http(s) URL")
            if urlsplit(target).netloc != origin_host:
                sent.pop("Authorization", None)
            url = target
            continue
        if resp.status >= 400:
            message = describe(resp)
            wait = retry_after(resp.headers.get("Retry-After"))
            resp.release()
            raise HTTPStatus(resp.status, message, retry_after=wait)
        return resp
    raise TooManyRedirects(f"more than {MAX_REDIRECTS} redirects, last to {url}")


async def _send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: Mapping[str, str],
    connect_timeout: float,
    stall_timeout: float,
) -> aiohttp.ClientResponse:
    try:
        return await session.request(
            method,
            url,
            headers=headers,
            allow_redirects=False,
            timeout=_timeout(connect_timeout, stall_timeout),
            auto_decompress=False,
        )
    except aiohttp.ConnectionTimeoutError:
        raise ConnectFailed(f"no connection to {_host(url)} within {connect_timeout:g} s") from None
    except TimeoutError:
        raise Stalled(f"no answer from {_host(url)} for {stall_timeout:g} s") from None
    except aiohttp.ClientConnectorError as exc:
        why = "connection refused" if isinstance(exc.os_error, ConnectionRefusedError) else (
            _why(exc.os_error)
        )
        raise ConnectFailed(f"cannot connect to {_host(url)}: {why}") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise ConnectFailed(f"{_host(url)}: {_why(exc)}") from None


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


async def open_range(
    session: aiohttp.ClientSession,
    url: str,
    offset: int,
    *,
    headers: Mapping[str, str] | None = None,
    connect_timeout: float,
    stall_timeout: float,
    describe: DescribeError = default_description,
) -> HTTPByteStream:
    """GET `url` from byte `offset`; a server that ignores the Range restarts at 0."""
    sent = {"Accept-Encoding": "identity", **(headers or {})}
    if offset:
        sent["Range"] = f"bytes={offset}-"
    resp = await request(
        session,
        "GET",
        url,
        headers=sent,
        connect_timeout=connect_timeout,
        stall_timeout=stall_timeout,
        describe=describe,
    )
    start = 0
    if resp.status == 206:
        match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
        if not match or int(match.group(1)) != offset:
            resp.release()
            raise HTTPStatus(502, f"{url} answered a Range request with a wrong Content-Range")
        start = offset
    elif resp.status != 200:
        resp.release()
        raise HTTPStatus(resp.status, f"unexpected HTTP {resp.status} from {url}")
    return HTTPByteStream(resp, start, stall_timeout)


async def sleep_for_retry(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


def backoff_delay(attempt: int, error: SourceError, *, base: float, cap: float) -> float:
    """Doubling waits from `base`, or what Retry-After asks (both capped at `cap`)."""
    if isinstance(error, HTTPStatus) and error.retry_after is not None:
        return min(cap, error.retry_after)
    return min(cap, base * (2.0**attempt))
