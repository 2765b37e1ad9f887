"""A loopback IPFS trustless gateway (`?format=raw|car`) over a real node or in-memory blocks."""

from __future__ import annotations

from ...server.gateway.request import CAR_TYPE, RAW_TYPE
from .backends import BlockBackend, MemoryBackend, NodeBackend
from .faults import (
    UNRELATED_BLOCK,
    UNRELATED_CID,
    TrustlessFault,
    TrustlessFaultKind,
    car_cut_short,
    extra_block,
    flip_block_byte,
    wrong_root,
)
from .server import PROBE_CID, CarRoots, DagScope, TrustlessGatewayServer

__all__ = [
    "CAR_TYPE",
    "PROBE_CID",
    "RAW_TYPE",
    "UNRELATED_BLOCK",
    "UNRELATED_CID",
    "BlockBackend",
    "CarRoots",
    "DagScope",
    "MemoryBackend",
    "NodeBackend",
    "TrustlessFault",
    "TrustlessFaultKind",
    "TrustlessGatewayServer",
    "car_cut_short",
    "extra_block",
    "flip_block_byte",
    "wrong_root",
]
