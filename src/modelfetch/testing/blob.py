"""What a loopback origin serves: file contents (memory or disk) and the byte ranges asked."""

from __future__ import annotations

import http
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20  # bytes per write when streaming from memory or reading a file


@dataclass(frozen=True, slots=True)
class Blob:
    """File contents served by an origin: bytes in memory or a file on disk."""

    data: bytes | None
    path: Path | None
    size: int

    @classmethod
    def of(cls, source: bytes | Path) -> Blob:
        """Wrap bytes or a path (its size is read now)."""
        if isinstance(source, Path):
            return cls(None, source, source.stat().st_size)
        return cls(bytes(source), None, len(source))

    def chunks(self, start: int, end: int, size: int = CHUNK) -> Iterator[bytes]:
        """Yield the bytes [start, end) in pieces of at most `size`."""
        if self.data is not None:
            view = memoryview(self.data)
            for pos in range(start, end, size):
                yield bytes(view[pos : min(pos + size, end)])
            return
        assert self.path is not None
        with self.path.open("rb") as f:
            f.seek(start)
            left = end - start
            while left > 0:
                piece = f.read(min(size, left))
                if not piece:
                    return
                left -= len(piece)
                yield piece

    def windows(self, start: int, end: int) -> Iterator[bytes | memoryview]:
        """Like `chunks`, without copying bytes held in memory (views of them)."""
        if self.data is None:
            yield from self.chunks(start, end)
            return
        view = memoryview(self.data)
        for pos in range(start, end, CHUNK):
            yield view[pos : min(pos + CHUNK, end)]


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """Parse a single `bytes=` range into [start, end); None = serve all; "416" = unsatisfiable."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # unknown unit or several ranges: ignoring Range is allowed (RFC 9110)
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0:
                return "416"
            return (max(0, size - suffix), size)
        start = int(first)
        end = size if last == "" else min(int(last) + 1, size)
    except ValueError:
        return None
    if start >= size or end <= start:
        return "416"
    return (start, end)


def raw_head(status: int, headers: Mapping[str, str]) -> bytes:
    """Serialize an HTTP/1.1 status line and headers (for answers aiohttp would not send)."""
    reason = http.HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


__all__ = ["CHUNK", "Blob", "parse_range", "raw_head"]
