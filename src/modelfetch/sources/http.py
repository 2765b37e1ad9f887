"""HTTP GET/HEAD with checked redirects, ranges and errors translated to modelfetch's."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin, urlsplit

import aiohttp

from .._net import is_loopback_url
from ..errors import (
    ConnectFailed,
    HTTPStatus,
    InsecureRedirect,
    SourceError,
    Stalled,
    TooManyRedirects,
)

MAX_REDIRECTS = 10
USER_AGENT = "modelfetch/0.1"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

# Turns a failed response into the sentence the user reads (which hub error, what to do).
DescribeError = Callable[[aiohttp.ClientResponse], str]


def default_description(resp: aiohttp.ClientResponse) -> str:
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
    """A response body read in chunks; network errors become SourceErrors."""

    def __init__(self, resp: aiohttp.ClientResponse, offset: int, stall_timeout: float) -> None:
        self._resp = resp
        self.url = str(resp.url)
        self.offset = offset
        self.length = resp.content_length
        self.content_type = resp.headers.get("Content-Type", "").lower()
        self._stall_timeout = stall_timeout

    async def chunks(self) -> AsyncIterator[bytes]:
        watchdog = _StallWatchdog(self._stall_timeout)
        try:
            while True:
                with watchdog.waiting():
                    chunk, _ = await self._resp.content.readchunk()
                if not chunk:
                    return
                yield chunk
        except asyncio.CancelledError:
            if watchdog.claim_cancellation():
                raise Stalled(f"no bytes for {self._stall_timeout:g} s from {self.url}") from None
            raise
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError) as exc:
            why = _why(exc)
            raise ConnectFailed(f"connection broken mid-body from {self.url}: {why}") from None
        finally:
            watchdog.stop()

    def close(self) -> None:
        self._resp.close()


class _StallWatchdog:
    """Cancels the reading task after `timeout` s spent waiting for bytes without any.

    One lazily re-armed timer instead of a new one per chunk: at gigabytes per second a
    per-chunk timer costs more than the hashing. Time spent away from the network (a slow
    disk downstream) does not count as a stall.
    """

    def __init__(self, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._timeout = timeout
        self._since = self._loop.time()
        self._waiting = False
        self.fired = False
        self._handle = self._loop.call_at(self._since + timeout, self._check)

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        self._since = self._loop.time()
        self._waiting = True
        try:
            yield
        finally:
            self._waiting = False

    def claim_cancellation(self) -> bool:
        """True when the cancellation being handled is this watchdog's (and undo it)."""
        if not self.fired or self._task is None:
            return False
        self._task.uncancel()
        return True

    def _check(self) -> None:
        now = self._loop.time()
        if self._waiting and now - self._since >= self._timeout and self._task is not None:
            self.fired = True
            self._task.cancel()
            return
        start = self._since if self._waiting else now
        self._handle = self._loop.call_at(start + self._timeout, self._check)

    def stop(self) -> None:
        self._handle.cancel()


def redirect_target(url: str, location: str) -> str:
    """Where a redirect from `url` leads; refuses a downgrade to plain HTTP off loopback."""
    target = urljoin(url, location)
    scheme = urlsplit(target).scheme
    if scheme not in ("http", "https"):
        raise InsecureRedirect(f"{url} redirected to {target}: not an http(s) URL")
    if url.startswith("https:") and scheme == "http" and not is_loopback_url(target):
        raise InsecureRedirect(f"{url} redirected to plain HTTP {target}: refused")
    return target


def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def _timeout(connect: float) -> aiohttp.ClientTimeout:
    # Waiting for the answer and for body bytes is bounded by the stall timeout, enforced
    # in `_send` and `HTTPByteStream.chunks` (cheaper than aiohttp's per-read timer).
    return aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect)


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
            target = redirect_target(url, location)
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
    # No answer within the stall timeout is a stall, as is a body that stops; connecting
    # has its own, normally shorter, limit inside that one.
    try:
        async with asyncio.timeout(stall_timeout):
            return await session.request(
                method,
                url,
                headers=headers,
                allow_redirects=False,
                timeout=_timeout(min(connect_timeout, stall_timeout)),
                auto_decompress=False,
            )
    except aiohttp.ConnectionTimeoutError:
        raise ConnectFailed(f"no connection to {_host(url)} within {connect_timeout:g} s") from None
    except TimeoutError:
        raise Stalled(f"no answer from {_host(url)} for {stall_timeout:g} s") from None
    except aiohttp.ClientConnectorError as exc:
        why = (
            "connection refused"
            if isinstance(exc.os_error, ConnectionRefusedError)
            else (_why(exc.os_error))
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
