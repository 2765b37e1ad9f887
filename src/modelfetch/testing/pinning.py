"""A loopback Pinata: pinFileToIPFS, testAuthentication and the Pinning Service API under /psa."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

from aiohttp import BodyPartReader, web

from ..ipfs.cid import Cid
from ..ipfs.directory import directory_node
from ..ipfs.importer import (
    CIDV1_DEFAULTS,
    UNIXFS_V0_2015,
    DagNode,
    UnixFSFileBuilder,
    file_node,
)
from ._server import OriginServer, Target
from .faults import Fault

PSA_STATUSES: Final = ("queued", "pinning", "pinned", "failed")
"""The states of a pin request in the Pinning Service API."""

#: A delegate multiaddr the double hands out (no node listens there).
DELEGATE: Final = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWLoopbackPinningServiceDelegate"


@dataclass(frozen=True)
class ReceivedFile:
    """One file part of an upload: its path as sent, size, SHA-256 and UnixFS nodes."""

    path: str
    size: int
    sha256: str
    v0: DagNode
    v1: DagNode


@dataclass(frozen=True)
class Upload:
    """A `pinFileToIPFS` request the server accepted (credentials are not kept)."""

    name: str | None
    keyvalues: Mapping[str, Any]
    options: Mapping[str, Any]
    files: tuple[ReceivedFile, ...]
    cid: str  # what the server computed (a wrong_cid answer is not this)
    answered: str  # the IpfsHash it sent back


@dataclass
class PinRequest:
    """A pin request made through the Pinning Service API."""

    requestid: str
    cid: str
    name: str | None
    origins: list[str]
    meta: dict[str, Any]
    created: str
    statuses: tuple[str, ...]
    step: int = 0
    deleted: bool = False
    polls: int = 0

    @property
    def status(self) -> str:
        return self.statuses[min(self.step, len(self.statuses) - 1)]


@dataclass
class _Received:
    path: str
    sha: Any = field(default_factory=hashlib.sha256)
    v0: UnixFSFileBuilder = field(default_factory=lambda: UnixFSFileBuilder(UNIXFS_V0_2015))
    v1: UnixFSFileBuilder = field(default_factory=lambda: UnixFSFileBuilder(CIDV1_DEFAULTS))
    size: int = 0

    def update(self, data: bytes) -> None:
        self.sha.update(data)
        self.v0.update(data)
        self.v1.update(data)
        self.size += len(data)

    def finish(self) -> ReceivedFile:
        return ReceivedFile(
            self.path, self.size, self.sha.hexdigest(), self.v0.finish_node(), self.v1.finish_node()
        )


class PinataServer(OriginServer):
    """Pinata's API on 127.0.0.1, checking credentials and computing the CIDs of what it gets.

    - `GET /data/testAuthentication`
    - `POST /pinning/pinFileToIPFS` (multipart `file` parts named by path, `pinataMetadata`,
      `pinataOptions` with `cidVersion` 0/1 and `wrapWithDirectory`): answers
      `{IpfsHash, PinSize, Timestamp, isDuplicate}` with the CID computed from the bytes
      received (kubo's defaults for that CID version), as Pinata does.
    - Pinning Service API under `/psa`: `POST /pins`, `GET /pins`, `GET|DELETE /pins/{id}`
      (Bearer JWT only). Each `GET /pins/{id}` moves the request one step along
      `psa_statuses` (default queued -> pinned) and then stays at the last one.

    Credentials: `jwt` (`Authorization: Bearer`) and/or `api_key` + `api_secret`
    (`pinata_api_key` / `pinata_secret_api_key` headers); anything else gets 401.
    Fault knobs: `wrong_cid` (answer a CID other than the content's), `psa_statuses`
    (e.g. `("queued", "failed")`, or `("queued",)` forever), and the request-level faults of
    `inject()` (`faults.status(500)`, `faults.hang()`, ...; `path="pinFileToIPFS"` or
    `path="pins"`).
    """

    categories: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        *,
        jwt: str | None = "test-pinata-jwt",
        api_key: str | None = None,
        api_secret: str | None = None,
        port: int = 0,
    ) -> None:
        super().__init__(port=port)
        self.jwt = jwt
        self.api_key = api_key
        self.api_secret = api_secret
        self.wrong_cid = False
        self.psa_statuses: tuple[str, ...] = ("queued", "pinned")
        self._data_lock = threading.RLock()
        self._uploads: list[Upload] = []
        self._pins: dict[str, PinRequest] = {}
        self._pinned_cids: set[Cid] = set()

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "not started"
        return f"PinataServer({where})"

    # -- what was received ------------------------------------------------------------

    @property
    def uploads(self) -> list[Upload]:
        """Every accepted `pinFileToIPFS` upload, in order."""
        with self._data_lock:
            return list(self._uploads)

    @property
    def pins(self) -> list[PinRequest]:
        """Every Pinning Service request, in order of creation."""
        with self._data_lock:
            return list(self._pins.values())

    def set_psa_statuses(self, statuses: Iterable[str]) -> None:
        """The states the next pin requests go through, one per `GET /pins/{id}`."""
        seq = tuple(statuses)
        if not seq or any(s not in PSA_STATUSES for s in seq):
            raise ValueError(f"statuses must be a non-empty sequence of {PSA_STATUSES}")
        self.psa_statuses = seq

    @property
    def psa_url(self) -> str:
        """The Pinning Service API base URL (`<url>/psa`)."""
        return f"{self.url}/psa"

    # -- request handling -----------------------------------------------------------

    def _target(self, request: web.Request) -> Target:
        return Target("other", (request.path,))

    async def _answer_fault(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        if fault.kind not in ("hang", "drop"):
            await _drain(request)  # answer only once the upload is in, as a real server does
        return await super()._answer_fault(request, fault)

    async def _serve(self, request: web.Request, target: Target) -> web.StreamResponse:
        path = request.path.rstrip("/")
        if path == "/psa" or path.startswith("/psa/"):
            return await self._serve_psa(request, path[len("/psa") :])
        if not self._authorized(request, psa=False):
            await _drain(request)
            return _error(401, "INVALID_CREDENTIALS", "Invalid/expired credentials")
        if path == "/data/testAuthentication" and request.method == "GET":
            return web.json_response(
                {"message": "Congratulations! You are communicating with the Pinata API!"}
            )
        if path == "/pinning/pinFileToIPFS" and request.method == "POST":
            return await self._pin_file(request)
        await _drain(request)
        return _error(404, "NOT_FOUND", f"no route {request.method} {path}")

    def _authorized(self, request: web.Request, *, psa: bool) -> bool:
        auth = request.headers.get("Authorization", "")
        if self.jwt is not None and auth == f"Bearer {self.jwt}":
            return True
        if psa:
            return False
        key = request.headers.get("pinata_api_key")
        secret = request.headers.get("pinata_secret_api_key")
        return (
            self.api_key is not None
            and self.api_secret is not None
            and key == self.api_key
            and secret == self.api_secret
        )

    async def _pin_file(self, request: web.Request) -> web.StreamResponse:
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError) as exc:
            return _error(400, "BAD_REQUEST", f"expected multipart/form-data: {exc}")
        files: list[ReceivedFile] = []
        metadata: dict[str, Any] = {}
        options: dict[str, Any] = {}
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                return _error(400, "BAD_REQUEST", "nested multipart is not supported")
            if part.name == "file":
                name = (part.filename or "").lstrip("/")
                if not name or any(s in ("", ".", "..") for s in name.split("/")):
                    return _error(400, "BAD_REQUEST", f"bad file path {name!r}")
                acc = _Received(name)
                while chunk := await part.read_chunk(1 << 20):
                    acc.update(chunk)
                files.append(acc.finish())
            elif part.name in ("pinataMetadata", "pinataOptions"):
                try:
                    value = json.loads(await part.text())
                except ValueError:
                    return _error(400, "BAD_REQUEST", f"{part.name} is not JSON")
                if not isinstance(value, dict):
                    return _error(400, "BAD_REQUEST", f"{part.name} must be a JSON object")
                (metadata if part.name == "pinataMetadata" else options).update(value)
            else:
                await part.release()
        if not files:
            return _error(400, "BAD_REQUEST", "no file parts")
        version = options.get("cidVersion", 0)
        if version not in (0, 1, "0", "1"):
            return _error(400, "BAD_REQUEST", f"cidVersion {version!r} must be 0 or 1")
        v1 = int(version) == 1
        try:
            root = _root(files, v1=v1, wrap=bool(options.get("wrapWithDirectory", False)))
        except ValueError as exc:
            return _error(400, "BAD_REQUEST", str(exc))
        answered = str(_other_cid(root.cid)) if self.wrong_cid else str(root.cid)
        with self._data_lock:
            duplicate = root.cid in self._pinned_cids
            self._pinned_cids.add(root.cid)
            keyvalues = metadata.get("keyvalues")
            self._uploads.append(
                Upload(
                    name=metadata.get("name"),
                    keyvalues=dict(keyvalues) if isinstance(keyvalues, dict) else {},
                    options=options,
                    files=tuple(files),
                    cid=str(root.cid),
                    answered=answered,
                )
            )
        return web.json_response(
            {
                "IpfsHash": answered,
                "PinSize": root.size,
                "Timestamp": _now(),
                "isDuplicate": duplicate,
            }
        )

    # -- Pinning Service API ----------------------------------------------------------

    async def _serve_psa(self, request: web.Request, sub: str) -> web.StreamResponse:
        if not self._authorized(request, psa=True):
            await _drain(request)
            return _error(401, "UNAUTHORIZED", "access token is missing or invalid")
        if sub == "/pins" and request.method == "POST":
            return await self._psa_add(request)
        if sub == "/pins" and request.method == "GET":
            return self._psa_list(request)
        if sub.startswith("/pins/") and "/" not in sub[len("/pins/") :]:
            requestid = sub[len("/pins/") :]
            with self._data_lock:
                pin = self._pins.get(requestid)
                if pin is None or pin.deleted:
                    return _error(404, "NOT_FOUND", f"no pin request {requestid}")
                if request.method == "GET":
                    pin.polls += 1
                    pin.step += 1
                    return web.json_response(self._pin_status(pin))
                if request.method == "DELETE":
                    pin.deleted = True
                    return web.Response(status=202)
        await _drain(request)
        return _error(404, "NOT_FOUND", f"no route {request.method} /psa{sub}")

    async def _psa_add(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            cid = Cid.parse(str(body["cid"]))
        except (ValueError, KeyError, TypeError):
            return _error(400, "BAD_REQUEST", "body must be a Pin object with a valid cid")
        origins = body.get("origins") or []
        meta = body.get("meta") or {}
        if not isinstance(origins, list) or not isinstance(meta, dict):
            return _error(400, "BAD_REQUEST", "origins must be a list and meta an object")
        pin = PinRequest(
            requestid=uuid.uuid4().hex,
            cid=str(body["cid"]),
            name=body.get("name"),
            origins=[str(o) for o in origins],
            meta={str(k): v for k, v in meta.items()},
            created=_now(),
            statuses=self.psa_statuses,
        )
        with self._data_lock:
            self._pins[pin.requestid] = pin
            if pin.status == "pinned":
                self._pinned_cids.add(cid)
        return web.json_response(self._pin_status(pin), status=202)

    def _psa_list(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        cids = [c for c in query.get("cid", "").split(",") if c]
        statuses = [s for s in query.get("status", "pinned").split(",") if s]
        try:
            wanted = {Cid.parse(c) for c in cids}
        except ValueError:
            return _error(400, "BAD_REQUEST", "bad cid filter")
        with self._data_lock:
            found = [
                self._pin_status(p)
                for p in self._pins.values()
                if not p.deleted
                and p.status in statuses
                and (not wanted or Cid.parse(p.cid) in wanted)
            ]
        return web.json_response({"count": len(found), "results": found})

    def _pin_status(self, pin: PinRequest) -> dict[str, Any]:
        cid = str(_other_cid(Cid.parse(pin.cid))) if self.wrong_cid else pin.cid
        info: dict[str, Any] = {}
        if pin.status == "failed":
            info["status_details"] = "could not fetch the DAG from the network or origins"
        return {
            "requestid": pin.requestid,
            "status": pin.status,
            "created": pin.created,
            "pin": {"cid": cid, "name": pin.name, "origins": pin.origins, "meta": pin.meta},
            "delegates": [DELEGATE],
            "info": info,
        }


def _root(files: Sequence[ReceivedFile], *, v1: bool, wrap: bool) -> DagNode:
    """The CID Pinata reports: the common top directory, a lone file, or the wrapper."""
    profile = CIDV1_DEFAULTS if v1 else UNIXFS_V0_2015
    nodes = {f.path: (f.v1 if v1 else f.v0) for f in files}
    if len(nodes) != len(files):
        raise ValueError("a file path was sent twice")
    if wrap:
        return directory_node(nodes, profile)
    tops = {p.split("/", 1)[0] for p in nodes}
    if len(nodes) == 1 and "/" not in next(iter(nodes)):
        return next(iter(nodes.values()))
    if len(tops) != 1 or any("/" not in p for p in nodes):
        raise ValueError(
            "several files must share one top directory (path 'dir/...') "
            "unless wrapWithDirectory is true"
        )
    return directory_node({p.split("/", 1)[1]: n for p, n in nodes.items()}, profile)


def _other_cid(cid: Cid) -> Cid:
    """A valid CID of the same version that is not `cid` (for the wrong_cid fault)."""
    node = file_node(b"not what was uploaded: " + bytes(cid), cid_version=cid.version)
    return node.cid


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error(status: int, reason: str, details: str) -> web.Response:
    return web.json_response({"error": {"reason": reason, "details": details}}, status=status)


async def _drain(request: web.Request) -> None:
    """Read and discard whatever is left of the request body."""
    with contextlib.suppress(Exception):
        while await request.content.readany():
            pass


__all__ = ["DELEGATE", "PSA_STATUSES", "PinRequest", "PinataServer", "ReceivedFile", "Upload"]
