"""Small HTTP GETs for the hub API on the standard library: keep-alive, proxies, redirects, retries.

Not aiohttp, on purpose: hub API answers are small JSON documents, and `import aiohttp` alone
costs more than an all-cached `pull` may take. `http.client` is imported on the first request.
Blocking work runs in worker threads (`asyncio.to_thread`); waits between tries are asyncio
sleeps, so they hold no thread and can be cancelled.
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urljoin, urlsplit

from ._net import is_loopback_host
from .errors import (
    ConnectFailed,
    InsecureRedirect,
    InvalidHubAnswer,
    SourceError,
    Stalled,
    TooManyRedirects,
    Truncated,
)

if TYPE_CHECKING:
    import http.client

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})  # huggingface_hub's, utils/_http.py
MAX_REDIRECTS = 10
MAX_BODY = 64 << 20  # a tree page of 1000 entries is ~300 kB; refuse to buffer absurd answers
_IDLE_PER_ORIGIN = 4
_USER_AGENT = "modelfetch"

Origin = tuple[str, str, int]  # scheme, lowercase host, port


@dataclass(frozen=True)
class Answer:
    """One HTTP answer, read whole: status, headers (lowercase names), body, final URL."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str
    reason: str = ""


def origin_of(url: str) -> Origin:
    """(scheme, host, port) of a URL, the unit a token is bound to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds, leniently fractional, or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class HubHTTP:
    """GETs with doubling waits (honouring Retry-After) and a bearer token bound to one origin.

    `tries` counts every try (as `[huggingface] retries`); connection errors, timeouts and the
    statuses in RETRY_STATUSES are retried. The token goes only to `token_origin`: a redirect
    or a pagination link to any other host is followed without it.
    """

    def __init__(
        self,
        *,
        token: str | None,
        token_origin: Origin,
        timeout: float,
        connect_timeout: float,
        tries: int,
        backoff: float,
        max_backoff: float,
    ) -> None:
        self._token = token
        self._token_origin = token_origin
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.tries = max(1, tries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.requests = 0  # HTTP requests sent (every try and every redirect hop)
        self._lock = threading.Lock()
        self._idle: dict[tuple[Origin, str | None], list[http.client.HTTPConnection]] = {}

    def __repr__(self) -> str:
        return f"HubHTTP(token={'set' if self._token else None}, tries={self.tries})"

    # -- public -----------------------------------------------------------------------------

    async def get(
        self,
        url: str,
        headers: Mapping[str, str] | None = None,
        *,
        method: str = "GET",
        stop_at: Callable[[Answer], bool] | None = None,
    ) -> Answer:
        """GET (or HEAD) `url`, retried; the last answer is returned whatever its status.

        Redirects are followed, except one for which `stop_at(answer)` is true.
        """
        for attempt in range(self.tries):
            last = attempt + 1 == self.tries
            try:
                answer = await asyncio.to_thread(
                    self._get_following, url, dict(headers or {}), method, stop_at
                )
            except SourceError as exc:
                if not exc.retryable or last:
                    raise
                await _sleep(self._delay(attempt, None))
                continue
            if answer.status in RETRY_STATUSES and not last:
                await _sleep(self._delay(attempt, retry_after(answer.headers.get("retry-after"))))
                continue
            return answer
        raise AssertionError("unreachable")  # the loop returns or raises on its last try

    def token_sent_to(self, url: str) -> bool:
        """Whether a request to `url` carries the token."""
        return bool(self._token) and origin_of(url) == self._token_origin

    def close(self) -> None:
        """Close every idle keep-alive connection."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    # -- one try ----------------------------------------------------------------------------

    def _delay(self, attempt: int, asked: float | None) -> float:
        if asked is not None:
            return min(self.max_backoff, asked)
        return min(self.max_backoff, self.backoff * (2.0**attempt))

    def _get_following(
        self,
        url: str,
        headers: dict[str, str],
        method: str = "GET",
        stop_at: Callable[[Answer], bool] | None = None,
    ) -> Answer:
        """One try, following redirects (blocking; runs in a worker thread)."""
        for _ in range(MAX_REDIRECTS + 1):
            answer = self._get_once(url, headers, method)
            location = answer.headers.get("location")
            if answer.status not in (301, 302, 303, 307, 308) or not location:
                return answer
            if stop_at is not None and stop_at(answer):
                return answer
            target = urljoin(url, location)
            scheme = urlsplit(target).scheme.lower()
            if scheme not in ("http", "https"):
                raise InsecureRedirect(f"{url} redirected to a non-HTTP URL: {target}")
            if url.lower().startswith("https:") and scheme == "http":
                host = urlsplit(target).hostname or ""
                if not is_loopback_host(host):
                    raise InsecureRedirect(f"{url} redirected from HTTPS to plain HTTP: {target}")
            url = target
        raise TooManyRedirects(f"more than {MAX_REDIRECTS} redirects, last to {url}")

    def _get_once(self, url: str, headers: dict[str, str], method: str = "GET") -> Answer:
        import http.client

        parts = urlsplit(url)
        origin = origin_of(url)
        if origin[0] not in ("http", "https") or not origin[1]:
            raise ConnectFailed(f"not an http(s) URL: {url}")
        proxy = _proxy_for(origin)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        sent = {
            "Host": parts.netloc,
            "User-Agent": _USER_AGENT,
            "Accept": "application/json",
            "Accept-Encoding": "identity",
            **headers,
        }
        if self.token_sent_to(url):
            sent["Authorization"] = f"Bearer {self._token}"
        else:
            sent.pop("Authorization", None)
        if proxy is not None and origin[0] == "http":
            target = url  # a plain-HTTP proxy takes the absolute URL
            sent.update(_proxy_auth(urlsplit(proxy)))
        key = (origin, proxy)
        for fresh in (False, True):
            conn = None if fresh else self._take_idle(key)
            reused = conn is not None
            if conn is None:
                conn = self._connect(origin, proxy, url)
            with self._lock:
                self.requests += 1
            try:
                conn.request(method, target, headers=sent)
                resp = conn.getresponse()
                body = resp.read(MAX_BODY + 1)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                conn.close()
                if reused:
                    continue  # the server closed an idle keep-alive connection: reconnect
                raise ConnectFailed(f"{url}: the connection was closed: {exc}") from None
            except TimeoutError:
                conn.close()
                raise Stalled(f"{url}: no answer within {self.timeout:g} s") from None
            except http.client.IncompleteRead as exc:
                conn.close()
                raise Truncated(
                    f"{url}: the answer ended after {len(exc.partial):,} bytes"
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise ConnectFailed(f"{url}: {_reason(exc)}") from None
            if len(body) > MAX_BODY:
                conn.close()
                raise InvalidHubAnswer(f"{url}: the answer is larger than {MAX_BODY:,} bytes")
            declared = resp.getheader("Content-Length", "")
            if method != "HEAD" and declared.isdigit() and int(declared) != len(body):
                # read(amt) returns what arrived before the server closed, without an error
                conn.close()
                raise Truncated(f"{url}: the answer ended after {len(body):,} of {declared} bytes")
            answer = Answer(
                status=resp.status,
                headers={k.lower(): v for k, v in resp.getheaders()},
                body=body,
                url=url,
                reason=resp.reason or "",
            )
            if resp.will_close:
                conn.close()
            else:
                self._put_idle(key, conn)
            return answer
        raise AssertionError("unreachable")

    def _connect(self, origin: Origin, proxy: str | None, url: str) -> http.client.HTTPConnection:
        import http.client

        scheme, host, port = origin
        via = urlsplit(proxy) if proxy is not None else None
        conn: http.client.HTTPConnection
        if scheme == "https":
            import ssl

            context = ssl.create_default_context()
            if via is not None:
                conn = http.client.HTTPSConnection(
                    via.hostname or "",
                    via.port or 80,
                    timeout=self.connect_timeout,
                    context=context,
                )
                conn.set_tunnel(host, port, headers=_proxy_auth(via))
            else:
                conn = http.client.HTTPSConnection(
                    host, port, timeout=self.connect_timeout, context=context
                )
        elif via is not None:
            conn = http.client.HTTPConnection(
                via.hostname or "", via.port or 80, timeout=self.connect_timeout
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.connect_timeout)
        try:
            conn.connect()
        except TimeoutError:
            conn.close()
            raise ConnectFailed(
                f"{url}: could not connect within {self.connect_timeout:g} s"
            ) from None
        except OSError as exc:
            conn.close()
            error = ConnectFailed(f"{url}: could not connect: {_reason(exc)}")
            if type(exc).__name__ == "SSLCertVerificationError":
                error.retryable = False  # trying again will not fix a certificate
            raise error from None
        if conn.sock is not None:
            conn.sock.settimeout(self.timeout)
        return conn

    def _take_idle(self, key: tuple[Origin, str | None]) -> http.client.HTTPConnection | None:
        with self._lock:
            conns = self._idle.get(key)
            return conns.pop() if conns else None

    def _put_idle(self, key: tuple[Origin, str | None], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            conns = self._idle.setdefault(key, [])
            if len(conns) < _IDLE_PER_ORIGIN:
                conns.append(conn)
                return
        conn.close()


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def _proxy_for(origin: Origin) -> str | None:
    """The proxy URL the environment gives for this origin (as urllib and aiohttp read it)."""
    scheme, host, port = origin
    if is_loopback_host(host):
        return None
    if not any(k.lower() in _PROXY_VARS for k in os.environ):
        return None  # the common case: no proxy, and no urllib.request import
    import urllib.request

    proxies: Mapping[str, Any] = urllib.request.getproxies_environment()
    proxy = proxies.get(scheme) or proxies.get("all")
    bypass = getattr(urllib.request, "proxy_bypass_environment")  # noqa: B009 (not in typeshed)
    if not proxy or bypass(f"{host}:{port}", proxies):
        return None
    return str(proxy) if "://" in str(proxy) else f"http://{proxy}"


def _proxy_auth(via: Any) -> dict[str, str]:
    if not via.username:
        return {}
    pair = f"{unquote(via.username)}:{unquote(via.password or '')}".encode()
    return {"Proxy-Authorization": "Basic " + base64.b64encode(pair).decode()}
