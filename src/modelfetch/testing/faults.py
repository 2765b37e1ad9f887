"""Faults a loopback origin can inject into its answers, and a URL nothing listens on."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Literal

FaultKind = Literal[
    "black_hole",
    "hang",
    "drop",
    "stall",
    "reset",
    "wrong_bytes",
    "truncated",
    "status",
    "too_many_requests",
    "html_error_page",
    "oversize",
    "redirect_loop",
    "redirect_to",
    "slow",
    "ignore_range",
]
"""Every kind of fault an origin knows how to inject."""

On = Literal["any", "resolve", "cdn"]
"""Which hub requests a fault targets: the `/resolve/` URL, the `/cdn/` URL, or both."""

OversizeLength = Literal["none", "file", "sent"]
"""What `Content-Length` an oversize answer announces: none, the file's size, or what is sent."""

FaultLevel = Literal["connection", "request", "body"]
"""Where a fault acts: on a connection before any request is read, on the whole answer to a
request, or on the body of a GET that sends file bytes (never HEAD, redirects, error pages)."""

BODY_KINDS: frozenset[str] = frozenset(
    {"stall", "reset", "wrong_bytes", "truncated", "oversize", "slow", "ignore_range"}
)
"""The kinds that change how a body is sent."""
CONNECTION_KINDS: frozenset[str] = frozenset({"black_hole"})
"""The kinds that take a whole connection before its request is read."""

