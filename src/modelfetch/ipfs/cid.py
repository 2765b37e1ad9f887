"""CIDs as plain values: parse, print and check blocks against them (fast, no per-block objects)."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Final

from modelfetch.errors import BadBlock

# multicodec codes
DAG_PB: Final = 0x70
RAW: Final = 0x55
DAG_CBOR: Final = 0x71
# multihash codes
IDENTITY: Final = 0x00
SHA2_256: Final = 0x12
SHA2_512: Final = 0x13
BLAKE2B_256: Final = 0xB220

#: Largest inline (identity-hashed) block accepted: the limit kubo and boxo apply.
MAX_IDENTITY_DIGEST: Final = 128

_HASHES: Final[dict[int, tuple[str, int]]] = {
    SHA2_256: ("sha256", 32),
    SHA2_512: ("sha512", 64),
    BLAKE2B_256: ("blake2b-256", 32),
}
_CODEC_NAMES: Final = {DAG_PB: "dag-pb", RAW: "raw", DAG_CBOR: "dag-cbor"}
_HASH_NAMES: Final = {
    IDENTITY: "identity",
    SHA2_256: "sha2-256",
    SHA2_512: "sha2-512",
    BLAKE2B_256: "blake2b-256",
}
_B58: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX: Final = {c: i for i, c in enumerate(_B58)}


def encode_varint(n: int) -> bytes:
    """The unsigned LEB128 varint of `n` (protobuf, multiformats and CAR use it)."""
    if n < 0:
        raise ValueError("varint of a negative number")
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def decode_varint(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int]:
    """Read an unsigned varint at `pos`; returns (value, position after it). ValueError if bad."""
    result = 0
    shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            if b == 0 and shift:
                raise ValueError("varint is not minimally encoded")
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 9 bytes")


def _b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(out))


def _b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        try:
            n = n * 58 + _B58_INDEX[c]
        except KeyError:
            raise ValueError(f"not base58btc: {c!r}") from None
    pad = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * pad + body


@dataclass(frozen=True, slots=True)
class Cid:
    """A content identifier: version, content codec and multihash (hash code + digest).

    `str(cid)` is the canonical text (base58btc for v0, base32 for v1); `bytes(cid)` the binary
    form used inside dag-pb links and CAR files. Hashable: use it as a dict key.

    >>> c = Cid.parse("bafkqaaa")
    >>> (c.version, c.codec, c.hash_code, c.digest)
    (1, 85, 0, b'')
    """

    version: int
    codec: int
    hash_code: int
    digest: bytes

    def __post_init__(self) -> None:
        if self.version == 0 and (
            self.codec != DAG_PB or self.hash_code != SHA2_256 or len(self.digest) != 32
        ):
            raise ValueError("a CIDv0 is always dag-pb + sha2-256")
        if self.version not in (0, 1):
            raise ValueError(f"unsupported CID version {self.version}")

    @property
    def multihash(self) -> bytes:
        """The multihash: varint hash code, varint digest length, digest."""
        return encode_varint(self.hash_code) + encode_varint(len(self.digest)) + self.digest

    def __bytes__(self) -> bytes:
        """The binary CID (as stored in dag-pb links and CAR sections)."""
        if self.version == 0:
            return self.multihash
        return b"\x01" + encode_varint(self.codec) + self.multihash

    @property
    def codec_name(self) -> str:
        """The codec's multicodec name (`dag-pb`, `raw`, …) or its hex code."""
        return _CODEC_NAMES.get(self.codec, hex(self.codec))

    @property
    def is_identity(self) -> bool:
        """True when the block is inlined in the CID itself (identity multihash)."""
        return self.hash_code == IDENTITY

    def to_v1(self) -> Cid:
        """The same content as a CIDv1."""
        return Cid(1, self.codec, self.hash_code, self.digest)

    def __str__(self) -> str:
        if self.version == 0:
            return _b58encode(self.multihash)
        return "b" + base64.b32encode(bytes(self)).decode("ascii").lower().rstrip("=")

    def __repr__(self) -> str:
        return f"Cid({str(self)!r})"

    @classmethod
    def parse(cls, value: str | bytes | bytearray | memoryview | Cid) -> Cid:
        """A CID from its text (v0 `Qm…`, multibase b/B/z/f/F/k/u/m…) or binary form."""
        if isinstance(value, Cid):
            return value
        if isinstance(value, str):
            return cls._from_text(value)
        cid, end = cls.read(value, 0)
        if end != len(value):
            raise ValueError("trailing bytes after the CID")
        return cid

    @classmethod
    def read(cls, buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[Cid, int]:
        """Read a binary CID at `pos` (CAR sections, links); returns (cid, position after it)."""
        if len(buf) - pos >= 34 and buf[pos] == 0x12 and buf[pos + 1] == 0x20:
            return cls(0, DAG_PB, SHA2_256, bytes(buf[pos + 2 : pos + 34])), pos + 34
        version, p = decode_varint(buf, pos)
        if version != 1:
            raise ValueError(f"unsupported CID version {version}")
        codec, p = decode_varint(buf, p)
        code, p = decode_varint(buf, p)
        size, p = decode_varint(buf, p)
        if p + size > len(buf):
            raise ValueError("truncated multihash digest")
        return cls(1, codec, code, bytes(buf[p : p + size])), p + size

    @classmethod
    def _from_text(cls, text: str) -> Cid:
        text = text.strip()
        if not text:
            raise ValueError("empty CID")
        if len(text) == 46 and text.startswith("Qm"):
            return cls.parse(_b58decode(text))
        prefix, body = text[0], text[1:]
        if prefix in "bB":
            raw = base64.b32decode(body.upper() + "=" * (-len(body) % 8))
        elif prefix == "z":
            raw = _b58decode(body)
        elif prefix in "fF":
            raw = bytes.fromhex(body)
        else:
            from multiformats import CID as _MultiformatsCID  # rarer bases: defer to multiformats

            try:
                return cls.parse(bytes(_MultiformatsCID.decode(text)))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"not a CID: {text!r} ({exc})") from None
        cid = cls.parse(raw)
        if cid.version == 0:
            raise ValueError("a CIDv0 has no multibase prefix")
        return cid


