"""`serve --mirror` as a trustless gateway: raw blocks, CARs by scope and range, plain paths."""

from __future__ import annotations

import functools
import hashlib
import shutil
from pathlib import Path

import aiohttp
import pytest

from _gateway_world import BIG, MODEL, Served, serving, settings_for, verified_home
from conftest import leftovers
from modelfetch.engine import Fetcher
from modelfetch.ipfs.blockstore import MemoryBlockStore
from modelfetch.ipfs.car import read_car
from modelfetch.ipfs.cid import Cid, verify_block
from modelfetch.ipfs.dagfile import DagReader
from modelfetch.ipfs.importer import Profile
from modelfetch.server.gateway import StoreDags
from modelfetch.server.gateway.index import build_index

IMMUTABLE = "public, max-age=29030400, immutable"


@pytest.fixture(params=["unixfs-v0-2015", "cid-version-1", "unixfs-v1-2025"])
async def node_a(request: pytest.FixtureRequest, tmp_path: Path) -> Served:
    return await verified_home(tmp_path / "a", profile=request.param)


async def get(
    url: str, *, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(timeout=timeout) as s,
        s.request(method, url, headers=headers) as r,
    ):
        return r.status, dict(r.headers), await r.read()


async def file_cid(base: str, served: Served, path: str) -> Cid:
    """A file's CID, resolved from the raw blocks of the directory (as a client would)."""

    async def block(cid: Cid) -> bytes:
        status, _, body = await get(f"{base}/ipfs/{cid}?format=raw")
        assert status == 200
        return body

    return await DagReader(block).resolve(served.cid, path)


async def test_probe_answers_at_once(tmp_path: Path) -> None:
    async with serving(settings_for(tmp_path / "empty", [])) as base:
        status, headers, body = await get(f"{base}/ipfs/bafkqaaa?format=raw")
        assert (status, body) == (200, b"")
        assert headers["Content-Type"] == "application/vnd.ipld.raw"
        status, _, body = await get(f"{base}/ipfs/bafkqaaa")
        assert (status, body) == (200, b"")


async def test_raw_blocks_hash_to_their_cid(node_a: Served) -> None:
    async with serving(node_a.settings) as base:
        status, headers, body = await get(f"{base}/ipfs/{node_a.cid}?format=raw")
        assert status == 200
        verify_block(node_a.cid, body)
        assert headers["Content-Type"] == "application/vnd.ipld.raw"
        assert headers["Cache-Control"] == IMMUTABLE
        assert headers["X-Ipfs-Path"] == f"/ipfs/{node_a.cid}"
        assert headers["X-Ipfs-Roots"] == node_a.cid
        assert headers["Etag"] == f'"{node_a.cid}.raw"'
        # the Accept header alone asks for the same
        accept = {"Accept": "application/vnd.ipld.raw"}
        assert (await get(f"{base}/ipfs/{node_a.cid}", headers=accept))[2] == body
        # a leaf comes from the file itself, checked against its CID
        leaf = await file_cid(base, node_a, "config.json")
        status, _, body = await get(f"{base}/ipfs/{leaf}?format=raw")
        verify_block(leaf, body)
        again = await get(
            f"{base}/ipfs/{leaf}?format=raw", headers={"If-None-Match": f'"{leaf}.raw"'}
        )
        assert again[0] == 304


async def test_a_car_of_the_whole_model_rebuilds_every_file(node_a: Served) -> None:
    async with serving(node_a.settings) as base:
        status, headers, body = await get(f"{base}/ipfs/{node_a.cid}?format=car")
    assert status == 200
    assert headers["Content-Type"].startswith("application/vnd.ipld.car; version=1")
    assert headers["Cache-Control"] == IMMUTABLE and headers["Etag"].startswith("W/")
    car = read_car(body)  # every block hash-checked
    assert [str(r) for r in car.roots] == [node_a.cid]
    store = MemoryBlockStore.from_car(body)
    reader = DagReader(store)
    for path, data in node_a.files.items():
        got = b"".join([p async for p in reader.iter_file(node_a.cid, path)])
        assert got == data, path
    assert store.unused() == []  # nothing the DAG does not hold


async def test_entity_bytes_send_only_the_blocks_of_the_range(tmp_path: Path) -> None:
    served = await verified_home(tmp_path / "a", profile="cid-version-1")
    data = served.files[BIG]
    lo, hi = 600_000, 800_000  # inside the third 256 KiB chunk and the fourth
    async with serving(served.settings) as base:
        url = (
            f"{base}/ipfs/{served.cid}/{BIG}?format=car&dag-scope=entity&entity-bytes={lo}:{hi - 1}"
        )
        status, headers, body = await get(url)
        assert status == 200
        roots = headers["X-Ipfs-Roots"].split(",")
        assert roots[0] == served.cid and len(roots) == 3  # the root, onnx/, the file
        store = MemoryBlockStore.from_car(body)
        file_root = Cid.parse(roots[-1])
        got = b"".join([p async for p in DagReader(store).iter_file(file_root, offset=lo, end=hi)])
        assert got == data[lo:hi]
        # path blocks (2 directories), the file's root, and only the two leaves in the range
        assert len(store.blocks) == 5
        status, _, body = await get(url.replace("dag-scope=entity", "dag-scope=block"))
        assert len(list(read_car(body))) == 3  # the path and the file's root block only