DEFAULT_HTML_ERROR_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Error 1020 | Access denied</title></head>\n"
    b'<body><div class="cf-error-details"><h1>Access denied</h1>'
    b"<p>The site owner may have set restrictions that prevent you from accessing this site."
    b"</p><p>Ray ID: 7f0c2b1e9d3a4c5b</p></div></body></html>\n"
)


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault; build it with the factory functions of this module (`stall(100)`, ...)."""

    kind: FaultKind
    after_bytes: int = 0
    status: int = 0
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    retry_after: float = 0.0
    extra_bytes: int = 0
    content_length: OversizeLength = "none"
    url: str = ""
    bytes_per_sec: int = 0
    at: int | None = None
    count: int = 1
    file_offset: int | None = None

    @property
    def level(self) -> FaultLevel:
        """Where the fault acts: "connection", "request" or "body" (see FaultLevel)."""
        if self.kind in CONNECTION_KINDS:
            return "connection"
        return "body" if self.kind in BODY_KINDS else "request"

    @property
    def body_level(self) -> bool:
        """True when the fault changes a file body (GET with bytes) rather than the whole answer."""
        return self.level == "body"

    def covers(self, start: int, end: int) -> bool:
        """Whether a body of the file range [start, end) is one this fault changes.

        Only a flip at a `file_offset` picks its ranges: the bodies overlapping its bytes.
        """
        if self.file_offset is None:
            return True
        return self.file_offset < end and self.file_offset + self.count > start


def _non_negative(name: str, value: int) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def black_hole() -> Fault:
    """Accept the TCP connection and never read or answer anything (until the server stops).

    It takes connections, not requests: the next `times` connections accepted are swallowed
    (a request never read cannot match a `path`), whatever the client sends on them.
    """
    return Fault("black_hole")


def hang() -> Fault:
    """Accept the connection, read the request, never answer (until the client or server leaves)."""
    return Fault("hang")


def drop() -> Fault:
    """Read the request, then close the connection without sending any answer."""
    return Fault("drop")


def stall(after_bytes: int = 0) -> Fault:
    """Send headers (full Content-Length) and `after_bytes` body bytes, then nothing, kept open."""
    _non_negative("after_bytes", after_bytes)
    return Fault("stall", after_bytes=after_bytes)


def reset(after_bytes: int = 0) -> Fault:
    """Send headers and `after_bytes` body bytes, then abort the TCP connection (RST)."""
    _non_negative("after_bytes", after_bytes)
    return Fault("reset", after_bytes=after_bytes)


def wrong_bytes(at: int | None = None, count: int = 1, *, file_offset: int | None = None) -> Fault:
    """Send a body of the right length with `count` bytes flipped from body offset `at`.

    `at` None: from the middle of the body. With `file_offset` instead, the flipped bytes sit
    at that offset of the file, so only bodies whose range covers it are wrong (and use the
    fault up): one origin lying about one range of a file.
    """
    if at is not None:
        _non_negative("at", at)
    if file_offset is not None:
        _non_negative("file_offset", file_offset)
        if at is not None:
            raise ValueError("give wrong_bytes either a body offset `at` or a `file_offset`")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    return Fault("wrong_bytes", at=at, count=count, file_offset=file_offset)


def truncated(after_bytes: int) -> Fault:
    """Announce the full Content-Length, send `after_bytes` body bytes, close cleanly (FIN)."""
    _non_negative("after_bytes", after_bytes)
    return Fault("truncated", after_bytes=after_bytes)


def status(code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Fault:
    """Answer with HTTP status `code` (404, 500, 502, 503, ...), this body and these headers."""
    if not 100 <= code <= 599:
        raise ValueError(f"not an HTTP status: {code}")
    return Fault("status", status=code, body=body, headers=tuple((headers or {}).items()))


def too_many_requests(retry_after: float = 1.0) -> Fault:
    """Answer 429 Too Many Requests with `Retry-After: <retry_after>` (seconds)."""
    if retry_after < 0:
        raise ValueError(f"retry_after must be >= 0, got {retry_after}")
    return Fault("too_many_requests", status=429, retry_after=retry_after)


def html_error_page(status: int = 200, body: bytes = DEFAULT_HTML_ERROR_PAGE) -> Fault:
    """Answer with a CDN-style HTML error page (`text/html`), status 200 by default."""
    return Fault("html_error_page", status=status, body=body)


def oversize(extra_bytes: int = 1024, content_length: OversizeLength = "none") -> Fault:
    """Send the body plus `extra_bytes` zero bytes; `content_length` says what is announced.

    "none": no Content-Length, body ends when the connection closes; "sent": a consistent
    Content-Length of body + extra; "file": the file's own length, extra bytes follow anyway.
    """
    if extra_bytes < 1:
        raise ValueError(f"extra_bytes must be >= 1, got {extra_bytes}")
    return Fault("oversize", extra_bytes=extra_bytes, content_length=content_length)


def redirect_loop() -> Fault:
    """Answer 302 with a Location pointing at the very same URL."""
    return Fault("redirect_loop", status=302)


def redirect_to(url: str, status: int = 302) -> Fault:
    """Answer a redirect (302 by default) to `url`, e.g. an http URL for https->http tests."""
    if status not in (301, 302, 303, 307, 308):
        raise ValueError(f"not a redirect status: {status}")
    return Fault("redirect_to", status=status, url=url)


def slow(bytes_per_sec: int) -> Fault:
    """Send the body throttled to about `bytes_per_sec` (for progress and timeout tests)."""
    if bytes_per_sec < 1:
        raise ValueError(f"bytes_per_sec must be >= 1, got {bytes_per_sec}")
    return Fault("slow", bytes_per_sec=bytes_per_sec)


def ignore_range() -> Fault:
    """Answer 200 with the full body even when a Range was asked for."""
    return Fault("ignore_range")


_held_sockets: list[socket.socket] = []
_held_lock = threading.Lock()


def unused_url() -> str:
    """Return `http://127.0.0.1:<port>` of a port held bound but not listening: it refuses."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    # Bound, never listening: connections get ECONNREFUSED and no one else can take the port.
    with _held_lock:
        _held_sockets.append(sock)
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


__all__ = [
    "BODY_KINDS",
    "CONNECTION_KINDS",
    "DEFAULT_HTML_ERROR_PAGE",
    "Fault",
    "FaultKind",
    "FaultLevel",
    "On",
    "OversizeLength",
    "black_hole",
    "drop",
    "hang",
    "html_error_page",
    "ignore_range",
    "oversize",
    "redirect_loop",
    "redirect_to",
    "reset",
    "slow",
    "stall",
    "status",
    "too_many_requests",
    "truncated",
    "unused_url",
    "wrong_bytes",
]
