"""Loopback origins (HF hub, IPFS gateway) speaking the real protocols, with injectable faults."""

from __future__ import annotations

from . import faults
from ._server import Blob, OriginServer, Target
from .faults import Fault, FaultKind, On, unused_url
from .gateway import EMPTY_CID, GatewayServer
from .hub import HubFile, HubServer, RepoType, git_blob_sha1
from .pinning import PinataServer
from .trustless import MemoryBackend, NodeBackend, TrustlessFault, TrustlessGatewayServer

__all__ = [
    "EMPTY_CID",
    "Blob",
    "Fault",
    "FaultKind",
    "GatewayServer",
    "HubFile",
    "HubServer",
    "MemoryBackend",
    "NodeBackend",
    "On",
    "OriginServer",
    "PinataServer",
    "RepoType",
    "Target",
    "TrustlessFault",
    "TrustlessGatewayServer",
    "faults",
    "git_blob_sha1",
    "unused_url",
]
