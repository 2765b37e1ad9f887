"""Query parameters shared by the REST API and the `metrics` command: since, layer, limit."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from ..config import LAYERS

MAX_LIMIT = 1_000_000

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """A point in time from `text`; raises ValueError with a usable message otherwise.

    Accepted: ISO 8601 (`2024-05-01T10:00:00Z`, `2024-05-01`, with or without an offset;
    naive = UTC), Unix time in milliseconds (`1714557600000`, as JavaScript's `Date.now()`),
    or a duration back from now (`90s`, `15m`, `2h`, `1d`, `1w`).

    Example::

        >>> parse_since("2024-05-01T10:00:00Z").isoformat()
        '2024-05-01T10:00:00+00:00'
    """
    value = text.strip()
    if not value:
        raise ValueError("since is empty")
    if value.isdigit():
        try:
            return datetime.fromtimestamp(int(value) / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"since={text!r}: not a usable Unix time in milliseconds") from None
    relative = _RELATIVE.fullmatch(value.lower())
    if relative:
        amount, unit = float(relative.group(1)), relative.group(2)
        try:
            delta = timedelta(**{_UNITS[unit]: amount})
            return (now or datetime.now(UTC)) - delta
        except OverflowError:
            raise ValueError(f"since={text!r}: too far back") from None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"since={text!r}: use an ISO 8601 time (2024-05-01T10:00:00Z), Unix milliseconds "
            "or a duration such as 15m, 2h, 1d"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def parse_limit(text: str) -> int:
    """A row limit from 1 to MAX_LIMIT; raises ValueError otherwise."""
    try:
        limit = int(text.strip())
    except ValueError:
        raise ValueError(f"limit={text!r}: not an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit={limit}: use a number from 1 to {MAX_LIMIT:,}")
    return limit


def parse_layer(text: str) -> str:
    """One of the layers (cache, ipfs, huggingface); raises ValueError otherwise."""
    layer = text.strip().lower()
    if layer not in LAYERS:
        raise ValueError(f"layer={text!r}: use one of {', '.join(LAYERS)}")
    return layer
