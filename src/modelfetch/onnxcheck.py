"""Cheap structural check that a file is an ONNX model protobuf."""

from __future__ import annotations

import os
from typing import Final, TypeAlias

from modelfetch.errors import NotONNX

__all__ = ["MAX_IR_VERSION", "OnnxStreamCheck", "check_onnx_file"]

#: Highest `ir_version` taken as plausible. onnx 1.23 writes 14; this leaves room for years.
MAX_IR_VERSION: Final = 32

_Buf: TypeAlias = bytes | bytearray | memoryview

# Protobuf wire types.
_VARINT: Final = 0
_I64: Final = 1
_LEN: Final = 2
_I32: Final = 5
_WIRE_NAMES: Final = {
    0: "varint",
    1: "64-bit",
    2: "length-delimited",
    3: "start group",
    4: "end group",
    5: "32-bit",
}

# Field tables (number -> (name, wire type)), from onnx.proto of onnx 1.23.
_MODEL_FIELDS: Final[dict[int, tuple[str, int]]] = {
    1: ("ir_version", _VARINT),
    2: ("producer_name", _LEN),
    3: ("producer_version", _LEN),
    4: ("domain", _LEN),
    5: ("model_version", _VARINT),
    6: ("doc_string", _LEN),
    7: ("graph", _LEN),
    8: ("opset_import", _LEN),
    14: ("metadata_props", _LEN),
    20: ("training_info", _LEN),
    25: ("functions", _LEN),
    26: ("configuration", _LEN),
}
_GRAPH_FIELDS: Final[dict[int, tuple[str, int]]] = {
    1: ("node", _LEN),
    2: ("name", _LEN),
    5: ("initializer", _LEN),
    10: ("doc_string", _LEN),
    11: ("input", _LEN),
    12: ("output", _LEN),
    13: ("value_info", _LEN),
    14: ("quantization_annotation", _LEN),
    15: ("sparse_initializer", _LEN),
    16: ("metadata_props", _LEN),
}
_OPSET_FIELDS: Final[dict[int, tuple[str, int]]] = {
    1: ("domain", _LEN),
    2: ("version", _VARINT),
}
_EMPTY_FIELDS: Final[dict[int, tuple[str, int]]] = {}
# Top-level fields whose own field headers are walked (contents of their fields are skipped).
_NESTED: Final[dict[int, dict[int, tuple[str, int]]]] = {7: _GRAPH_FIELDS, 8: _OPSET_FIELDS}

# One-byte tags of the known length-delimited fields of each walked field (for `_walk`).
_FAST_TAGS: Final[dict[int, frozenset[int]]] = {
    top: frozenset((f << 3) | _LEN for f, (_, wire) in table.items() if wire == _LEN and f < 16)
    for top, table in _NESTED.items()
}

_IR_VERSION: Final = 1
_GRAPH: Final = 7
_OPSET_IMPORT: Final = 8
_MAX_FIELD: Final = (1 << 29) - 1
_MAX_LEN: Final = (1 << 31) - 1  # protobuf refuses longer length-delimited fields
_MAX_VARINT: Final = 10
_MAX_HEADER: Final = 2 * _MAX_VARINT  # tag varint + value or length varint
_HEAD: Final = 32  # leading bytes kept to say what a rejected file looks like
_READ_SIZE: Final = 1 << 16

