"""Requests as the sources make them: checked redirects, byte ranges, hub errors, retry waits."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin, urlsplit

from .._net import is_loopback_url
from ..errors import HTTPStatus, InsecureRedirect, SizeMismatch, SourceError, TooManyRedirects
from ..httpclient import Client, Response, Timeouts

MAX_REDIRECTS = 10
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

# Turns a failed response into the sentence the user reads (which hub error, what to do).
DescribeError = Callable[[Response], str]


def default_description(resp: Response) -> str:
    return f"HTTP {resp.status} {resp.reason or ''}".strip() + f" from {resp.url}"


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))  # RFC 9110 says whole seconds; be lenient
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class HTTPByteStream:
    """A response body read in the pieces it arrives in; network errors are SourceErrors."""

    def __init__(self, resp: Response, offset: int) -> None:
        self._resp = resp
        self.url = resp.url
        self.offset = offset
        self.length = resp.length
        self.content_type = resp.content_type

    def chunks(self) -> AsyncIterator[memoryview]:
        return self._resp.chunks()

    def close(self) -> None:
        self._resp.close()


def redirect_target(url: str, location: str) -> str:
    """Where a redirect from `url` leads; refuses a downgrade to plain HTTP off loopback."""
    target = urljoin(url, location)
    scheme = urlsplit(target).scheme
    if scheme not in ("http", "https"):
        raise InsecureRedirect(f"{url} redirected to {target}: not an http(s) URL")
    if url.startswith("https:") and scheme == "http" and not is_loopback_url(target):
        raise InsecureRedirect(f"{url} redirected to plain HTTP {target}: refused")
    return target


async def request(
    client: Client,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    connect_timeout: float,
    stall_timeout: float,
    follow: Callable[[Response], bool] | None = None,
    describe: DescribeError = default_description,
) -> Response:
    """Send a request, following safe redirects by hand; raise SourceError for errors.

    `follow(resp)` decides whether a redirect response is followed (default: always).
    The Authorization header is dropped when a redirect leaves the original host.
    """
    sent = dict(headers or {})
    origin_host = urlsplit(url).netloc
    timeouts = Timeouts(
        connect=min(connect_timeout, stall_timeout), answer=stall_timeout, stall=stall_timeout
    )
    for _ in range(MAX_REDIRECTS + 1):
        resp = await client.request(method, url, headers=sent, timeouts=timeouts)
        if resp.status in (301, 302, 303, 307, 308) and (follow is None or follow(resp)):
            location = resp.headers.get("Location")
            await resp.release()
            if not location:
                raise HTTPStatus(resp.status, f"redirect without a Location from {url}")
            target = redirect_target(url, location)
            if urlsplit(target).netloc != origin_host:
                sent.pop("Authorization", None)
            url = target
            continue
        if resp.status >= 400:
            message = describe(resp)
            wait = retry_after(resp.headers.get("Retry-After"))
            await resp.release()
            raise HTTPStatus(resp.status, message, retry_after=wait)
        return resp
    raise TooManyRedirects(f"more than {MAX_REDIRECTS} redirects, last to {url}")


async def open_range(
    client: Client,
    url: str,
    start: int,
    end: int | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    connect_timeout: float,
    stall_timeout: float,
    describe: DescribeError = default_description,
) -> HTTPByteStream:
    """GET bytes [start, end) of `url` (to the end when `end` is None).

    A server that ignores the Range answers 200 with the whole file: the stream's `offset`
    is then 0, and the caller decides what to do with bytes it did not ask for.
    """
    sent = {"Accept-Encoding": "identity", **(headers or {})}
    if start or end is not None:
        sent["Range"] = f"bytes={start}-" + ("" if end is None else str(end - 1))
    resp = await request(
        client,
        "GET",
        url,
        headers=sent,
        connect_timeout=connect_timeout,
        stall_timeout=stall_timeout,
        describe=describe,
    )
    offset = 0
    if resp.status == 206:
        content_range = (resp.headers.get("Content-Range") or "").strip()
        match = _CONTENT_RANGE.fullmatch(content_range)
        if not match or int(match.group(1)) != start:
            resp.close()
            raise HTTPStatus(502, f"{url} answered a Range request with a wrong Content-Range")
        if end is not None and int(match.group(2)) != end - 1:
            resp.close()  # its bytes end elsewhere: it holds another file than the one wanted
            raise SizeMismatch(
                f"{url} answered bytes {start}-{end - 1} with {content_range}: not this file"
            )
        offset = start
    elif resp.status != 200:
        await resp.release()
        raise HTTPStatus(resp.status, f"unexpected HTTP {resp.status} from {url}")
    return HTTPByteStream(resp, offset)


async def sleep_for_retry(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


def backoff_delay(attempt: int, error: SourceError, *, base: float, cap: float) -> float:
    """Doubling waits from `base`, or what Retry-After asks (both capped at `cap`)."""
    if isinstance(error, HTTPStatus) and error.retry_after is not None:
        return min(cap, error.retry_after)
    return min(cap, base * (2.0**attempt))
