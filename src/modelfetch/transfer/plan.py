"""Which byte ranges of a file each connection fetches: the initial split and work stealing.

Pure bookkeeping, no I/O. A `Plan` covers the bytes still missing from a file with `Piece`s,
each owned by at most one connection. A connection that finishes asks for more: it gets an
unowned piece if there is one, else it steals the back half of the piece that will take the
longest to finish (its remaining bytes divided by its owner's measured rate), so a slow
connection, or a slow origin, ends up with less and less of the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(eq=False)
class Piece:
    """Bytes [start, end) of the file; `pos` is the next byte its owner will write."""

    start: int
    end: int
    pos: int = -1
    owner: object | None = None
    history: list[tuple[int, int]] = field(default_factory=list)  # stolen-off tails, for tests

    def __post_init__(self) -> None:
        if self.pos < 0:
            self.pos = self.start

    @property
    def remaining(self) -> int:
        return max(0, self.end - self.pos)

    @property
    def done(self) -> bool:
        return self.pos >= self.end


class Plan:
    """The missing bytes of a file of `size` bytes, as pieces handed out to connections.

    `done` lists ranges already on disk (a resumed partial). `connections` is how many pieces
    the missing bytes are cut into at first (fewer when they are too small: every first piece
    holds at least `min_segment` bytes, so a file under 2 x min_segment is one piece).
    A piece is only ever split into parts of at least `min_steal` bytes.
    """

    def __init__(
        self,
        size: int,
        *,
        connections: int,
        min_segment: int,
        min_steal: int,
        done: Iterable[tuple[int, int]] = (),
    ) -> None:
        if size < 0 or connections < 1 or min_segment < 1 or min_steal < 1:
            raise ValueError("size >= 0, connections >= 1, min_segment >= 1, min_steal >= 1")
        self.size = size
        self.min_steal = min_steal
        self.pieces: list[Piece] = []
        gaps = _gaps(size, done)
        missing = sum(e - s for s, e in gaps)
        wanted = max(1, min(connections, missing // min_segment)) if missing else 0
        self.pieces = _cut(gaps, wanted)

    @property
    def missing(self) -> int:
        """Bytes not yet written."""
        return sum(p.remaining for p in self.pieces)

    @property
    def complete(self) -> bool:
        return all(p.done for p in self.pieces)

    def initial_pieces(self) -> int:
        """How many connections are worth opening at first."""
        return sum(1 for p in self.pieces if not p.done)

    def take(self, owner: object, rates: Mapping[object, float] | None = None) -> Piece | None:
        """A piece for `owner`: an unowned one, else the back half of the slowest one."""
        for piece in self.pieces:
            if piece.owner is None and not piece.done:
                piece.owner = owner
                return piece
        return self._steal(owner, rates or {})

    def _steal(self, thief: object, rates: Mapping[object, float]) -> Piece | None:
        def eta(p: Piece) -> float:
            rate = rates.get(p.owner, 0.0)
            return p.remaining / rate if rate > 0 else float("inf")

        candidates = [p for p in self.pieces if p.owner is not None and p.owner is not thief]
        candidates = [p for p in candidates if p.remaining >= 2 * self.min_steal]
        if not candidates:
            return None
        victim = max(candidates, key=lambda p: (eta(p), p.remaining))
        cut = victim.pos + victim.remaining // 2
        tail = Piece(cut, victim.end, owner=thief)
        victim.history.append((cut, victim.end))
        victim.end = cut
        self.pieces.insert(self.pieces.index(victim) + 1, tail)
        return tail

    def release(self, piece: Piece) -> None:
        """The owner gave up (its origin failed): the rest of the piece is free to take."""
        piece.owner = None

    def slowest_tail(self, thief: object) -> Piece | None:
        """The unfinished piece another connection owns with the most bytes left (endgame)."""
        others = [p for p in self.pieces if p.owner not in (None, thief) and not p.done]
        return max(others, key=lambda p: p.remaining, default=None)


def _gaps(size: int, done: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ranges of [0, size) not covered by `done`."""
    gaps: list[tuple[int, int]] = []
    pos = 0
    for start, end in sorted((max(0, s), min(size, e)) for s, e in done):
        if start > pos:
            gaps.append((pos, start))
        pos = max(pos, end)
    if pos < size:
        gaps.append((pos, size))
    return gaps


def _cut(gaps: list[tuple[int, int]], wanted: int) -> list[Piece]:
    """Cut the gaps into about `wanted` pieces of similar size (never across a gap)."""
    missing = sum(e - s for s, e in gaps)
    if not missing:
        return []
    target = -(-missing // wanted)  # ceil
    pieces: list[Piece] = []
    for start, end in gaps:
        pos = start
        while pos < end:
            stop = min(end, pos + target)
            if end - stop < target // 4:  # no crumb at the end of a gap
                stop = end
            pieces.append(Piece(pos, stop))
            pos = stop
    return pieces
