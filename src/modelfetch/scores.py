"""Origin scores: which origin of a layer to ask first, learnt from recent attempts.

The engine reads scores through four calls: `Scores.load(records)` once per `Fetcher` (one
query over each origin's recent attempts), `listener` (an event listener: what this run
learns counts at once), `rank(origins, key)` (the order to ask a layer's origins in) and
`expected_rate(origin)`. `snapshot()` is what the CLI, the health endpoint and the dashboard
show. Origins are keyed by base URL, as the records name them.

Why this formula
----------------
An origin is worth asking first when it is likely to deliver and quick to do it. Each
origin's successes and failures are replayed oldest first into decaying sums:

- Every new outcome of an origin multiplies the weight of its older ones by `RECENCY` (0.8:
  an outcome counts half after three newer ones), so a gateway that starts failing drops
  within a few tries even after a good day, and one that recovers climbs back as fast. This
  is what makes recent failures outweigh old successes.
- Time fades what is known: weights also halve every `HALF_LIFE_S` (6 h). Only the
  evidence fades, not the prior, so an origin that failed yesterday drifts back towards the
  prior and is tried again, instead of being shunned for good.
- A neutral prior of `PRIOR_WEIGHT` (2) pseudo-outcomes (`PRIOR_SUCCESS` 0.75, a first byte
  after `PRIOR_TTFB_MS`, `PRIOR_RATE` bytes/s) keeps one lucky or unlucky try from deciding
  alone, and gives an origin never seen a middle place: behind origins that proved good,
  ahead of origins that proved bad.

From the sums: `p`, the weighted success rate; the weighted mean time to first byte; and
the throughput, bytes over receiving time summed over successes (so large transfers speak
louder than small ones, whose time is mostly latency). Then::

    score = p * REF_S / (REF_S + ttfb + REF_BYTES / throughput)

the chance that the origin delivers, times how fast a reference piece (`REF_BYTES`, 8 MiB)
arrives compared with `REF_S` (1 s): 1 for an origin that always delivers at once, 0.5 for
one that always delivers it in one second, 0.25 if it does so half the time. A failed try
costs a try elsewhere, so the product orders origins by how soon they are expected to hand
over verified bytes. @helia/verified-fetch ranks gateways by successes / (attempts + 3 x
errors); this adds speed, recency and a prior to the same idea.

`rank` compares scores in bands of `TIE_STEP` (0.05): origins about equally good keep
their configured order, so measurement noise does not reshuffle them from file to file.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypedDict, TypeVar

from .errors import StorageError
from .events import AttemptEvent, Event
from .records.schema import NETWORK_LAYERS, dt_to_ms

if TYPE_CHECKING:
    from .records import Records

log = logging.getLogger(__name__)

T = TypeVar("T")

RECENCY: Final = 0.8
HALF_LIFE_S: Final = 6 * 3600.0
PRIOR_WEIGHT: Final = 2.0
PRIOR_SUCCESS: Final = 0.75
PRIOR_TTFB_MS: Final = 500.0
PRIOR_RATE: Final = 10e6  # bytes/s
REF_BYTES: Final = 8 * 1024 * 1024
REF_S: Final = 1.0
TIE_STEP: Final = 0.05


class OriginScore(TypedDict):
    """One origin in `Scores.snapshot()`: its score and what it was measured doing."""

    score: float  # 0-100 (the formula's 0-1, as a percentage like the health rates)
    ttfb_ms: float | None  # weighted mean time to first byte of successes; None: none seen
    throughput_bps: float | None  # bytes/s while receiving, over successes; None: none seen
    success_rate: float  # 0-100, weighted by recency (no prior)
    attempts: int  # successes and failures seen (recorded or this run)


@dataclass
class _Sums:
    """Decaying sums of one origin's outcomes (weights as of `last_ms`)."""

    ok: float = 0.0  # weighted successes
    all: float = 0.0  # weighted outcomes
    ttfb_w: float = 0.0  # weight of the successes that measured a first byte
    ttfb_ms: float = 0.0  # weighted sum of those times
    bytes: float = 0.0  # weighted bytes received by successes
    seconds: float = 0.0  # weighted time spent receiving them
    last_ms: int | None = None
    attempts: int = 0

    def add(
        self,
        ok: bool,
        at_ms: int,
        latency_ms: float | None,
        nbytes: int,
        ttfb_ms: float | None,
    ) -> None:
        """One outcome at `at_ms`: older weights fade by recency and by time, then add it."""
        self._scale(RECENCY * self._fade(at_ms))
        self.last_ms = at_ms if self.last_ms is None else max(self.last_ms, at_ms)
        self.attempts += 1
        self.all += 1.0
        if not ok:
            return
        self.ok += 1.0
        if ttfb_ms is not None and ttfb_ms >= 0:
            self.ttfb_w += 1.0
            self.ttfb_ms += ttfb_ms
        if latency_ms is not None and latency_ms > 0 and nbytes > 0:
            self.bytes += nbytes
            self.seconds += latency_ms / 1000.0

    def at(self, now_ms: int) -> _Sums:
        """These sums as they weigh at `now_ms` (time fades them, not the prior)."""
        faded = _Sums(**vars(self))
        faded._scale(self._fade(now_ms))
        return faded

    def _fade(self, now_ms: int) -> float:
        if self.last_ms is None or now_ms <= self.last_ms:
            return 1.0
        return math.exp2(-(now_ms - self.last_ms) / 1000.0 / HALF_LIFE_S)

    def _scale(self, factor: float) -> None:
        self.ok *= factor
        self.all *= factor
        self.ttfb_w *= factor
        self.ttfb_ms *= factor
        self.bytes *= factor
        self.seconds *= factor

    # -- the estimates (prior included) ---------------------------------------------

    def success(self) -> float:
        return (self.ok + PRIOR_WEIGHT * PRIOR_SUCCESS) / (self.all + PRIOR_WEIGHT)

    def ttfb(self) -> float:
        return (self.ttfb_ms + PRIOR_WEIGHT * PRIOR_TTFB_MS) / (self.ttfb_w + PRIOR_WEIGHT)

    def rate(self) -> float:
        prior_bytes = PRIOR_WEIGHT * REF_BYTES
        return (self.bytes + prior_bytes) / (self.seconds + prior_bytes / PRIOR_RATE)

    def score(self) -> float:
        expected_s = self.ttfb() / 1000.0 + REF_BYTES / self.rate()
        return self.success() * REF_S / (REF_S + expected_s)