async def test_plain_paths_with_range_and_head(node_a: Served) -> None:
    data = node_a.files[BIG]
    async with serving(node_a.settings) as base:
        url = f"{base}/ipfs/{node_a.cid}/{BIG}"
        status, headers, body = await get(url)
        assert (status, body) == (200, data)
        assert headers["Etag"].startswith('"') and headers["Accept-Ranges"] == "bytes"
        assert headers["Cache-Control"] == IMMUTABLE
        assert headers["X-Ipfs-Path"] == f"/ipfs/{node_a.cid}/{BIG}"
        status, headers, body = await get(url, headers={"Range": "bytes=1000-299999"})
        assert (status, body) == (206, data[1000:300000])
        assert headers["Content-Range"] == f"bytes 1000-299999/{len(data)}"
        status, _, body = await get(url, headers={"Range": "bytes=-10"})
        assert (status, body) == (206, data[-10:])
        status, headers, body = await get(url, method="HEAD")
        assert (status, body, headers["Content-Length"]) == (200, b"", str(len(data)))
        assert (await get(url, headers={"Range": f"bytes={len(data)}-"}))[0] == 416
        status, headers, body = await get(f"{base}/ipfs/{node_a.cid}/config.json")
        assert body == node_a.files["config.json"]
        assert headers["Content-Type"].startswith("application/json")
        status, headers, body = await get(f"{base}/ipfs/{node_a.cid}/")
        assert status == 200 and b"tokenizer.json" in body and b"onnx" in body


async def test_what_the_store_does_not_hold_is_404(node_a: Served) -> None:
    other = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"  # "hello world\n"
    async with serving(node_a.settings) as base:
        assert (await get(f"{base}/ipfs/{other}?format=raw"))[0] == 404
        assert (await get(f"{base}/ipfs/{node_a.cid}/nope.bin"))[0] == 404
        assert (await get(f"{base}/ipfs/not-a-cid"))[0] == 400
        assert (await get(f"{base}/ipfs/{node_a.cid}?format=tar"))[0] == 406


async def test_a_file_changed_since_its_stamp_is_not_served(tmp_path: Path) -> None:
    served = await verified_home(tmp_path / "a")
    async with serving(served.settings) as base:
        leaf = await file_cid(base, served, "config.json")
        assert (await get(f"{base}/ipfs/{leaf}?format=raw"))[0] == 200
        served.final("config.json").write_bytes(b'{"served": false}')  # same size, new bytes
        assert (await get(f"{base}/ipfs/{leaf}?format=raw"))[0] == 404
        status, _, _ = await get(f"{base}/ipfs/{served.cid}/tokenizer.json")
        assert status == 404  # the model no longer matches its CID: none of it is served


async def test_any_chunking_is_served_from_its_index(tmp_path: Path) -> None:
    """1 KiB chunks, 4 links: a deep DAG whose parents are rebuilt, leaves read from files."""
    tiny = Profile("tiny", 1, True, 1024, 4)
    served = await verified_home(tmp_path / "a", profile=tiny)  # type: ignore[arg-type]
    dags = StoreDags(served.settings, builder=functools.partial(build_index, profiles=(tiny,)))
    async with serving(served.settings, dags=dags) as base:
        status, _, body = await get(f"{base}/ipfs/{served.cid}/{BIG}?format=car")
        assert status == 200
        store = MemoryBlockStore.from_car(body)
        got = b"".join([p async for p in DagReader(store).iter_file(served.cid, BIG)])
        assert got == served.files[BIG]
        status, _, body = await get(
            f"{base}/ipfs/{served.cid}/{BIG}", headers={"Range": "bytes=5000-"}
        )
        assert body == served.files[BIG][5000:]


async def test_our_trustless_client_pulls_from_another_models_dir(
    node_a: Served, tmp_path: Path
) -> None:
    async with serving(node_a.settings) as base:
        home_b = tmp_path / "b"
        settings = settings_for(home_b, [base], cid=node_a.cid)  # the CID only, no manifest
        async with Fetcher(settings) as fetcher:
            result = await fetcher.pull_model(MODEL)
    assert result.ok, result.errors
    for path, data in node_a.files.items():
        got = (home_b / "org" / MODEL / path).read_bytes()
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), path
    assert {(f.source, f.gateway) for f in result.files} == {("ipfs", base)}
    assert leftovers(home_b) == []


async def test_gateway_routes_need_the_token_when_one_is_set(node_a: Served) -> None:
    async with serving(node_a.settings, token="s3cret-token-for-tests") as base:
        url = f"{base}/ipfs/{node_a.cid}?format=raw"
        assert (await get(url))[0] == 401
        status, _, body = await get(url, headers={"Authorization": "Bearer s3cret-token-for-tests"})
        assert status == 200
        verify_block(node_a.cid, body)


async def test_saved_block_indexes_are_used_and_missing_ones_rebuilt(tmp_path: Path) -> None:
    served = await verified_home(tmp_path / "a")  # publish's prepare saved the indexes
    dags = StoreDags(served.settings)
    await dags.refresh(force=True)
    assert dags.served == {MODEL: Cid.parse(served.cid)}
    assert dags.indexed_from(MODEL) == "saved block indexes"
    shutil.rmtree(served.home / ".modelfetch" / "blockindex")  # e.g. verified by SHA-256 only
    dags = StoreDags(served.settings)
    async with serving(served.settings, dags=dags) as base:
        status, _, body = await get(f"{base}/ipfs/{served.cid}/{BIG}")
        assert (status, body) == (200, served.files[BIG])
    assert dags.indexed_from(MODEL) == "re-chunked (cid-version-1)"
    assert any((served.home / ".modelfetch" / "blockindex").iterdir())  # saved for next time