def make_cid(version: int, codec: int, data: bytes | bytearray | memoryview) -> Cid:
    """The sha2-256 CID of a block (version 0 implies dag-pb)."""
    return Cid(version, codec, SHA2_256, hashlib.sha256(data).digest())


def verify_block(cid: Cid | str, data: bytes | bytearray | memoryview) -> None:
    """Check that `data` is the block `cid` names; raise BadBlock (with the reason) if not.

    Supports sha2-256 (what every IPFS tool writes), sha2-512, blake2b-256 and identity
    (inline) multihashes.

    >>> verify_block("bafkqaaa", b"")
    """
    c = Cid.parse(cid)
    if c.hash_code == IDENTITY:
        if len(c.digest) > MAX_IDENTITY_DIGEST:
            raise BadBlock(f"block {c}: identity CID longer than {MAX_IDENTITY_DIGEST} bytes")
        if bytes(data) != c.digest:
            raise BadBlock(f"block {c}: bytes differ from the data inlined in its identity CID")
        return
    try:
        name, size = _HASHES[c.hash_code]
    except KeyError:
        raise BadBlock(
            f"block {c}: unsupported multihash {_HASH_NAMES.get(c.hash_code, hex(c.hash_code))}"
        ) from None
    if len(c.digest) != size:
        raise BadBlock(f"block {c}: {_HASH_NAMES[c.hash_code]} digest of {len(c.digest)} bytes")
    if name == "blake2b-256":
        got = hashlib.blake2b(data, digest_size=32).digest()
    else:
        got = hashlib.new(name, data).digest()
    if got != c.digest:
        raise BadBlock(
            f"block {c}: its {len(data)} bytes hash to {got.hex()}, not to the CID's digest "
            f"{c.digest.hex()} (corrupt or substituted data; it was discarded)"
        )
