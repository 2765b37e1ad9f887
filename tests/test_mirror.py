"""`serve --mirror` with the real huggingface_hub client: held repos, pull-through, errors."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import aiohttp
import pytest

from mirror_support import (
    CONFIG,
    FILES,
    REPO,
    ROWS,
    WEIGHTS,
    Running,
    download,
    snapshot,
)
from modelfetch.testing import HubServer, faults, git_blob_sha1

hf = pytest.importorskip("huggingface_hub")
from huggingface_hub import errors as hf_errors  # noqa: E402

pytest_plugins = ["conftest_mirror"]  # upstream, mirror (tests/conftest_mirror.py)


# -- held repos: huggingface_hub's own cache on the mirror ---------------------------------------


async def test_snapshot_of_a_held_repo_costs_upstream_nothing(
    mirror: Running, upstream: HubServer, tmp_path: Path
) -> None:
    await snapshot(upstream.url, mirror.cache)  # the mirror machine got it with huggingface_hub
    upstream.reset_counters()
    client = tmp_path / "client-hf"
    snap = await snapshot(mirror.url, client)
    assert upstream.requests == []  # not one request upstream: refs, listing, blobs all held
    commit = upstream.commit(REPO)
    assert snap == client / "models--org--bert" / "snapshots" / commit
    for path, data in FILES.items():
        assert (snap / path).read_bytes() == data
    # the client's blobs have the names the upstream gives them (SHA-256 for LFS, git SHA-1 else)
    assert (snap / "config.json").resolve().name == git_blob_sha1(CONFIG)
    assert (snap / "model.safetensors").resolve().name == hashlib.sha256(WEIGHTS).hexdigest()
    assert (client / "models--org--bert" / "refs" / "main").read_text() == commit
    # and offline, the client finds everything
    again = await asyncio.to_thread(
        hf.snapshot_download, repo_id=REPO, cache_dir=client, local_files_only=True
    )
    assert Path(again) == snap


async def test_file_metadata_matches_the_hub(mirror: Running, upstream: HubServer) -> None:
    await snapshot(upstream.url, mirror.cache)
    for path in FILES:
        theirs = hf.get_hf_file_metadata(hf.hf_hub_url(REPO, path, endpoint=upstream.url))
        ours = await asyncio.to_thread(
            hf.get_hf_file_metadata, hf.hf_hub_url(REPO, path, endpoint=mirror.url)
        )
        assert (ours.etag, ours.size, ours.commit_hash) == (
            theirs.etag,
            theirs.size,
            theirs.commit_hash,
        )


async def test_range_206_and_416(mirror: Running, upstream: HubServer) -> None:
    await snapshot(upstream.url, mirror.cache)
    url = f"{mirror.url}/{REPO}/resolve/main/model.safetensors"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Range": "bytes=100-199"}) as resp:
            assert resp.status == 206
            assert resp.headers["Content-Range"] == f"bytes 100-199/{len(WEIGHTS)}"
            assert await resp.read() == WEIGHTS[100:200]
            assert resp.headers["Accept-Ranges"] == "bytes"
        async with http.get(url, headers={"Range": "bytes=-10"}) as resp:
            assert resp.status == 206 and await resp.read() == WEIGHTS[-10:]
        async with http.get(url, headers={"Range": f"bytes={len(WEIGHTS)}-"}) as resp:
            assert resp.status == 416
            assert resp.headers["Content-Range"] == f"bytes */{len(WEIGHTS)}"
        async with http.head(url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(len(WEIGHTS))
            assert resp.headers["X-Linked-Size"] == str(len(WEIGHTS))
            assert resp.headers["X-Linked-Etag"] == f'"{hashlib.sha256(WEIGHTS).hexdigest()}"'
            assert resp.headers["X-Repo-Commit"] == upstream.commit(REPO)


# -- errors, typed as the upstream types them ------------------------------------------------------


@pytest.mark.parametrize("held", [True, False], ids=["held", "upstream"])
async def test_errors_are_typed_as_the_hubs(
    mirror: Running, upstream: HubServer, tmp_path: Path, held: bool
) -> None:
    if held:
        await snapshot(upstream.url, mirror.cache)
    client = tmp_path / "client-hf"
    with pytest.raises(hf_errors.RepositoryNotFoundError):
        await download(mirror.url, client, "config.json", repo_id="org/nothing")
    with pytest.raises(hf_errors.RevisionNotFoundError):
        await download(mirror.url, client, "config.json", revision="no-such-branch")
    with pytest.raises(hf_errors.EntryNotFoundError):
        await download(mirror.url, client, "no/such/file.txt")
    api = hf.HfApi(endpoint=mirror.url)
    with pytest.raises(hf_errors.RepositoryNotFoundError):
        await asyncio.to_thread(api.model_info, "org/nothing")
    with pytest.raises(hf_errors.RevisionNotFoundError):
        await asyncio.to_thread(api.model_info, REPO, revision="no-such-branch")


# -- pull-through -------------------------------------------------------------------------------


async def test_pull_through_fills_two_machines_upstream_sees_each_file_once(
    mirror: Running, upstream: HubServer, tmp_path: Path
) -> None:
    for machine in ("a", "b"):
        snap = await snapshot(mirror.url, tmp_path / machine)
        for path, data in FILES.items():
            assert (snap / path).read_bytes() == data
    for path, data in FILES.items():
        assert upstream.bytes_sent(hashlib.sha256(data).hexdigest()) == len(data), path
    # the mirror's own HF cache now holds it, as huggingface_hub would have written it
    offline = await asyncio.to_thread(
        hf.snapshot_download, repo_id=REPO, cache_dir=mirror.cache, local_files_only=True
    )
    assert (Path(offline) / "model.safetensors").read_bytes() == WEIGHTS


async def test_a_dataset_through_the_mirror(
    mirror: Running, upstream: HubServer, tmp_path: Path
) -> None:
    path = await download(
        mirror.url, tmp_path / "c", "data/train/rows.csv", repo_id="org/corpus", repo_type="dataset"
    )
    assert path.read_bytes() == ROWS
    assert "datasets--org--corpus" in path.parts


async def test_twenty_clients_one_upstream_transfer(mirror: Running, upstream: HubServer) -> None:
    url = f"{mirror.url}/{REPO}/resolve/main/model.safetensors"
    upstream.limit(total=2_000_000)  # slow enough that all twenty ask while it is arriving

    async def one(http: aiohttp.ClientSession) -> bytes:
        async with http.get(url) as resp:
            assert resp.status == 200
            return await resp.read()

    async with aiohttp.ClientSession() as http:
        bodies = await asyncio.gather(*(one(http) for _ in range(20)))
    assert all(b == WEIGHTS for b in bodies)
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    assert upstream.request_count(f"/cdn/{sha}", "GET") == 1
    assert upstream.bytes_sent(sha) == len(WEIGHTS)
    assert mirror.mirror.pulls.started == 1


async def test_corrupt_upstream_never_reaches_a_client(
    mirror: Running, upstream: HubServer, tmp_path: Path
) -> None:
    upstream.inject(faults.wrong_bytes(at=1000), path="model.safetensors")
    client = tmp_path / "client-hf"
    with pytest.raises(hf_errors.HfHubHTTPError) as caught:
        await download(mirror.url, client, "model.safetensors")
    assert caught.value.response.status_code == 502
    assert "HashMismatch" in caught.value.response.headers["X-Error-Message"]
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    assert not (mirror.cache / "models--org--bert" / "blobs" / sha).exists()
    assert not list((client / "models--org--bert" / "blobs").glob(sha))
    # the upstream heals: the next ask pulls again and serves the right bytes
    upstream.clear_faults()
    assert (await download(mirror.url, client, "model.safetensors")).read_bytes() == WEIGHTS


async def test_upstream_down_5xx_with_reason_and_held_files_still_served(
    mirror: Running, upstream: HubServer, tmp_path: Path
) -> None:
    await download(upstream.url, mirror.cache, "config.json")  # the mirror holds one file
    upstream.refuse()
    client = tmp_path / "client-hf"
    assert (await download(mirror.url, client, "config.json")).read_bytes() == CONFIG
    url = f"{mirror.url}/{REPO}/resolve/main/model.safetensors"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status in (502, 504)
        assert "upstream" in resp.headers["X-Error-Message"]
        assert "error" in await resp.json()


@pytest.mark.parametrize("held", [True, False], ids=["held", "upstream"])
async def test_api_answers_match_the_hubs(mirror: Running, upstream: HubServer, held: bool) -> None:
    if held:
        await snapshot(upstream.url, mirror.cache)
    commit = upstream.commit(REPO)
    async with aiohttp.ClientSession() as http:

        async def both(path: str) -> tuple[object, object]:
            async with http.get(upstream.url + path) as theirs, http.get(mirror.url + path) as ours:
                assert ours.status == theirs.status == 200
                return await theirs.json(), await ours.json()

        theirs, ours = await both(f"/api/models/{REPO}/tree/{commit}?recursive=true")
        assert ours == theirs
        theirs, ours = await both(f"/api/models/{REPO}/tree/main/onnx")
        assert ours == theirs
        theirs, ours = await both(f"/api/models/{REPO}/revision/main?blobs=true")
        assert isinstance(theirs, dict) and isinstance(ours, dict)
        assert ours["sha"] == theirs["sha"] == commit
        assert ours["siblings"] == theirs["siblings"]


async def test_a_corrupt_blob_in_the_mirrors_cache_is_never_served(
    mirror: Running, upstream: HubServer, tmp_path: Path
) -> None:
    await snapshot(upstream.url, mirror.cache)
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    blob = mirror.cache / "models--org--bert" / "blobs" / sha
    blob.write_bytes(WEIGHTS[:-1] + b"?")  # same size, one byte off: huggingface_hub can't tell
    upstream.reset_counters()
    got = await download(mirror.url, tmp_path / "client", "model.safetensors")
    assert got.read_bytes() == WEIGHTS  # pulled through, not the bad blob
    assert upstream.bytes_sent(sha) == len(WEIGHTS)
    assert blob.read_bytes() == WEIGHTS  # replaced atomically by the verified copy


async def test_hf_download_with_hf_endpoint_set(
    mirror: Running, upstream: HubServer, tmp_path: Path
) -> None:
    """The command line as people run it: `HF_ENDPOINT=<mirror> hf download REPO`."""
    import os
    import sys

    hf_cli = Path(sys.executable).with_name("hf")
    if not hf_cli.exists():
        pytest.skip("the hf command is not installed beside this Python")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=mirror.url, HF_HUB_DISABLE_TELEMETRY="1", HF_HOME=str(tmp_path / "h"))
    proc = await asyncio.create_subprocess_exec(
        str(hf_cli),
        "download",
        REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    last = out.decode().strip().splitlines()[-1].strip()
    snap = Path(last.removeprefix("path:").strip())  # hf 2.x prints "path: <dir>" last
    assert snap.is_relative_to(tmp_path / "h" / "hub")
    assert {p: (snap / p).read_bytes() for p in FILES} == FILES
    for path, data in FILES.items():
        assert upstream.bytes_sent(hashlib.sha256(data).hexdigest()) == len(data), path
