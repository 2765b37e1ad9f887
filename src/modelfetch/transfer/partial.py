"""A file being received: sparse data written at offsets, and a control file of what is there.

`<key>.part` holds the bytes at their final offsets (ranges may arrive in any order);
`<key>.json` says what the file must become (size and hashes) and which byte ranges are on
disk, with the origin that sent each (so a file that fails verification can be traced to the
origin that lied). The control file is replaced atomically (temp + rename) and only ever
lists bytes already handed to the kernel, so a `kill -9` loses at most what was in memory.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..hashes import Identity
from ..manifest import write_json_atomic
from ..store import storage_error

log = logging.getLogger(__name__)

CONTROL_VERSION = 2


@dataclass(frozen=True)
class Span:
    """Bytes [start, end) on disk, sent by `origin` (None: kept from an older modelfetch)."""

    start: int
    end: int
    origin: str | None = None


class Spans:
    """Disjoint byte ranges, kept sorted; adjacent ranges from one origin are merged."""

    def __init__(self, spans: list[Span] | None = None) -> None:
        self._spans: list[Span] = []
        for span in spans or []:
            self.add(span.start, span.end, span.origin)

    def __iter__(self) -> Iterator[Span]:
        return iter(self._spans)

    def __len__(self) -> int:
        return len(self._spans)

    @property
    def total(self) -> int:
        return sum(s.end - s.start for s in self._spans)

    def add(self, start: int, end: int, origin: str | None) -> None:
        """Mark [start, end) as present (overlaps with what is there are not expected)."""
        if end <= start:
            return
        starts = [s.start for s in self._spans]
        i = bisect.bisect_left(starts, start)
        new = Span(start, end, origin)
        if i > 0 and self._spans[i - 1].end == start and self._spans[i - 1].origin == origin:
            new = Span(self._spans[i - 1].start, end, origin)
            i -= 1
            del self._spans[i]
        if i < len(self._spans) and self._spans[i].start == new.end:
            after = self._spans[i]
            if after.origin == origin:
                new = Span(new.start, after.end, origin)
                del self._spans[i]
        self._spans.insert(i, new)

    def contiguous_from(self, pos: int) -> int:
        """The end of the present bytes that start at `pos` (pos itself when none do)."""
        for span in self._spans:
            if span.start <= pos < span.end:
                pos = span.end
            elif span.start > pos:
                break
        return pos

    def by_origin(self) -> dict[str | None, list[tuple[int, int]]]:
        out: dict[str | None, list[tuple[int, int]]] = {}
        for span in self._spans:
            out.setdefault(span.origin, []).append((span.start, span.end))
        return out

    def remove(self, start: int, end: int) -> None:
        """Forget [start, end) (bytes found wrong)."""
        kept: list[Span] = []
        for s in self._spans:
            if s.end <= start or s.start >= end:
                kept.append(s)
                continue
            if s.start < start:
                kept.append(Span(s.start, start, s.origin))
            if s.end > end:
                kept.append(Span(end, s.end, s.origin))
        self._spans = kept

    def to_json(self) -> list[list[Any]]:
        return [[s.start, s.end, s.origin] for s in self._spans]


class PartialFile:
    """The data and control files of one file being received."""

    def __init__(self, data: Path, control: Path, name: str) -> None:
        self.data = data
        self.control = control
        self.name = name  # the file's path as reports name it

    def _wanted(self, identity: Identity) -> dict[str, object]:
        return {
            "file": self.name,
            "size": identity.size,
            "sha256": identity.sha256,
            "git_sha1": identity.git_sha1,
            "cid": identity.cid,
        }

    def resume(self, identity: Identity) -> Spans:
        """The ranges kept from an earlier try for this identity; anything stale is discarded."""
        try:
            saved = json.loads(self.control.read_text())
            data_size = self.data.stat().st_size
        except FileNotFoundError:
            self.discard()
            return Spans()
        except (OSError, ValueError):
            self.discard()
            return Spans()
        if not isinstance(saved, dict):
            self.discard()
            return Spans()
        spans = _kept_spans(saved, self._wanted(identity), data_size)
        if spans is None:
            log.info("discarding a partial download of %s kept for other content", self.name)
            self.discard()
            return Spans()
        if identity.size is not None and any(s.end > identity.size for s in spans):
            self.discard()
            return Spans()
        return spans

    def begin(self, identity: Identity) -> None:
        """Start afresh: an empty data file and a control file naming what it must become."""
        try:
            self.data.parent.mkdir(parents=True, exist_ok=True)
            self.data.unlink(missing_ok=True)
            self.save(identity, Spans())
        except OSError as exc:
            raise storage_error(exc, self.control) from None

    def save(self, identity: Identity, spans: Spans) -> None:
        """Record which ranges are on disk (atomically; call after the bytes were written)."""
        state = {"version": CONTROL_VERSION, **self._wanted(identity), "done": spans.to_json()}
        try:
            write_json_atomic(self.control, state, fsync=False)
        except OSError as exc:
            raise storage_error(exc, self.control) from None

    def open(self, size: int | None) -> int:
        """The data file opened for writing at offsets (sized to `size` when known)."""
        try:
            fd = os.open(self.data, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise storage_error(exc, self.data, needed=size) from None
        try:
            if size is not None and os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)
        except OSError as exc:
            os.close(fd)
            raise storage_error(exc, self.data, needed=size) from None
        return fd

    def discard(self) -> None:
        for p in (self.data, self.control):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove %s: %s", p, exc.strerror)


def _kept_spans(saved: dict[str, Any], wanted: dict[str, object], data_size: int) -> Spans | None:
    """The spans a control file vouches for, or None if it was kept for other content."""
    version = saved.get("version")
    if version is None:  # modelfetch 0.1: a contiguous prefix, the data file's length
        old = {k: wanted[k] for k in ("file", "size", "sha256", "git_sha1")}
        if {k: saved.get(k) for k in old} != old or wanted["cid"] is not None:
            return None
        return Spans([Span(0, data_size)]) if data_size else Spans()
    if version != CONTROL_VERSION or {k: saved.get(k) for k in wanted} != wanted:
        return None
    spans = Spans()
    try:
        for start, end, origin in saved.get("done", []):
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end):
                return None
            if end > data_size:
                return None  # the control file claims bytes the data file never got
            spans.add(start, end, origin if isinstance(origin, str) else None)
    except (TypeError, ValueError):
        return None
    return spans
