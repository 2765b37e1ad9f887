"""What a loopback origin saw and sent: requests, body bytes per file and per range, concurrency."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .rules import name_matches


@dataclass(frozen=True, slots=True)
class SentRange:
    """One GET body an origin sent: the request path, the range of the file, the bytes sent.

    `start`/`end` (exclusive) are file offsets: the Range asked for (or the whole file) for a
    file body; for a CAR, the `entity-bytes` range, else (0, None). `ranged` says the request
    asked for a part and got one (206, or a CAR of an entity range). `sent` counts body bytes
    as they go (a cut body stops short; an oversize one goes beyond).
    """

    path: str
    start: int
    end: int | None
    ranged: bool
    sent: int


@dataclass(slots=True)
class BodyRecord:
    """A body being sent: where its bytes are counted (the server side of a SentRange)."""

    keys: tuple[str, ...]
    path: str
    start: int
    end: int | None
    ranged: bool
    sent: int = 0


class TrafficCounters:
    """Counters of an origin, kept by its event loop and read from tests (thread-safe)."""

    def __init__(self) -> None:
        self._counts_lock = threading.Lock()
        self._requests: list[tuple[str, str, bool]] = []  # (method, path, asked for a range)
        self._sent: dict[tuple[str, ...], int] = {}
        self._bodies: list[BodyRecord] = []
        self._in_flight = 0
        self._max_in_flight = 0

    # -- read by tests --------------------------------------------------------------------

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Every (method, decoded path) received since start or `reset_counters()`, in order."""
        with self._counts_lock:
            return [(m, p) for m, p, _ in self._requests]

    def request_count(self, path: str | None = None, method: str | None = None) -> int:
        """How many requests matched `path` (suffix match, None = all) and `method`."""
        with self._counts_lock:
            seen = list(self._requests)
        return sum(1 for m, p, _ in seen if _wanted(m, p, path, method))

    def range_request_count(self, path: str | None = None, method: str | None = None) -> int:
        """How many of those requests asked for a part: a `Range` header (or `entity-bytes`)."""
        with self._counts_lock:
            seen = list(self._requests)
        return sum(1 for m, p, ranged in seen if ranged and _wanted(m, p, path, method))

    def bytes_sent(self, path_or_sha: str) -> int:
        """Body bytes sent for a file, by request path suffix, file name suffix or hash."""
        with self._counts_lock:
            return sum(
                n
                for keys, n in self._sent.items()
                if any(name_matches(k, path_or_sha) for k in keys)
            )

    def sent_ranges(self, path_or_sha: str | None = None) -> list[SentRange]:
        """Every GET body sent (of that file, matched as in `bytes_sent`), in request order."""
        with self._counts_lock:
            return [
                SentRange(b.path, b.start, b.end, b.ranged, b.sent)
                for b in self._bodies
                if path_or_sha is None or any(name_matches(k, path_or_sha) for k in b.keys)
            ]

    @property
    def max_concurrent_bodies(self) -> int:
        """The most GET bodies (so connections) being sent at one time since the last reset."""
        with self._counts_lock:
            return self._max_in_flight

    def reset_counters(self) -> None:
        """Forget the requests seen, the bytes sent and the most concurrent bodies seen."""
        with self._counts_lock:
            self._requests.clear()
            self._sent.clear()
            self._bodies.clear()
            self._max_in_flight = 0

    # -- kept by the server ---------------------------------------------------------------

    def _count_request(self, method: str, path: str, ranged: bool) -> None:
        with self._counts_lock:
            self._requests.append((method, path, ranged))

    def _open_body(
        self, keys: tuple[str, ...], path: str, start: int, end: int | None, ranged: bool
    ) -> BodyRecord:
        record = BodyRecord(keys, path, start, end, ranged)
        with self._counts_lock:
            self._bodies.append(record)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        return record

    def _count(self, record: BodyRecord, n: int) -> None:
        # Called just before bytes go to the socket, so a client that has read them sees them.
        if n:
            with self._counts_lock:
                record.sent += n
                self._sent[record.keys] = self._sent.get(record.keys, 0) + n

    def _close_body(self, record: BodyRecord) -> None:
        with self._counts_lock:
            self._in_flight -= 1


def _wanted(method: str, path: str, want_path: str | None, want_method: str | None) -> bool:
    return (want_method is None or method == want_method) and (
        want_path is None or name_matches(path, want_path)
    )


__all__ = ["BodyRecord", "SentRange", "TrafficCounters"]
