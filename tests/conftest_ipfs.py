"""Pytest fixtures: real js-ipfs nodes (kubo-compatible RPC + gateway) on loopback.

`ipfs_node`: one offline node. `ipfs_pair`: two online nodes whose only swarm addresses are
on 127.0.0.1, connected to each other (and to nobody else: no bootstrap, no mDNS), so blocks
move between them over bitswap.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "ipfs-node.sh"
POLYFILL = REPO / "tests" / "ipfs_node" / "polyfill.cjs"
REQUIRE_ENV = "MODELFETCH_REQUIRE_IPFS_NODE"
START_TIMEOUT = 90.0
#: The environment as pytest started: fixtures that isolate tests (XDG_CACHE_HOME -> tmp) must
#: not hide the node installed under the user's cache dir.
_ENV = dict(os.environ)


@dataclass(frozen=True)
class IpfsNode:
    """A running node: RPC base (`…/api/v0`), path gateway base, its repo and log file."""

    api: str
    gateway: str
    ipfs_path: Path
    log: Path
    swarm: str | None = None  # the libp2p listen address of an online node

    @property
    def rpc(self) -> str:
        """The RPC base URL, without `/api/v0` (what `[ipfs] rpc` takes)."""
        return self.api.removesuffix("/api/v0")


def _unavailable(reason: str) -> None:
    if _ENV.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1, so this is an error)", pytrace=False)
    pytest.skip(f"{reason}; run `scripts/ipfs-node.sh install` to enable these tests")


def _jsipfs() -> Path:
    try:
        out = subprocess.run(
            ["bash", str(SCRIPT), "path"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=_ENV,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"cannot run {SCRIPT}: {exc}")
        raise  # unreachable: _unavailable always raises
    if out.returncode != 0 or not out.stdout.strip():
        _unavailable("the js-ipfs test node is not installed")
    return Path(out.stdout.strip())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(api: str) -> bool:
    try:
        req = urllib.request.Request(f"{api}/version", method="POST")
        with urllib.request.urlopen(req, timeout=2) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def _post_json(url: str) -> dict[str, object]:
    req = urllib.request.Request(url, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        data = json.loads(resp.read() or b"{}")
    assert isinstance(data, dict)
    return data


def _start(
    jsipfs: Path, base: Path, *, online: bool = False
) -> tuple[subprocess.Popen[bytes], IpfsNode]:
    api_port, gw_port, grpc_port = _free_port(), _free_port(), _free_port()
    swarm = f"/ip4/127.0.0.1/tcp/{_free_port()}" if online else None
    repo = base / "repo"
    config = base / "init-config.json"
    config.write_text(
        json.dumps(
            {
                "Addresses": {
                    "API": f"/ip4/127.0.0.1/tcp/{api_port}",
                    "Gateway": f"/ip4/127.0.0.1/tcp/{gw_port}",
                    "RPC": f"/ip4/127.0.0.1/tcp/{grpc_port}",
                    # offline: no libp2p listener at all; online: loopback only
                    "Swarm": [swarm] if swarm else [],
                    "Delegates": [],
                },
                "Bootstrap": [],
                "Discovery": {"MDNS": {"Enabled": False}, "webRTCStar": {"Enabled": False}},
            }
        )
    )
    env = dict(_ENV)
    env["IPFS_PATH"] = str(repo)
    env["NODE_OPTIONS"] = f"--require {POLYFILL} {env.get('NODE_OPTIONS', '')}".strip()
    log = base / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(jsipfs),
                "daemon",
                *([] if online else ["--offline"]),
                "--init-profile",
                "test",
                "--init-config",
                str(config),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    node = IpfsNode(
        f"http://127.0.0.1:{api_port}/api/v0", f"http://127.0.0.1:{gw_port}", repo, log, swarm
    )
    return proc, node


@contextmanager
def _running(
    jsipfs: Path, tmp_path_factory: pytest.TempPathFactory, name: str, *, online: bool
) -> Iterator[IpfsNode]:
    """A started node (two tries: a port picked as free may be taken before it binds it)."""
    last_log = ""
    for attempt in range(2):
        base = tmp_path_factory.mktemp(f"{name}-{attempt}")
        proc, node = _start(jsipfs, base, online=online)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                if _answers(node.api):
                    break
                time.sleep(0.25)
            if proc.poll() is None and _answers(node.api):
                yield node
                return
        finally:
            _stop(proc)
        last_log = node.log.read_text(errors="replace")[-3000:]
    pytest.fail(f"the js-ipfs node did not start; its log ends with:\n{last_log}", pytrace=False)


@pytest.fixture(scope="session")
def ipfs_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IpfsNode]:
    """Start a js-ipfs node in a temp repo on free loopback ports; stop it at the end."""
    with _running(_jsipfs(), tmp_path_factory, "ipfs-node", online=False) as node:
        yield node


@pytest.fixture(scope="module")
def ipfs_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[IpfsNode, IpfsNode]]:
    """Two online nodes on loopback swarm ports, B connected to A (no other peer exists)."""
    jsipfs = _jsipfs()
    with (
        _running(jsipfs, tmp_path_factory, "ipfs-a", online=True) as a,
        _running(jsipfs, tmp_path_factory, "ipfs-b", online=True) as b,
    ):
        peer = _post_json(f"{a.api}/id")["ID"]
        _post_json(f"{b.api}/swarm/connect?arg={a.swarm}/p2p/{peer}")
        yield a, b
