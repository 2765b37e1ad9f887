"""The hub API client (modelfetch.hub) against the loopback hub, faults included."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfetch.errors import (
    ConnectFailed,
    EntryNotFound,
    GatedRepo,
    HTTPStatus,
    InvalidHubAnswer,
    InvalidRepoId,
    RepoNotFound,
    RevisionNotFound,
    Stalled,
    UnsafePath,
)
from modelfetch.hashes import Digests
from modelfetch.hub import HubAPI, RepoFile, RepoRef, filter_paths
from modelfetch.testing import HubServer, faults, git_blob_sha1

REPO = RepoRef("org/model")
FILES = {
    "config.json": b'{"a": 1}\n',
    "tokenizer.json": b"t" * 5000,
    "onnx/model.onnx": b"\x08\x07" + bytes(range(256)) * 8,
    "onnx/model_q4.onnx": b"\x08\x07" + bytes(range(256)) * 4,
    "weights/big.bin": hashlib.sha256(b"w").digest() * 2000,
}
TOKEN = "hf_SeCrEt_token_value"


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with HubServer(lfs_threshold=50_000, tree_page_size=2) as server:
        for path, data in FILES.items():
            server.add_file(REPO.repo_id, path, data)
        yield server


def api(hub: HubServer, **kwargs: object) -> HubAPI:
    options: dict[str, object] = {"retries": 3, "backoff": 0.01, "max_backoff": 2.0, "timeout": 2}
    options.update(kwargs)
    return HubAPI(hub.url, **options)  # type: ignore[arg-type]


def hostile_tree(entries: list[dict[str, object]]) -> faults.Fault:
    body = json.dumps(entries).encode()
    return faults.status(200, body, {"Content-Type": "application/json"})


async def test_snapshot_pins_one_commit_and_pages_through_the_tree(hub: HubServer) -> None:
    async with api(hub) as client:
        snap = await client.snapshot(REPO)
    assert snap.commit == hub.commit(REPO.repo_id)
    assert {f.path for f in snap.tree} == set(FILES)
    assert snap.files == snap.tree
    # 5 files + 2 directories, 2 per page: one revision request, then 4 pages, all one commit
    api_requests = hub.requests_in("api")
    assert len(api_requests) == 5
    assert api_requests[0][1].endswith("/revision/main")
    assert all(f"/tree/{snap.commit}" in p for _, p in api_requests[1:])
    assert hub.category_counts()["resolve"] == 0  # no HEAD per file
    for f in snap.tree:
        digests = Digests(f.identity(), name=f.path)
        digests.update(FILES[f.path])
        digests.verify()  # the listed identity is the file's
    big = snap.file("weights/big.bin")
    assert big.is_lfs and big.etag == hashlib.sha256(FILES["weights/big.bin"]).hexdigest()
    small = snap.file("config.json")
    assert not small.is_lfs and small.etag == git_blob_sha1(FILES["config.json"])
    assert small.identity().git_sha1 == small.etag and small.identity().sha256 is None


async def test_a_commit_revision_skips_the_revision_request(hub: HubServer) -> None:
    commit = hub.commit(REPO.repo_id)
    async with api(hub) as client:
        snap = await client.snapshot(REPO, commit)
        assert snap.info is None and snap.commit == commit
        assert not any("/revision/" in p for _, p in hub.requests_in("api"))
        assert client.requests == 4  # the tree's pages only


async def test_include_exclude_as_huggingface_hub_filters(hub: HubServer) -> None:
    from huggingface_hub.utils import filter_repo_objects

    paths = [*sorted(FILES), "a\\b.txt", "data/x/y.json"]
    for include, exclude in [
        (["*.json"], []),
        (["onnx/"], ["*q4*"]),
        ([], ["onnx/*", "*.bin"]),
        (["*.onnx", "config.json"], ["onnx/model.onnx"]),
        (["data/*.json"], []),
        (["ONNX/*"], []),
    ]:
        theirs = list(
            filter_repo_objects(paths, allow_patterns=include or None, ignore_patterns=exclude)
        )
        assert filter_paths(paths, include, exclude) == theirs
    async with api(hub) as client:
        snap = await client.snapshot(REPO, include=["onnx/"], exclude=["*q4*"])
    assert [f.path for f in snap.files] == ["onnx/model.onnx"]
    assert len(snap.tree) == len(FILES)  # the whole listing stays known (for the tree cache)


async def test_revision_info_with_blobs(hub: HubServer) -> None:
    async with api(hub) as client:
        info = await client.revision_info(REPO, blobs=True)
        plain = await client.revision_info(REPO)
    assert info.commit == hub.commit(REPO.repo_id)
    assert info.private is False and info.gated is False
    by_path = {s.path: s for s in info.siblings}
    assert set(by_path) == set(FILES)
    onnx = by_path["onnx/model.onnx"]
    assert onnx.lfs_sha256 == hashlib.sha256(FILES["onnx/model.onnx"]).hexdigest()
    assert by_path["config.json"].blob_id == git_blob_sha1(FILES["config.json"])
    assert all(s.size is None for s in plain.siblings)


async def test_a_moved_branch_is_seen_and_old_commits_stay(hub: HubServer) -> None:
    async with api(hub) as client:
        before = await client.snapshot(REPO)
        new = hub.push(REPO.repo_id, {"config.json": b'{"a": 2}\n'}, delete=["tokenizer.json"])
        after = await client.snapshot(REPO)
        again = await client.snapshot(REPO, before.commit)
    assert after.commit == new != before.commit
    assert {f.path for f in after.tree} == set(FILES) - {"tokenizer.json"}
    changed = {f.path for f in after.tree} - {f.path for f in after.tree if f in before.tree}
    assert changed == {"config.json"}  # every other file keeps its identity
    assert again.tree == before.tree


async def test_hostile_listings_are_refused_before_anything_is_returned(hub: HubServer) -> None:
    good = {"type": "file", "oid": "a" * 40, "size": 3, "path": "ok.txt"}
    for bad in ["../x", "/etc/passwd", "a\\b", "a/\x00b", "a//b", "./a"]:
        hub.clear_faults()
        hub.inject(hostile_tree([good, {**good, "path": bad}]), on="api", path="tree")
        async with api(hub) as client:
            with pytest.raises(UnsafePath) as info:
                await client.snapshot(REPO)
        assert repr(bad)[1:-1] in str(info.value) and REPO.repo_id in str(info.value)
    hub.clear_faults()
    hub.inject(hostile_tree([{"type": "directory", "oid": "b" * 40, "path": ".."}]), on="api")
    async with api(hub) as client:
        with pytest.raises(UnsafePath):
            await client.list_tree(REPO, hub.commit(REPO.repo_id))


@pytest.mark.parametrize(
    "entry, match",
    [
        ({"oid": "xyz"}, "git oid"),
        ({"size": -1}, "size"),
        ({"size": True}, "size"),
        ({"lfs": {"oid": "a" * 63, "size": 3}}, "LFS oid"),
        ({"lfs": {"oid": "a" * 64, "size": 4}}, "LFS size"),
    ],
)
async def test_bad_sizes_and_hashes_are_refused(
    hub: HubServer, entry: dict[str, object], match: str
) -> None:
    base = {"type": "file", "oid": "a" * 40, "size": 3, "path": "x.bin"}
    hub.inject(hostile_tree([{**base, **entry}]), on="api", path="tree")
    async with api(hub) as client:
        with pytest.raises(InvalidHubAnswer, match=match):
            await client.list_tree(REPO, hub.commit(REPO.repo_id))


async def test_not_the_hub_api(hub: HubServer) -> None:
    hub.inject(faults.html_error_page(), on="api")
    async with api(hub) as client:
        with pytest.raises(InvalidHubAnswer, match="did not answer JSON"):
            await client.revision_info(REPO)
    hub.clear_faults()
    hub.inject(hostile_tree([]), on="api", path="revision")  # a list, not the info object
    async with api(hub) as client:
        with pytest.raises(InvalidHubAnswer):
            await client.revision_info(REPO)


async def test_typed_errors(hub: HubServer) -> None:
    async with api(hub) as client:
        with pytest.raises(RevisionNotFound, match="revision not found"):
            await client.snapshot(REPO, "v9")
        with pytest.raises(EntryNotFound, match="file not found"):
            await client.list_tree(REPO, "main", "nope")
        with pytest.raises(RepoNotFound, match="private") as info:
            await client.snapshot(RepoRef("org/missing"))
        assert not info.value.retryable
        with pytest.raises(RepoNotFound):
            await client.snapshot(RepoRef("org/model", "dataset"))
    assert hub.category_counts()["api"] == 4  # one request each: typed errors are not retried


def test_repo_ids_checked_as_huggingface_hub_checks_them() -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    for rid in [
        "org/name",
        "gpt2",
        "a-b_c.d/E.F-1",
        "x/" + "y" * 96,
        "café/x",
        "a/b/c",
        ".a/b",
        "a/b-",
        "a--b/c",
        "a/b..c",
        "a/b.git",
        "",
        "a b/c",
        "x/" + "y" * 97,
    ]:
        try:
            validate_repo_id(rid)
            valid = True
        except HFValidationError:
            valid = False
        if valid:
            assert RepoRef(rid).repo_id == rid
        else:
            with pytest.raises(InvalidRepoId):
                RepoRef(rid)
    assert RepoRef("org/name").folder_name == "models--org--name"
    assert RepoRef("org/name", "dataset").folder_name == "datasets--org--name"
    assert RepoRef("gpt2").folder_name == "models--gpt2"


async def test_gated_repo_needs_the_token_for_files_only(hub: HubServer, tmp_path: Path) -> None:
    hub.set_gated(REPO.repo_id, token=TOKEN)
    token_path = tmp_path / "hf" / "token"
    async with api(hub, token_path=token_path) as client:
        info = await client.revision_info(REPO)  # the API answers anyone
        assert info.gated == "manual"
        snap = await client.snapshot(REPO)
    # its files answer only to the token, typed GatedRepo, saying how to give one
    for token, status in [(None, 401), ("hf_wrong", 403)]:
        async with api(hub, token=token, token_path=token_path) as client:
            with pytest.raises(GatedRepo) as info_:
                await client.file_metadata(REPO, snap.commit, "config.json")
        message = str(info_.value)
        assert info_.value.status == status and "gated" in message
        assert "HF_TOKEN" in message and str(token_path) in message
        assert TOKEN not in message and "hf_wrong" not in message
    async with api(hub, token=TOKEN) as client:
        meta = await client.file_metadata(REPO, snap.commit, "config.json")
    assert meta.etag == git_blob_sha1(FILES["config.json"])


async def test_file_metadata_as_huggingface_hub_reads_it(hub: HubServer) -> None:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    async with api(hub) as client:
        for path in ("config.json", "weights/big.bin", "onnx/model.onnx"):
            ours = await client.file_metadata(REPO, "main", path)
            theirs = get_hf_file_metadata(hf_hub_url(REPO.repo_id, path, endpoint=hub.url))
            assert (ours.commit, ours.etag, ours.size) == (
                theirs.commit_hash,
                theirs.etag,
                theirs.size,
            )
            assert ours.location == theirs.location
            digests = Digests(ours.identity(), name=path)
            digests.update(FILES[path])
            digests.verify()
        with pytest.raises(EntryNotFound):
            await client.file_metadata(REPO, "main", "nope.txt")
    big = hashlib.sha256(FILES["weights/big.bin"]).hexdigest()
    assert hub.request_count(f"/cdn/{big}", method="HEAD") == 1  # theirs follows; ours stops


async def test_private_repo_says_how_to_give_a_token(hub: HubServer, tmp_path: Path) -> None:
    hub.set_private(REPO.repo_id, token=TOKEN)
    token_path = tmp_path / "token"
    async with api(hub, token_path=token_path) as client:
        with pytest.raises(RepoNotFound) as info:
            await client.snapshot(REPO)
    message = str(info.value)
    assert "private" in message and "HF_TOKEN" in message and str(token_path) in message
    async with api(hub, token="hf_other") as client:
        with pytest.raises(RepoNotFound, match="this token has no access"):
            await client.snapshot(REPO)
    async with api(hub, token=TOKEN) as client:
        assert TOKEN not in repr(client)
        snap = await client.snapshot(REPO)
    assert len(snap.tree) == len(FILES)


async def test_the_token_never_shows_even_when_the_hub_echoes_it(hub: HubServer) -> None:
    echo = faults.status(401, b"{}", {"X-Error-Message": f"bad token {TOKEN}"})
    hub.inject(echo, on="api")
    async with api(hub, token=TOKEN) as client:
        with pytest.raises(HTTPStatus) as info:
            await client.revision_info(REPO)
    assert TOKEN not in str(info.value) and "<token>" in str(info.value)


async def test_the_token_goes_to_the_endpoint_host_only(hub: HubServer) -> None:
    with HubServer(require_token=TOKEN) as other:
        other.add_file(REPO.repo_id, "config.json", b"{}")
        # the other host accepts the token; it must still not receive it through a redirect
        hub.inject(faults.redirect_to(f"{other.url}{REPO.api_path}/revision/main"), on="api")
        async with api(hub, token=TOKEN) as client:
            with pytest.raises(RepoNotFound):
                await client.revision_info(REPO)
        assert other.requests == [("GET", f"{REPO.api_path}/revision/main")]


async def test_429_retry_after_then_success(hub: HubServer) -> None:
    hub.inject(faults.too_many_requests(retry_after=0.4), on="api", times=1)
    async with api(hub, backoff=0.01) as client:
        started = time.monotonic()
        info = await client.revision_info(REPO)
        waited = time.monotonic() - started
    assert info.commit == hub.commit(REPO.repo_id)
    assert waited >= 0.4  # the hub's wait, not the 0.01 s backoff
    assert hub.category_counts()["api"] == 2


async def test_server_errors_truncation_and_resets_are_retried(hub: HubServer) -> None:
    hub.inject(faults.status(503), on="api", times=1)
    hub.inject(faults.truncated(5), on="api", path="tree", times=1)
    hub.inject(faults.drop(), on="api", path="tree", times=1)
    async with api(hub) as client:
        snap = await client.snapshot(REPO)
    assert len(snap.tree) == len(FILES)
    hub.inject(faults.status(502), on="api")
    async with api(hub, retries=2) as client:
        with pytest.raises(HTTPStatus, match="502") as info:
            await client.revision_info(REPO)
    assert info.value.retryable


async def test_timeouts_and_refused_connections(hub: HubServer) -> None:
    hub.inject(faults.hang(), on="api")
    async with api(hub, timeout=0.3, retries=2) as client:
        with pytest.raises(Stalled, match=r"no answer within 0\.3 s"):
            await client.revision_info(REPO)
    async with HubAPI(faults.unused_url(), retries=2, backoff=0.01) as client:
        with pytest.raises(ConnectFailed, match="could not connect"):
            await client.revision_info(REPO)


async def test_a_renamed_repo_is_followed_on_the_same_host(hub: HubServer) -> None:
    hub.rename(REPO.repo_id, "org/renamed")
    async with api(hub, token=TOKEN) as client:
        snap = await client.snapshot(REPO)
    assert snap.info is not None and snap.info.repo_id == "org/renamed"
    assert len(snap.tree) == len(FILES)
    assert ("GET", "/api/models/org/renamed/revision/main") in hub.requests


def test_repo_file_identity_and_etag() -> None:
    lfs = RepoFile("m.onnx", 10, "b" * 40, lfs_sha256="c" * 64)
    assert lfs.etag == "c" * 64
    assert (lfs.identity().sha256, lfs.identity().git_sha1, lfs.identity().size) == (
        "c" * 64,
        None,
        10,
    )
    assert lfs.identity().evidence == "huggingface"


def test_the_hub_client_and_the_cache_do_not_import_aiohttp() -> None:
    # An all-cached pull must start fast: these modules stay off aiohttp (and http.client
    # until a request is made). The package __init__ is bypassed to see their own imports.
    import subprocess
    import sys

    import modelfetch

    code = (
        "import sys, types\n"
        "pkg = types.ModuleType('modelfetch')\n"
        f"pkg.__path__ = {list(modelfetch.__path__)!r}\n"
        "sys.modules['modelfetch'] = pkg\n"
        "import modelfetch.hub, modelfetch.hubtypes, modelfetch.hfcache, modelfetch.hfscan\n"
        "import modelfetch.hflocal\n"
        "import modelfetch.config\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('aiohttp', 'rich', 'http', 'multiformats')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
