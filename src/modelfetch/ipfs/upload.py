"""A multipart/form-data request body that streams a model's files and survives an early answer.

Why not `aiohttp.FormData` with open files: aiohttp closes the request body (and the files
it was given) as soon as the response headers arrive. kubo and js-ipfs answer `/api/v0/add`
with `200` and stream NDJSON while they still read the upload, so on a busy machine a file
was closed under aiohttp's writer, the write error was swallowed, the node waited for the
rest of the body and the client for the rest of the answer: a 5-minute hang. This payload
opens each file itself inside `write()` and ignores `close()`, so nothing it needs can be
closed from outside; if it cannot send every byte it promised, it drops the connection so
the reader fails at once instead of waiting for the stall timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import quote

import aiohttp
from aiohttp.abc import AbstractStreamWriter

from ..errors import ConfigError, StorageError

CHUNK: Final = 1 << 20


@dataclass(frozen=True)
class Part:
    """One form field: a file streamed from `path` (of `size` bytes), or a small `data` value."""

    name: str
    content_type: str
    filename: str | None = None
    path: Path | None = None
    size: int = 0
    data: bytes = b""

    @property
    def length(self) -> int:
        return self.size if self.path is not None else len(self.data)


def _disposition(part: Part, *, quote_filenames: bool) -> str:
    value = f'form-data; name="{part.name}"'
    if part.filename is None:
        return value
    if quote_filenames:
        # as Go's mime/multipart and kubo's own client do: "/" travels as %2F
        return f'{value}; filename="{quote(part.filename, safe="")}"'
    if any(c in part.filename for c in '"\\') or not part.filename.isprintable():
        raise ConfigError(f"cannot send file name {part.filename!r} unquoted: rename the file")
    return f'{value}; filename="{part.filename}"'


class MultipartUpload(aiohttp.Payload):
    """The parts as one `multipart/form-data` body of known length (so: Content-Length)."""

    def __init__(self, parts: Sequence[Part], *, quote_filenames: bool = True) -> None:
        self.boundary = uuid.uuid4().hex
        super().__init__(None, content_type=f"multipart/form-data; boundary={self.boundary}")
        self._parts = tuple(parts)
        self._heads = [
            (
                f"--{self.boundary}\r\n"
                f"Content-Disposition: {_disposition(p, quote_filenames=quote_filenames)}\r\n"
                f"Content-Type: {p.content_type}\r\n\r\n"
            ).encode()
            for p in self._parts
        ]
        self._tail = f"--{self.boundary}--\r\n".encode()
        self._size = sum(
            len(h) + p.length + 2 for h, p in zip(self._heads, self._parts, strict=True)
        ) + len(self._tail)
        #: Why the body could not be sent in full (the caller reports this, not the
        #: connection error it caused).
        self.error: StorageError | None = None

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return f"<multipart upload: {len(self._parts)} parts, {self._size} bytes>"

    async def close(self) -> None:
        """Nothing to release: files are opened and closed inside `write()` (see module doc)."""

    async def write(self, writer: AbstractStreamWriter) -> None:
        try:
            for head, part in zip(self._heads, self._parts, strict=True):
                await writer.write(head)
                if part.path is None:
                    await writer.write(part.data)
                else:
                    await _send_file(writer, part)
                await writer.write(b"\r\n")
            await writer.write(self._tail)
        except StorageError as exc:
            self.error = exc
            _drop_connection(writer)
            raise

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        await self.write(writer)  # our length is exact, so no constraint applies


async def _send_file(writer: AbstractStreamWriter, part: Part) -> None:
    assert part.path is not None
    try:
        f = await asyncio.to_thread(open, part.path, "rb")
    except OSError as exc:
        raise StorageError(f"cannot read {part.path} for upload: {exc.strerror}") from None
    sent = 0
    try:
        while sent < part.size:
            try:
                chunk = await asyncio.to_thread(f.read, min(CHUNK, part.size - sent))
            except OSError as exc:
                raise StorageError(f"cannot read {part.path}: {exc.strerror}") from None
            if not chunk:
                raise StorageError(
                    f"{part.path} shrank during the upload ({sent} of {part.size} bytes): "
                    "leave the model's files alone while publishing, then try again"
                )
            await writer.write(chunk)
            sent += len(chunk)
    finally:
        f.close()


def _drop_connection(writer: AbstractStreamWriter) -> None:
    """Close the socket under a short body, so the server and our reader fail now."""
    transport = getattr(writer, "transport", None)
    if transport is not None:
        with contextlib.suppress(Exception):
            transport.abort()
