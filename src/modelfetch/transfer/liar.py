"""Finding the origin that sent wrong bytes, when a file assembled from several fails its hash.

The control file says which origin sent each range. Suspects are taken in turn (origins whose
word proves nothing first, the hub itself last): their ranges are fetched again from another
origin, the *referee*, and compared with what is on disk; differing bytes are overwritten with
the referee's. If the file then verifies, the suspect lied. Each suspect is tried once, so the
hunt ends: either the file is right and the liar named, or the failure stands.

A file known by its IPFS DAG (its block index) says itself which leaves are wrong: only the
origins that sent bytes of those leaves are suspects, and only those bytes are fetched again.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SourceError, VerificationError
from ..hashes import Digests, Verified
from ..httpclient import Client
from ..sources.base import Origin
from ..store import storage_error
from .assemble import Assembler
from .origins import RunState

if TYPE_CHECKING:
    from ..ipfs.blockindex import BlockIndex

log = logging.getLogger(__name__)

COMPARE_BATCH = 1 << 20


@dataclass(frozen=True)
class Verdict:
    """The file verified after `liar`'s ranges were replaced by `referee`'s bytes."""

    verified: Verified
    liar: str | None  # None: the bytes kept from an earlier run were the wrong ones
    referee: Origin
    wrong_ranges: tuple[tuple[int, int], ...]
    referee_bytes: int  # what the check fetched from the referee
    failure: VerificationError | None = None  # the check the assembled file failed first


@dataclass(frozen=True)
class NoVerdict:
    """No single liar: `accomplices` are referees whose bytes agreed with a wrong file."""

    accomplices: tuple[str, ...]


async def hunt(
    client: Client,
    assembler: Assembler,
    candidates: Sequence[Origin],
    run: RunState,
    fresh_digests: Callable[[], Digests],
) -> Verdict | NoVerdict:
    """Replace each suspect's ranges by a referee's until the file verifies (or give up)."""
    accomplices: list[str] = []
    by_origin = assembler.spans.by_origin()
    known = {o.base_url: o for o in candidates}
    dag = assembler.identity.dag
    if dag is not None:  # the leaves say where the wrong bytes are: suspect only their senders
        bad = await asyncio.to_thread(_bad_leaves, assembler, dag)
        if bad:
            narrowed = {o: _overlap(r, bad) for o, r in by_origin.items()}
            by_origin = {o: r for o, r in narrowed.items() if r}

    def suspicion(base: str | None) -> tuple[int, int]:
        origin = known.get(base) if base is not None else None
        trusted = origin is not None and not getattr(origin, "distrustable", True)
        return (int(trusted), sum(e - s for s, e in by_origin[base]))

    for suspect in sorted(by_origin, key=suspicion):
        referees = [
            o for o in candidates if o.base_url != suspect and run.skip_reason(o.base_url) is None
        ]
        for referee in referees:  # in the order of preference
            undo = _Undo(assembler.partial.data.with_name(assembler.partial.data.name + ".undo"))
            try:
                wrong, fetched = await _compare_and_fix(
                    client, referee, assembler, by_origin[suspect], undo
                )
            except (SourceError, VerificationError) as exc:
                log.info("referee %s failed: %s", referee.base_url, exc)
                await asyncio.to_thread(undo.restore, assembler)
                continue
            if not wrong:
                accomplices.append(referee.base_url)
                await asyncio.to_thread(undo.discard)
                break  # the referee sent the same bytes: look at the next suspect
            try:
                verified = await assembler.rehash(fresh_digests())
            except VerificationError:
                # The referee's bytes are no better (it may be the liar): put the suspect's
                # back, so a later check compares against what was really received.
                await asyncio.to_thread(undo.restore, assembler)
                break
            await asyncio.to_thread(undo.discard)
            # Every byte of the suspect's ranges now equals the referee's: credit it.
            for start, end in by_origin[suspect]:
                assembler.spans.remove(start, end)
                assembler.spans.add(start, end, referee.base_url)
            return Verdict(verified, suspect, referee, tuple(wrong), fetched)
    return NoVerdict(tuple(accomplices))


async def _compare_and_fix(
    client: Client,
    referee: Origin,
    assembler: Assembler,
    ranges: list[tuple[int, int]],
    undo: _Undo,
) -> tuple[list[tuple[int, int]], int]:
    """Fetch `ranges` from `referee`; overwrite the bytes that differ.

    Returns where they differed, and how many bytes were fetched.
    """
    wrong: list[tuple[int, int]] = []
    fetched = 0
    for start, end in ranges:
        stream = await referee.open(client, start, end)
        try:
            if stream.offset != start:
                raise SourceError(f"{stream.url} ignored the Range asked for the check")
            pos = start
            batch: list[bytes] = []
            size = 0
            async for chunk in stream.chunks():
                data = bytes(chunk)[: end - pos - size]
                batch.append(data)
                size += len(data)
                if size >= COMPARE_BATCH or pos + size >= end:
                    joined = b"".join(batch)
                    if await asyncio.to_thread(_differs_then_fix, assembler, pos, joined, undo):
                        _merge(wrong, pos, pos + len(joined))
                    pos += len(joined)
                    fetched += len(joined)
                    batch, size = [], 0
                if pos >= end:
                    break
            if pos < end:
                raise SourceError(f"{stream.url} ended {end - pos:,} bytes early during a check")
        finally:
            stream.close()
    return wrong, fetched


def _bad_leaves(assembler: Assembler, dag: BlockIndex) -> list[tuple[int, int]]:
    """The ranges of the leaves whose bytes on disk do not hash to their CIDs (blocking)."""
    from ..ipfs.leafcheck import leaf_check  # only files known by their DAG need it

    bad: list[tuple[int, int]] = []
    leaves = dag.leaves
    i = 0
    while i < len(leaves):
        j, end = i, leaves[i].end
        while j + 1 < len(leaves) and leaves[j + 1].end - leaves[i].offset <= COMPARE_BATCH * 8:
            j += 1
            end = leaves[j].end
        start = leaves[i].offset
        try:
            data = os.pread(assembler.fileno, end - start, start)
        except OSError as exc:
            raise storage_error(exc, assembler.partial.data) from None
        for s, e in leaf_check(dag, start, data):
            _merge(bad, s, e)
        i = j + 1
    return bad


def _overlap(ranges: list[tuple[int, int]], bad: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of `ranges` inside `bad` (both sorted, non-overlapping)."""
    out: list[tuple[int, int]] = []
    for start, end in ranges:
        for b_start, b_end in bad:
            lo, hi = max(start, b_start), min(end, b_end)
            if lo < hi:
                out.append((lo, hi))
    return out


