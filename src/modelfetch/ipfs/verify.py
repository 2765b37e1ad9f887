"""Checking a file's bytes against its UnixFS CID while they stream in."""

from __future__ import annotations

from modelfetch.errors import HashMismatch
from modelfetch.ipfs.cid import Cid
from modelfetch.ipfs.importer import (
    CIDV1_DEFAULTS,
    UNIXFS_V0_2015,
    UNIXFS_V1_2025,
    Profile,
    UnixFSFileBuilder,
)


def candidate_profiles(cid: Cid) -> tuple[Profile, ...]:
    """The importer settings that can have produced `cid` (a CIDv1 does not say its chunking)."""
    if cid.version == 0:
        return (UNIXFS_V0_2015,)
    return (CIDV1_DEFAULTS, UNIXFS_V1_2025)


class CidCheck:
    """Recomputes a file's CID from its bytes (same pass as SHA-256); `finish` compares."""

    def __init__(self, expected: str, *, name: str = "file") -> None:
        self.expected = Cid.parse(expected)
        self.name = name
        self._builders = [UnixFSFileBuilder(p) for p in candidate_profiles(self.expected)]

    def update(self, data: bytes | memoryview) -> None:
        chunk = bytes(data) if isinstance(data, memoryview) else data
        for builder in self._builders:
            builder.update(chunk)

    def finish(self) -> None:
        got = [Cid.parse(b.finish()) for b in self._builders]
        if self.expected not in got:
            raise HashMismatch(
                f"{self.name}: the bytes hash to CID {got[0]}, not the expected {self.expected}; "
                "they were discarded"
            )
