"""How fast a machine's own IPFS node serves a file, verified, by each path it offers.

Run: .venv/bin/python bench/ipfs_fleet.py [--mib 64] [--runs 3]

Two real js-ipfs nodes (scripts/ipfs-node.sh install) on loopback: A holds a file (added with
`--cid-version=1`, raw leaves, 256 KiB chunks), B starts empty and is connected only to A.
Every path checks what it got, as modelfetch would:
- path gateway `GET /ipfs/<cid>` (plain bytes: the UnixFS CID recomputed over them);
- RPC `dag/export` (one CAR stream; every block hash-checked while the file is rebuilt);
- RPC `block/get`, 16 or 64 blocks in flight (each block hash-checked), and 1 at a time.
"local" reads from A, which has every block; "bitswap" from B after `repo/gc`, so each run
moves the blocks from A to B again. MB/s = file bytes / wall seconds, median of the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from modelfetch.httpclient import Client, Timeouts
from modelfetch.ipfs.cid import Cid
from modelfetch.ipfs.dagfile import iter_car_stream_file
from modelfetch.ipfs.importer import CIDV1_DEFAULTS, UnixFSFileBuilder
from modelfetch.ipfs.rpc import RpcBlocks

REPO = Path(__file__).resolve().parents[1]
POLYFILL = REPO / "tests" / "ipfs_node" / "polyfill.cjs"
MiB = 1 << 20


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> bytes:
    req = urllib.request.Request(url, data=data or b"", method="POST", headers=headers or {})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return bytes(resp.read())


class Node:
    """One online js-ipfs daemon on loopback ports."""

    def __init__(self, jsipfs: str, base: Path) -> None:
        self.api_port, self.gw_port, self.swarm_port = _port(), _port(), _port()
        config = base / "init.json"
        config.write_text(
            json.dumps(
                {
                    "Addresses": {
                        "API": f"/ip4/127.0.0.1/tcp/{self.api_port}",
                        "Gateway": f"/ip4/127.0.0.1/tcp/{self.gw_port}",
                        "RPC": f"/ip4/127.0.0.1/tcp/{_port()}",
                        "Swarm": [f"/ip4/127.0.0.1/tcp/{self.swarm_port}"],
                        "Delegates": [],
                    },
                    "Bootstrap": [],
                    "Discovery": {"MDNS": {"Enabled": False}, "webRTCStar": {"Enabled": False}},
                }
            )
        )
        env = {**os.environ, "IPFS_PATH": str(base / "repo")}
        env["NODE_OPTIONS"] = f"--require {POLYFILL} {env.get('NODE_OPTIONS', '')}".strip()
        self.log = open(base / "daemon.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [jsipfs, "daemon", "--init-profile", "test", "--init-config", str(config)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.rpc = f"http://127.0.0.1:{self.api_port}"
        self.gateway = f"http://127.0.0.1:{self.gw_port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                _post(f"{self.rpc}/api/v0/version")
                return
            except OSError:
                time.sleep(0.3)
        raise SystemExit(f"js-ipfs did not start; see {base / 'daemon.log'}")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=20)
        self.log.close()


def add_file(node: Node, path: Path) -> str:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    out = _post(
        f"{node.rpc}/api/v0/add?cid-version=1&raw-leaves=true&pin=true",
        body,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    return str(json.loads(out.splitlines()[-1])["Hash"])


Method = Callable[[Client, Node, Cid], Awaitable[int]]
T = Timeouts(connect=10, answer=120, stall=120)


async def path_gateway(client: Client, node: Node, cid: Cid) -> int:
    resp = await client.request("GET", f"{node.gateway}/ipfs/{cid}", timeouts=T)
    builder, n = UnixFSFileBuilder(CIDV1_DEFAULTS), 0  # the profile the file was added with
    async for chunk in resp.chunks():
        builder.update(chunk)
        n += len(chunk)
    if builder.finish_node().cid != cid:
        raise SystemExit(f"the path gateway's bytes do not give {cid}")
    return n


async def dag_export(client: Client, node: Node, cid: Cid) -> int:
    resp = await RpcBlocks(client, node.rpc, timeout=120).export(cid)
    n = 0
    async for piece in iter_car_stream_file(resp.chunks(), cid):
        n += len(piece)
    return n


def block_get(window: int) -> Method:
    async def run(client: Client, node: Node, cid: Cid) -> int:
        n = 0
        async for piece in RpcBlocks(client, node.rpc, timeout=120).iter_file(cid, window=window):
            n += len(piece)
        return n

    return run


METHODS: dict[str, Method] = {
    "path gateway + CID recomputed": path_gateway,
    "RPC dag/export (CAR, verified)": dag_export,
    "RPC block/get x16 (verified)": block_get(16),
    "RPC block/get x64 (verified)": block_get(64),
    "RPC block/get x1 (verified)": block_get(1),
}


async def measure(node: Node, cid: Cid, size: int, runs: int, gc: bool) -> dict[str, float]:
    speeds: dict[str, list[float]] = {name: [] for name in METHODS}
    async with Client() as client:
        for _ in range(runs):
            for name, method in METHODS.items():  # interleaved: a noisy moment hits all
                if gc:
                    _post(f"{node.rpc}/api/v0/repo/gc")
                started = time.perf_counter()
                got = await method(client, node, cid)
                elapsed = time.perf_counter() - started
                if got != size:
                    raise SystemExit(f"{name}: {got} bytes, expected {size}")
                speeds[name].append(size / elapsed / 1e6)
    return {name: statistics.median(v) for name, v in speeds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="file size in MiB (default 64)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each method (default 3)")
    args = parser.parse_args()
    jsipfs = subprocess.run(
        ["bash", str(REPO / "scripts" / "ipfs-node.sh"), "path"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if not jsipfs:
        raise SystemExit("js-ipfs is not installed: run scripts/ipfs-node.sh install")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "a").mkdir()
        (work / "b").mkdir()
        a, b = Node(jsipfs, work / "a"), Node(jsipfs, work / "b")
        try:
            peer = json.loads(_post(f"{a.rpc}/api/v0/id"))["ID"]
            _post(f"{b.rpc}/api/v0/swarm/connect?arg=/ip4/127.0.0.1/tcp/{a.swarm_port}/p2p/{peer}")
            src = work / "file.bin"
            src.write_bytes(os.urandom(args.mib * MiB))
            cid = Cid.parse(add_file(a, src))
            size = args.mib * MiB
            print(f"{args.mib} MiB, CID {cid}, median of {args.runs} runs (MB/s)")
            for where, node, gc in (("local (node A)", a, False), ("bitswap (B from A)", b, True)):
                result = asyncio.run(measure(node, cid, size, args.runs, gc))
                print(f"-- {where}")
                for name, speed in result.items():
                    print(f"   {name:<34} {speed:8.1f}")
        finally:
            a.stop()
            b.stop()


if __name__ == "__main__":
    main()
