"""What a run knows about each origin, and which origin a connection should use next.

`RunState` lives for one run (a `pull`): an origin that refused a connection or whose host did
not resolve is *down* for every file of the run; one caught sending wrong bytes is
*distrusted*; one that left a request without a first byte past the hedge delay is *slow*
(still used, but after the others). `OriginPicker` is one file's view: the ranked candidates,
how often each failed for this file, when each may be retried, how many connections use it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..sources.base import Origin


@dataclass
class RunState:
    """What one run learned about origins (keyed by base URL)."""

    down: dict[str, str] = field(default_factory=dict)
    distrusted: dict[str, str] = field(default_factory=dict)
    slow: set[str] = field(default_factory=set)
    connection_cap: dict[str, int] = field(default_factory=dict)  # after a 429

    def skip_reason(self, base_url: str) -> str | None:
        """Why the run no longer asks `base_url` for anything, or None."""
        if base_url in self.distrusted:
            return f"distrusted: {self.distrusted[base_url]}"
        if base_url in self.down:
            return f"down: {self.down[base_url]}"
        return None

    def mark_down(self, base_url: str, why: str) -> None:
        self.down.setdefault(base_url, why)

    def distrust(self, base_url: str, why: str) -> None:
        self.distrusted.setdefault(base_url, why)

    def rank(self, origins: Sequence[Origin]) -> list[Origin]:
        """`origins` in their given order, slow ones last (a stable sort)."""
        return sorted(origins, key=lambda o: o.base_url in self.slow)


@dataclass
class _Use:
    failures: int = 0
    not_before: float = 0.0
    active: int = 0
    no_ranges: bool = False


class OriginPicker:
    """Chooses an origin for each connection of one file transfer."""

    def __init__(self, candidates: Sequence[Origin], run: RunState, *, max_per_origin: int) -> None:
        self.candidates = list(candidates)
        self.run = run
        self.max_per_origin = max_per_origin
        self._use: dict[str, _Use] = {o.base_url: _Use() for o in self.candidates}

    def use(self, origin: Origin) -> _Use:
        return self._use[origin.base_url]

    def usable(self, origin: Origin) -> bool:
        """Not down, not distrusted, and not out of tries for this file."""
        if self.run.skip_reason(origin.base_url) is not None:
            return False
        return self.use(origin).failures < origin.tries

    def any_left(self) -> bool:
        return any(self.usable(o) for o in self.candidates)

    def next_ready(self) -> float | None:
        """When the earliest usable origin may be tried again (None: none is usable)."""
        times = [self.use(o).not_before for o in self.candidates if self.usable(o)]
        return min(times) if times else None

    def pick(self, *, excluding: Sequence[Origin] = (), ranged: bool = False) -> Origin | None:
        """The origin a new request should go to now: the least used of the best, or None.

        `ranged`: the request does not start at byte 0, so origins known to ignore Range
        come last.
        """
        now = time.monotonic()
        ranked = self.run.rank(self.candidates)
        best: tuple[float, int, int] | None = None
        chosen: Origin | None = None
        for position, origin in enumerate(ranked):
            if origin in excluding or not self.usable(origin):
                continue
            use = self.use(origin)
            cap = min(self.max_per_origin, self.run.connection_cap.get(origin.base_url, 1 << 30))
            if use.not_before > now or use.active >= cap:
                continue
            key = (float(use.no_ranges and ranged), use.active, position)
            if best is None or key < best:
                best, chosen = key, origin
        return chosen

    def failed(self, origin: Origin, delay: float) -> None:
        use = self.use(origin)
        use.failures += 1
        use.not_before = time.monotonic() + delay
