"""What a gateway request asks for: format, CAR parameters, entity-bytes, Range, the path."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import unquote

from aiohttp import web

RAW_TYPE: Final = "application/vnd.ipld.raw"
"""Media type of a single raw block answer."""
CAR_TYPE: Final = "application/vnd.ipld.car"
"""Media type of a CAR stream answer."""


class Reject(Exception):
    """An answer decided while parsing: status and text."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text

    def response(self) -> web.Response:
        return web.Response(status=self.status, text=self.text + "\n")


@dataclass(frozen=True, slots=True)
class Want:
    fmt: Literal["raw", "car"]
    dups: bool = False


def _media_ranges(accept: str) -> list[tuple[str, dict[str, str], float]]:
    out: list[tuple[str, dict[str, str], float]] = []
    for item in accept.split(","):
        mtype, *raw_params = (p.strip() for p in item.split(";"))
        if not mtype:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for p in raw_params:
            key, _, value = p.partition("=")
            key, value = key.strip().lower(), value.strip().strip('"')
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
            elif key:
                params[key] = value
        out.append((mtype.lower(), params, q))
    out.sort(key=lambda r: -r[2])  # stable: equal q keeps the client's order
    return out


def _car_params_ok(params: Mapping[str, str]) -> bool:
    return (
        params.get("version", "1") == "1"
        and params.get("order", "dfs") in ("dfs", "unk", "")
        and params.get("dups", "n") in ("y", "n")
    )


def negotiate(query: Mapping[str, str], accept: str) -> Want | None:
    """What the request asks for; None = nothing trustless; Reject for an unsupported variant."""
    fmt = query.get("format", "")
    ranges = [r for r in _media_ranges(accept) if r[2] > 0]
    car_ranges = [p for t, p, _ in ranges if t == CAR_TYPE]
    if fmt and fmt not in ("raw", "car"):
        raise Reject(406, f"format={fmt} is not a trustless response: use format=raw or car")
    chosen: Literal["raw", "car"] | None = None
    if fmt == "raw":
        chosen = "raw"
    elif fmt == "car":
        chosen = "car"
    else:
        for mtype, params, _ in ranges:
            if mtype == RAW_TYPE:
                chosen = "raw"
                break
            if mtype == CAR_TYPE and _car_params_ok(params):
                chosen = "car"
                break
        if chosen is None:
            if car_ranges:
                raise Reject(406, "only CARv1 with order=dfs|unk and dups=y|n is served")
            return None
    if chosen == "raw":
        return Want("raw")
    # format=car wins over Accept (spec), whose parameters still apply when acceptable
    params = next((p for p in car_ranges if _car_params_ok(p)), {})
    version = query.get("car-version", params.get("version", "1"))
    order = query.get("car-order", params.get("order", "dfs"))
    dups = query.get("car-dups", params.get("dups", "n"))
    if version != "1":
        raise Reject(406, f"CAR version {version} is not served: only version=1")
    if order not in ("dfs", "unk", ""):
        raise Reject(406, f"CAR order {order} is not served: only order=dfs")
    if dups not in ("y", "n"):
        raise Reject(400, f"car dups must be y or n, not {dups!r}")
    return Want("car", dups=dups == "y")


def parse_entity_bytes(value: str) -> tuple[int, int | None]:
    """`from:to` -> (from, to or None for `*`); both may be negative (from the end)."""
    first, colon, last = value.partition(":")
    try:
        if not colon:
            raise ValueError
        start = int(first)
        end = None if last.strip() == "*" else int(last)
    except ValueError:
        raise Reject(
            400, f"entity-bytes={value!r}: expected from:to (integers, to may be *)"
        ) from None
    if start >= 0 and end is not None and end >= 0 and end < start:
        raise Reject(400, f"entity-bytes={value!r}: to is before from")
    return start, end


def resolve_range(spec: tuple[int, int | None], size: int) -> tuple[int, int] | None:
    """The byte range [lo, hi) of a `size`-byte file; None when it is empty.

    A `from` past the end is a 400; a range starting exactly at the end (a resume with
    nothing left) or resolving to nothing is empty: the answer is the root block, as boxo does.
    """
    start, end = spec
    if start > size:
        raise Reject(400, f"entity-bytes from {start} is past the end of the {size}-byte entity")
    lo = start if start >= 0 else max(0, size + start)
    last = size - 1 if end is None else (end if end >= 0 else size + end)
    last = min(last, size - 1)
    if lo >= size or last < lo:
        return None
    return lo, last + 1


def split_path(request: web.Request) -> tuple[str, str] | None:
    """`/ipfs/<cid>/<path>` -> (cid text, decoded path without empty segments)."""
    segs = [unquote(s) for s in request.rel_url.raw_path.split("/")[1:]]
    if len(segs) < 2 or segs[0] != "ipfs" or not segs[1]:
        return None
    return segs[1], "/".join(s for s in segs[2:] if s)


def not_modified(request: web.Request, etag: str) -> bool:
    value = request.headers.get("If-None-Match")
    if not value:
        return False
    tags = [t.strip().removeprefix("W/") for t in value.split(",")]
    return "*" in tags or etag in tags


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """The single byte range [lo, hi) a `Range` header asks of a `size`-byte file.

    None when there is no usable header (several ranges or another unit: the whole file is
    sent, as RFC 9110 allows); Reject(416) when it cannot be satisfied.
    """
    if not value:
        return None
    unit, _, spec = value.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    try:
        if not dash:
            return None
        if not first.strip():  # a suffix: the last N bytes
            n = int(last)
            if n <= 0:
                raise Reject(416, f"Range {value!r} asks for no bytes")
            return max(0, size - n), size
        lo = int(first)
        hi = size if not last.strip() else min(size, int(last) + 1)
    except ValueError:
        return None
    if lo < 0 or lo >= size or hi <= lo:
        raise Reject(416, f"Range {value!r} is outside the {size}-byte file")
    return lo, hi


__all__ = [
    "CAR_TYPE",
    "RAW_TYPE",
    "Reject",
    "Want",
    "negotiate",
    "not_modified",
    "parse_entity_bytes",
    "parse_range",
    "resolve_range",
    "split_path",
]
