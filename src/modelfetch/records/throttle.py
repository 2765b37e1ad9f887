"""Holding back a transfer's progress events: one write per file per interval, the last kept."""

from __future__ import annotations

import time

from ..events import Event, ProgressEvent

_FileKey = tuple[str, str]  # (model, file)


class ProgressThrottle:
    """Holds back `downloading` events so that each file gets one write per `interval`."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._held: dict[_FileKey, ProgressEvent] = {}
        self._last: dict[_FileKey, float] = {}

    def stage(self, event: ProgressEvent, staged: list[Event]) -> None:
        """Add `event` to `staged` now, or hold it until its file's interval has passed."""
        key = (event.model, event.file)
        if event.status == "downloading":
            last = self._last.get(key)
            now = time.monotonic()
            if key not in self._held and (last is None or now - last >= self.interval):
                self._last[key] = now
                staged.append(event)
            else:
                self._held[key] = event
                self._last.setdefault(key, now)
            return
        held = self._held.pop(key, None)  # a final state: the progress before it goes first
        if held is not None:
            staged.append(held)
        self._last.pop(key, None)
        staged.append(event)

    def release(self, staged: list[Event], *, everything: bool) -> None:
        """Add to `staged` the held events that are due (or all of them)."""
        now = time.monotonic()
        for key in list(self._held):
            if everything or now - self._last[key] >= self.interval:
                staged.append(self._held.pop(key))
                self._last[key] = now

    def next_due(self, default: float) -> float:
        """The `time.monotonic()` when the next held event is due, at the latest `default`."""
        due = default
        for key in self._held:
            due = min(due, self._last[key] + self.interval)
        return due
