"""Loopback origins (HF hub, IPFS gateways, pinning) speaking the real protocols, with faults.

Every origin is an `OriginServer`: faults are injected with `inject()` (see `faults`), rate
caps set with `limit()`, and counters (`requests`, `bytes_sent`, `sent_ranges`, ...) read back.
"""

from __future__ import annotations

from . import faults
from ._server import OriginServer
from .blob import Blob
from .counters import SentRange
from .faults import Fault, FaultKind, FaultLevel, On, unused_url
from .gateway import EMPTY_CID, GatewayServer
from .hub import HubFile, HubServer, RepoType, git_blob_sha1
from .pinning import PinataServer
from .rules import FaultRule, FaultRules, Target
from .trustless import MemoryBackend, NodeBackend, TrustlessFault, TrustlessGatewayServer

__all__ = [
    "EMPTY_CID",
    "Blob",
    "Fault",
    "FaultKind",
    "FaultLevel",
    "FaultRule",
    "FaultRules",
    "GatewayServer",
    "HubFile",
    "HubServer",
    "MemoryBackend",
    "NodeBackend",
    "On",
    "OriginServer",
    "PinataServer",
    "RepoType",
    "SentRange",
    "Target",
    "TrustlessFault",
    "TrustlessGatewayServer",
    "faults",
    "git_blob_sha1",
    "unused_url",
]
