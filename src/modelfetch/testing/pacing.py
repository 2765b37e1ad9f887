"""Rate caps for loopback origins: token buckets that bodies draw from, chunk by chunk."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

PACE_CHUNK = 64 * 1024
"""Most bytes a capped body sends at once: big enough to be cheap at tens of MB/s."""
SLOT = 0.05
"""Seconds of a cap's rate one chunk spans at most (so slow caps still send smoothly)."""
CATCH_UP = 0.1
"""A sender this many seconds late (a loaded machine) may catch up; later, it starts afresh."""


class TokenBucket:
    """`rate` bytes/s shared by every sender that draws from it, on one event loop, no burst.

    Each draw books the next `n / rate` seconds; the bytes may go at the end of their slot.
    Slots follow each other, so no window from the first draw on sees more than the rate. A
    sender less than CATCH_UP s late keeps its schedule (so a busy loop still gets the rate);
    an idle bucket saves nothing up.
    """

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError(f"a rate cap must be > 0 bytes/s, got {rate}")
        self.rate = float(rate)
        self._free_at: float | None = None  # loop time at which the next slot starts

    def reserve(self, n: int, now: float) -> float:
        """Book `n` bytes; the loop time when they may be sent."""
        free_at = self._free_at
        # Right after the last slot (in the past when catching up); when idle or hopelessly
        # late, a fresh start now: nothing is saved up.
        idle = free_at is None or free_at < now - CATCH_UP
        start = now if idle or free_at is None else free_at
        self._free_at = start + n / self.rate
        return self._free_at


class Pace:
    """The caps one body obeys together (its connection's, the server's, a `slow` fault's)."""

    def __init__(self, buckets: Sequence[TokenBucket]) -> None:
        self.buckets = tuple(buckets)
        slowest = min(b.rate for b in self.buckets)
        self.chunk = max(1, min(PACE_CHUNK, int(slowest * SLOT)))

    async def take(self, n: int) -> None:
        """Wait until `n` bytes (at most one chunk) may be sent under every cap."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        ready = max(b.reserve(n, now) for b in self.buckets)
        if ready > now:
            await asyncio.sleep(ready - now)


__all__ = ["CATCH_UP", "PACE_CHUNK", "SLOT", "Pace", "TokenBucket"]
