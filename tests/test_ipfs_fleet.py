"""A fleet over IPFS: publish on node A, pull on a machine whose only IPFS is node B.

Two real js-ipfs nodes, online but alone together (loopback swarm, no bootstrap, no mDNS):
B has none of the blocks and fetches them from A over bitswap. Each block or file is checked
here, so neither node is trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from _gateway_world import MODEL, model_files
from conftest import leftovers
from modelfetch.httpclient import Client
from modelfetch.ipfs.cid import Cid
from modelfetch.ipfs.rpc import RpcBlocks
from modelfetch.manifest import MANIFEST_NAME

if TYPE_CHECKING:
    from conftest_ipfs import IpfsNode

pytest_plugins = ["conftest_ipfs"]


def cli(args: list[str], config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "MODELFETCH_CONFIG": str(config), **env}
    full.pop("MODELFETCH_IPFS_GATEWAYS", None)
    return subprocess.run(
        [sys.executable, "-m", "modelfetch", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=full,
        check=False,
    )


def config(home: Path, *, cid: str | None, ipfs: str) -> Path:
    files = ", ".join(json.dumps(p) for p in model_files())
    ref = f'ipfs = {{ cid = "{cid}" }}\n' if cid else ""
    path = home.parent / f"{home.name}.toml"
    path.write_text(
        f'models_dir = "{home}"\norder = ["cache", "ipfs"]\n'
        f"[ipfs]\n{ipfs}\ntimeout = 20\nretries = 1\npause = 0.1\n"
        f'[models.{MODEL}]\ndir = "org/{MODEL}"\nfiles = [{files}]\n{ref}'
    )
    return path


@pytest.fixture(scope="module")
def published(
    ipfs_pair: tuple[IpfsNode, IpfsNode], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """`modelfetch publish MODEL --to kubo` on node A: the model's CID and A's manifest."""
    node_a, _ = ipfs_pair
    home = tmp_path_factory.mktemp("node-a") / "models"
    for path, data in model_files().items():
        target = home / "org" / MODEL / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    cfg = config(home, cid=None, ipfs="gateways = []")
    gen = cli(["manifest", "generate", str(home / "org" / MODEL), "--name", MODEL], cfg)
    assert gen.returncode == 0, gen.stderr
    pub = cli(["publish", MODEL, "--to", "kubo", "--json"], cfg, MODELFETCH_KUBO_API=node_a.rpc)
    assert pub.returncode == 0, pub.stderr
    return {"cid": str(json.loads(pub.stdout)["cid"]), "manifest": home / MANIFEST_NAME}


def assert_pulled(home: Path, proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for path, data in model_files().items():
        got = (home / "org" / MODEL / path).read_bytes()
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), path
    assert leftovers(home) == []


async def test_node_b_gets_a_blocks_over_bitswap(
    ipfs_pair: tuple[IpfsNode, IpfsNode], published: dict[str, Any]
) -> None:
    _, node_b = ipfs_pair
    async with Client() as client:
        root = await RpcBlocks(client, node_b.rpc, timeout=20)(Cid.parse(published["cid"]))
    assert root  # verified against its CID by RpcBlocks


def test_pull_through_node_b_path_gateway(
    ipfs_pair: tuple[IpfsNode, IpfsNode], published: dict[str, Any], tmp_path: Path
) -> None:
    """The only gateway is the machine's own node. js-ipfs's gateway is path-only: its bytes
    prove nothing, so the fleet's manifest (SHA-256s and the CID, as publish wrote it) comes
    along; kubo's gateway would also serve verifiable blocks."""
    _, node_b = ipfs_pair
    home = tmp_path / "models"
    home.mkdir()
    shutil.copy(published["manifest"], home / MANIFEST_NAME)
    cfg = config(home, cid=None, ipfs=f'gateways = ["{node_b.gateway}"]')
    proc = cli(["pull", MODEL, "--json"], cfg)
    assert_pulled(home, proc)
    doc = json.loads(proc.stdout)
    assert {f["gateway"] for m in doc["models"] for f in m["files"]} == {node_b.gateway}


def test_pull_through_node_b_rpc_blocks(
    ipfs_pair: tuple[IpfsNode, IpfsNode], published: dict[str, Any], tmp_path: Path
) -> None:
    """`[ipfs] rpc`: the node as a trustless block source; the CID alone, no gateway at all."""
    _, node_b = ipfs_pair
    home = tmp_path / "models"
    cfg = config(home, cid=published["cid"], ipfs=f'gateways = []\nrpc = ["{node_b.rpc}"]')
    proc = cli(["pull", MODEL, "--json"], cfg)
    assert_pulled(home, proc)
    doc = json.loads(proc.stdout)
    assert {f["gateway"] for m in doc["models"] for f in m["files"]} == {node_b.rpc}


@pytest.mark.parametrize("version", ["0", "1"])
async def test_rpc_reads_any_range_block_by_block(
    ipfs_pair: tuple[IpfsNode, IpfsNode], version: str
) -> None:
    """dag-pb (v0) or raw (v1) leaves, 1 KiB chunks so the DAG has two levels: any range of
    the file, rebuilt from blocks B gets from A, is exactly those bytes."""
    node_a, node_b = ipfs_pair
    data = random.Random(int(version)).randbytes(200_000)
    form = aiohttp.FormData()
    form.add_field("file", data, filename="f.bin")
    url = f"{node_a.api}/add?cid-version={version}&chunker=size-1024&pin=true"
    async with aiohttp.ClientSession() as session, session.post(url, data=form) as resp:
        cid = Cid.parse(json.loads((await resp.text()).splitlines()[-1])["Hash"])
    async with Client() as client:
        blocks = RpcBlocks(client, node_b.rpc, timeout=20)
        for lo, hi in [(0, None), (1000, 1025), (5000, 190_000), (199_999, None), (0, 1)]:
            got = b"".join([p async for p in blocks.iter_file(cid, offset=lo, end=hi)])
            assert got == data[lo:hi], (lo, hi)