_SIGNATURES: Final = (
    (b"<", "HTML or XML, not a model"),
    (b"{", "JSON, not a model"),
    (b"[", "JSON, not a model"),
    (b"version https://git-lfs", "a Git LFS pointer file, not the model"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x1f\x8b", "gzip-compressed"),
    (b"\x89HDF", "an HDF5 file"),
)


def _field_desc(field: int, table: dict[int, tuple[str, int]]) -> str:
    spec = table.get(field)
    return f"field {field} ({spec[0] if spec else 'unknown'})"


def _varint(buf: _Buf, pos: int, end: int, base: int) -> tuple[int, int] | None:
    """Decode a varint at buf[pos]: (value, next pos), or None if it continues past `end`."""
    result = 0
    shift = 0
    start = pos
    limit = min(end, pos + _MAX_VARINT)
    while pos < limit:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
    if pos - start >= _MAX_VARINT:
        raise NotONNX(
            f"not a protobuf: varint longer than {_MAX_VARINT} bytes at byte {base + start}"
        )
    return None


class OnnxStreamCheck:
    """Incremental ONNX structure check: feed every byte with `update`, then call `finish`.

    Memory is O(1): length-delimited fields are passed over by counting, never buffered, and a
    chunk that lies wholly inside such a field costs O(1). `update` raises `NotONNX` as soon as
    the bytes cannot be an ONNX model (so a download can stop early); after that every call
    raises again. `finish` raises `NotONNX` unless the bytes fed so far form a whole model; it
    does not change the state.
    """

    __slots__ = (
        "_error",
        "_fed",
        "_graphs",
        "_head",
        "_ir_version",
        "_nest_end",
        "_nest_field",
        "_nest_table",
        "_opsets",
        "_pending",
        "_skip",
        "_skip_end",
        "_skip_field",
        "_skip_parent",
    )

    def __init__(self) -> None:
        self._fed = 0  # bytes passed to update(): the absolute offset of the next chunk
        self._head = b""  # the first _HEAD bytes, to describe a rejected file
        self._pending = b""  # an incomplete field header at the end of the last chunk
        self._skip = 0  # bytes of the current field's content still to pass over
        self._skip_field = 0  # which field is being passed over ...
        self._skip_parent = 0  # ... inside which top-level field (0: at top level)
        self._skip_end = 0  # ... and where it ends
        self._nest_field = 0  # top-level field whose headers are being walked (0: none)
        self._nest_end = 0
        self._nest_table = _EMPTY_FIELDS
        self._ir_version: int | None = None
        self._graphs = 0
        self._opsets = 0
        self._error: str | None = None

    def update(self, data: _Buf) -> None:
        """Take the next chunk of the stream; raise `NotONNX` if it cannot be an ONNX model."""
        if self._error is not None:
            raise NotONNX(self._error)
        n = len(data)
        if self._fed < _HEAD:
            self._head += bytes(data[: _HEAD - self._fed])
        skip = self._skip
        if skip >= n:  # the whole chunk is inside a field being passed over
            self._skip = skip - n
            self._fed += n
            return
        try:
            self._parse(data, n)
        except NotONNX as exc:
            self._error = str(exc)
            raise

    def finish(self) -> None:
        """Raise `NotONNX` unless everything fed so far is a complete ONNX model."""
        if self._error is not None:
            raise NotONNX(self._error)
        end = self._fed
        if end == 0:
            raise NotONNX("empty file")
        nest = self._nest_field
        if self._pending:
            start = end - len(self._pending)
            where = (
                f" inside {_field_desc(nest, _MODEL_FIELDS)}"
                if nest and start < self._nest_end
                else ""
            )
            raise NotONNX(
                f"truncated{where} at byte {end}: incomplete field header from byte {start}"
            )
        if self._skip:
            if self._skip_parent:
                where = (
                    f"{_field_desc(self._skip_parent, _MODEL_FIELDS)} > "
                    f"{_field_desc(self._skip_field, _NESTED[self._skip_parent])}"
                )
            else:
                where = _field_desc(self._skip_field, _MODEL_FIELDS)
            raise NotONNX(
                f"truncated inside {where} at byte {end}: the field runs to byte {self._skip_end}"
            )
        if nest and self._nest_end > end:
            raise NotONNX(
                f"truncated inside {_field_desc(nest, _MODEL_FIELDS)} at byte {end}: "
                f"the field runs to byte {self._nest_end}"
            )
        if self._ir_version is None:
            raise NotONNX(f"no ir_version field (field 1) in {end} bytes{self._hint()}")
        if not self._graphs:
            raise NotONNX(f"no graph field (field 7) in {end} bytes{self._hint()}")
        if not self._opsets and self._ir_version >= 3:
            raise NotONNX(
                f"no opset_import field (field 8), required since ir_version 3 "
                f"(this is {self._ir_version})"
            )

    # -- internals ------------------------------------------------------------------------

    def _skip_over(self, n: int) -> None:
        """Account for `n` bytes of the field being passed over that the caller seeked past."""
        self._skip -= n
        self._fed += n

    def _hint(self) -> str:
        head = self._head.lstrip(b" \t\r\n\xef\xbb\xbf")
        for signature, what in _SIGNATURES:
            if head.startswith(signature):
                return f" (the data starts with {self._head[:24]!r}: {what})"
        return ""

    def _fail(self, message: str, nest: int) -> NotONNX:
        where = f"inside {_field_desc(nest, _MODEL_FIELDS)}: " if nest else ""
        return NotONNX(where + message + self._hint())

    def _parse(self, data: _Buf, n: int) -> None:
        """Parse field headers in `data` (its first `self._skip` bytes are field content)."""
        base = self._fed
        pos = self._skip
        self._skip = 0
        if self._pending:  # finish a header split across chunks (here pos == 0)
            pend = self._pending
            buf = pend + bytes(data[:_MAX_HEADER])
            r = self._header(buf, 0, len(buf), base - len(pend))
            if r is None:
                if n >= _MAX_HEADER:  # pragma: no cover - a header is at most _MAX_HEADER bytes
                    raise AssertionError("incomplete field header longer than possible")
                self._pending = buf
                self._fed = base + n
                return
            self._pending = b""
            pos = r - len(pend)
        while True:
            skip = self._skip
            if skip:
                if skip >= n - pos:
                    self._skip = skip - (n - pos)
                    break
                pos += skip
                self._skip = 0
            if pos >= n:
                break
            if self._nest_field:
                walked = self._walk(data, pos, n, base)
                if walked != pos:
                    pos = walked
                    continue
            r = self._header(data, pos, n, base)
            if r is None:
                self._pending = bytes(data[pos:n])
                break
            pos = r
        self._fed = base + n

    def _walk(self, data: _Buf, pos: int, n: int, base: int) -> int:
        """Fast path of `_header` inside a walked field: pass over its small known fields.

        Handles only one-byte tags of known length-delimited fields with lengths of one or two
        bytes that end inside the walked field; stops (returning the position reached) at
        anything else, which `_header` then deals with.
        """
        fast_tags = _FAST_TAGS[self._nest_field]
        limit = min(n, self._nest_end - base)
        while pos + 1 < limit:
            tag = data[pos]
            if tag not in fast_tags:
                break
            b = data[pos + 1]
            if b < 0x80:
                p = pos + 2 + b
            elif pos + 2 < limit and data[pos + 2] < 0x80:
                p = pos + 3 + ((b & 0x7F) | (data[pos + 2] << 7))
            else:
                break
            if base + p > self._nest_end:
                break  # _header reports the overrun
            if p > n:
                self._skip = p - n
                self._skip_field = tag >> 3
                self._skip_parent = self._nest_field
                self._skip_end = base + p
                return n
            pos = p
        return pos

    def _header(self, buf: _Buf, pos: int, end: int, base: int) -> int | None:
        """Parse the field header at buf[pos] (absolute offset base + pos) and act on it.

        Returns the position after the header (content of a length-delimited or fixed-size
        field is left in self._skip), or None if the header continues past `end`; in that case
        nothing was changed that re-parsing the same bytes would not change the same way.
        """
        nest = self._nest_field
        if nest and base + pos >= self._nest_end:  # the walked top-level field ended here
            nest = self._nest_field = 0
        tag = buf[pos]
        if tag < 0x80:
            p = pos + 1
        else:
            r = _varint(buf, pos, end, base)
            if r is None:
                return None
            tag, p = r
        wire = tag & 7
        field = tag >> 3
        table = self._nest_table if nest else _MODEL_FIELDS
        spec = table.get(field)
        if spec is None or spec[1] != wire:
            self._check_tag(field, wire, spec, nest, base + pos)
        if wire == _LEN:
            r = _varint(buf, p, end, base)
            if r is None:
                return None
            length, p = r
            stop = base + p + length
            if length > _MAX_LEN:
                raise self._fail(
                    f"not a protobuf: {_field_desc(field, table)} at byte {base + pos} claims "
                    f"{length} bytes, over the 2 GiB protobuf limit",
                    nest,
                )
            if nest:
                if stop > self._nest_end:
                    raise self._fail(
                        f"{_field_desc(field, table)} at byte {base + pos} runs to byte {stop}, "
                        f"past the end of the {_MODEL_FIELDS[nest][0]} at byte {self._nest_end}",
                        nest,
                    )
            elif field in _NESTED:
                if field == _GRAPH:
                    self._graphs += 1
                else:
                    self._opsets += 1
                self._nest_field = field
                self._nest_end = stop
                self._nest_table = _NESTED[field]
                return p
            self._skip = length
            self._skip_field = field
            self._skip_parent = nest
            self._skip_end = stop
            return p
        if wire == _VARINT:
            r = _varint(buf, p, end, base)
            if r is None:
                return None
            value, p = r
            if nest:
                if base + p > self._nest_end:
                    raise self._fail(
                        f"{_field_desc(field, table)} at byte {base + pos} runs past the end of "
                        f"the {_MODEL_FIELDS[nest][0]} at byte {self._nest_end}",
                        nest,
                    )
            elif field == _IR_VERSION:
                if not 1 <= value <= MAX_IR_VERSION:
                    raise self._fail(
                        f"implausible ir_version {value} at byte {base + pos} "
                        f"(expected 1..{MAX_IR_VERSION})",
                        0,
                    )
                self._ir_version = value
            return p
        size = 8 if wire == _I64 else 4
        stop = base + p + size
        if nest and stop > self._nest_end:
            raise self._fail(
                f"{_field_desc(field, table)} at byte {base + pos} runs past the end of "
                f"the {_MODEL_FIELDS[nest][0]} at byte {self._nest_end}",
                nest,
            )
        self._skip = size
        self._skip_field = field
        self._skip_parent = nest
        self._skip_end = stop
        return p

    def _check_tag(
        self, field: int, wire: int, spec: tuple[str, int] | None, nest: int, at: int
    ) -> None:
        """Raise for a tag that is not valid here (the slow path of `_header`)."""
        if wire in (6, 7):
            raise self._fail(f"not a protobuf: wire type {wire} at byte {at}", nest)
        if wire in (3, 4):
            raise self._fail(
                f"not an ONNX model: wire type {wire} ({_WIRE_NAMES[wire]}, never used by ONNX) "
                f"for field {field} at byte {at}",
                nest,
            )
        if field == 0 or field > _MAX_FIELD:
            raise self._fail(f"not a protobuf: field number {field} at byte {at}", nest)
        if spec is not None and spec[1] != wire:
            raise self._fail(
                f"field {field} ({spec[0]}) at byte {at} has wire type {wire} "
                f"({_WIRE_NAMES[wire]}), expected {spec[1]} ({_WIRE_NAMES[spec[1]]})",
                nest,
            )
        # an unknown field number with a valid wire type is tolerated, as protobuf does


def check_onnx_file(path: os.PathLike[str] | str) -> None:
    """Raise `NotONNX` unless the file at `path` is structurally an ONNX model.

    Same rules as `OnnxStreamCheck`, but large fields are seeked over, so only field headers
    (and small fields) are read. Raises `OSError` if the file cannot be opened or read.
    """
    check = OnnxStreamCheck()
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        seekable = f.seekable()
        pos = 0
        while True:
            skip = check._skip
            if skip > _READ_SIZE and seekable:
                step = min(skip, size - pos)  # never past EOF: finish() reports the truncation
                if step > 0:
                    f.seek(step, os.SEEK_CUR)
                    check._skip_over(step)
                    pos += step
            chunk = f.read(_READ_SIZE)
            if not chunk:
                break
            pos += len(chunk)
            check.update(chunk)
    check.finish()