def _differs_then_fix(assembler: Assembler, offset: int, data: bytes, undo: _Undo) -> bool:
    """Compare `data` with the file at `offset`; if they differ, keep the old bytes in
    `undo` and write `data` there."""
    fd = assembler.fileno
    try:
        old = os.pread(fd, len(data), offset)
        if old == data:
            return False
        undo.keep(offset, old)
        _pwrite_all(fd, data, offset)
    except OSError as exc:
        raise storage_error(exc, assembler.partial.data) from None
    return True


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class _Undo:
    """The bytes a check overwrote, kept on disk (they may be large) until it is decided."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: list[tuple[int, int, int]] = []  # (file offset, length, undo offset)
        self._size = 0

    def keep(self, offset: int, old: bytes) -> None:
        with open(self.path, "ab") as f:
            f.write(old)
        self._entries.append((offset, len(old), self._size))
        self._size += len(old)

    def restore(self, assembler: Assembler) -> None:
        """Write the kept bytes back where they were (blocking)."""
        if self._entries:
            try:
                with open(self.path, "rb") as f:
                    for offset, length, at in self._entries:
                        f.seek(at)
                        _pwrite_all(assembler.fileno, f.read(length), offset)
            except OSError as exc:
                raise storage_error(exc, assembler.partial.data) from None
        self.discard()

    def discard(self) -> None:
        self._entries.clear()
        self.path.unlink(missing_ok=True)


def _merge(ranges: list[tuple[int, int]], start: int, end: int) -> None:
    if ranges and ranges[-1][1] == start:
        ranges[-1] = (ranges[-1][0], end)
    else:
        ranges.append((start, end))