_PRIOR_SCORE: Final = _Sums().score()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Scores:
    """Per-origin scores (see the module doc for the formula and why).

    Example::

        scores = Scores.load(records)            # what earlier runs recorded
        fetcher.add_listener(scores.listener)    # what this run learns
        ranked = scores.rank(origins, key=lambda o: o.base_url)
    """

    def __init__(self, *, clock: Callable[[], int] = _now_ms) -> None:
        """An empty table; `clock` gives the current Unix time in ms (tests pass their own)."""
        self._clock = clock
        self._sums: dict[str, _Sums] = {}

    @classmethod
    def load(cls, records: Records | None, *, clock: Callable[[], int] = _now_ms) -> Scores:
        """The scores of every origin with attempts in `records`' window (one query).

        No records, or records that cannot be read, give empty scores (logged): a pull
        never fails for want of a score.
        """
        scores = cls(clock=clock)
        if records is None:
            return scores
        try:
            rows = records.recent_outcomes()
        except StorageError as exc:
            log.warning("origin scores start empty: %s", exc)
            return scores
        for gateway, _layer, ok, ts_ms, latency_ms, nbytes, ttfb_ms in rows:
            scores.add(gateway, ok, ts_ms, latency_ms=latency_ms, nbytes=nbytes, ttfb_ms=ttfb_ms)
        return scores

    @classmethod
    def from_file(
        cls, path: Path, *, retention: timedelta, clock: Callable[[], int] = _now_ms
    ) -> Scores:
        """The scores in the records file at `path`; empty when there is none yet (nothing
        is created) or it cannot be used (logged)."""
        if not path.is_file():
            return cls(clock=clock)
        from .records import Records

        try:
            with Records(path, retention=retention) as records:
                return cls.load(records, clock=clock)
        except StorageError as exc:
            log.warning("origin scores unknown: %s", exc)
            return cls(clock=clock)

    # -- learning -------------------------------------------------------------------------

    def add(
        self,
        origin: str,
        ok: bool,
        at_ms: int | None = None,
        *,
        latency_ms: float | None = None,
        nbytes: int = 0,
        ttfb_ms: float | None = None,
    ) -> None:
        """One success or failure of `origin` (oldest first gives the intended weights)."""
        sums = self._sums.setdefault(origin, _Sums())
        when = self._clock() if at_ms is None else at_ms
        sums.add(ok, when, latency_ms, nbytes, ttfb_ms)

    def observe(self, event: Event) -> None:
        """Learn from an engine event: a network origin's `success` or `error` attempt."""
        if not isinstance(event, AttemptEvent) or event.gateway is None:
            return
        if event.layer not in NETWORK_LAYERS or event.status not in ("success", "error"):
            return
        self.add(
            event.gateway,
            event.status == "success",
            dt_to_ms(event.timestamp),
            latency_ms=event.latency_ms,
            nbytes=event.bytes_downloaded,
            ttfb_ms=event.ttfb_ms,
        )

    def listener(self, event: Event) -> None:
        """`observe` as a `Listener` (never raises: scores must not break a download)."""
        try:
            self.observe(event)
        except Exception:
            log.debug("origin scores: event not counted", exc_info=True)

    # -- reading --------------------------------------------------------------------------

    def score(self, origin: str) -> float:
        """`origin`'s score from 0 to 1 now; the neutral prior's for an origin never seen."""
        sums = self._sums.get(origin)
        return _PRIOR_SCORE if sums is None else sums.at(self._clock()).score()

    def known(self, origin: str) -> bool:
        """Whether any success or failure of `origin` was seen (recorded or this run)."""
        return origin in self._sums

    def rank(self, origins: Sequence[T], key: Callable[[T], str]) -> list[T]:
        """`origins`, best score first; a stable sort, so origins about equally good (in
        one `TIE_STEP` band), and every origin never seen, keep their configured order."""
        bands = {key(o): math.floor(self.score(key(o)) / TIE_STEP) for o in origins}
        return sorted(origins, key=lambda o: -bands[key(o)])

    def expected_rate(self, origin: str) -> float:
        """Bytes/s `origin` is expected to send while it sends (`PRIOR_RATE` if never seen)."""
        sums = self._sums.get(origin)
        return PRIOR_RATE if sums is None else sums.at(self._clock()).rate()

    def snapshot(self, origins: Iterable[str] | None = None) -> dict[str, OriginScore]:
        """Every origin seen (or just `origins`, those seen among them), for display."""
        now = self._clock()
        wanted = self._sums if origins is None else [o for o in origins if o in self._sums]
        out: dict[str, OriginScore] = {}
        for origin in sorted(wanted):
            sums = self._sums[origin].at(now)
            out[origin] = {
                "score": round(100.0 * sums.score(), 1),
                "ttfb_ms": round(sums.ttfb_ms / sums.ttfb_w, 1) if sums.ttfb_w > 0 else None,
                "throughput_bps": round(sums.bytes / sums.seconds) if sums.seconds > 0 else None,
                "success_rate": round(100.0 * sums.ok / sums.all, 1) if sums.all > 0 else 0.0,
                "attempts": sums.attempts,
            }
        return out


def with_scores(health: dict[str, Any], scores: Scores) -> dict[str, Any]:
    """`Records.health()` with `score`, `ttfb_ms` and `throughput_bps` added to each gateway.

    Keys are only added (the report keeps its shape); a gateway without a score gets
    None for all three.
    """
    snap = scores.snapshot()
    for layer in NETWORK_LAYERS:
        entry = health.get(layer)
        gateways = entry.get("gateways") if isinstance(entry, dict) else None
        if not isinstance(gateways, dict):
            continue
        for url, gw in gateways.items():
            if not isinstance(gw, dict):
                continue
            known = snap.get(url)
            gw["score"] = known["score"] if known else None
            gw["ttfb_ms"] = known["ttfb_ms"] if known else None
            gw["throughput_bps"] = known["throughput_bps"] if known else None
    return health
