"""The real huggingface_hub client against the loopback HubServer."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

hf = pytest.importorskip("huggingface_hub")
import httpx2  # noqa: E402  (huggingface_hub's HTTP client)
from huggingface_hub import errors as hf_errors  # noqa: E402

from modelfetch.testing import HubServer, faults, git_blob_sha1  # noqa: E402

CONFIG = b'{"model_type": "bert"}\n'
WEIGHTS = hashlib.sha256(b"w").digest() * 40_000  # 1.28 MB: LFS by size
ONNX = b"\x08\x07" + bytes(range(200)) * 10  # small, LFS because of the name
ROWS = b"text,label\nhello,1\n"


@pytest.fixture(autouse=True)
def _hf_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No telemetry, no token, no proxy: every request goes to the loopback hub."""
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in (
        "HF_TOKEN",
        "HF_HUB_OFFLINE",
        "HF_ENDPOINT",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with HubServer() as server:
        server.add_file("org/bert", "config.json", CONFIG)
        server.add_file("org/bert", "model.safetensors", WEIGHTS)
        server.add_file("org/bert", "onnx/model.onnx", ONNX)
        server.add_file("org/corpus", "data/train/rows.csv", ROWS, repo_type="dataset")
        yield server


def download(hub: HubServer, cache: Path, repo: str, filename: str, **kwargs: object) -> Path:
    path = hf.hf_hub_download(
        repo_id=repo, filename=filename, cache_dir=cache, endpoint=hub.url, **kwargs
    )
    return Path(path)


def test_small_file(hub: HubServer, tmp_path: Path) -> None:
    path = download(hub, tmp_path, "org/bert", "config.json")
    assert path.read_bytes() == CONFIG
    commit = hub.commit("org/bert")
    assert path == tmp_path / "models--org--bert" / "snapshots" / commit / "config.json"
    # the blob is named by the etag: the git blob SHA-1 of a non-LFS file
    assert path.resolve().name == git_blob_sha1(CONFIG)
    refs = tmp_path / "models--org--bert" / "refs" / "main"
    assert refs.read_text() == commit
    assert hub.requests == [
        ("HEAD", "/org/bert/resolve/main/config.json"),
        ("GET", "/org/bert/resolve/main/config.json"),
    ]


def test_lfs_files_follow_the_relative_redirect(hub: HubServer, tmp_path: Path) -> None:
    for name, data in (("model.safetensors", WEIGHTS), ("onnx/model.onnx", ONNX)):
        sha = hashlib.sha256(data).hexdigest()
        path = download(hub, tmp_path, "org/bert", name)
        assert path.read_bytes() == data
        assert path.resolve().name == sha
        assert ("HEAD", f"/org/bert/resolve/main/{name}") in hub.requests
        assert ("GET", f"/cdn/{sha}") in hub.requests
        assert hub.bytes_sent(name) == len(data)


def test_dataset_file_in_a_subdirectory(hub: HubServer, tmp_path: Path) -> None:
    path = download(hub, tmp_path, "org/corpus", "data/train/rows.csv", repo_type="dataset")
    assert path.read_bytes() == ROWS
    assert path.parts[-4:] == (
        hub.commit("org/corpus", repo_type="dataset"),
        "data",
        "train",
        "rows.csv",
    )
    assert "datasets--org--corpus" in path.parts


def test_pinned_revision_and_other_branch(hub: HubServer, tmp_path: Path) -> None:
    hub.add_file("org/bert", "config.json", b"{}", revision="v2")
    assert download(hub, tmp_path, "org/bert", "config.json", revision="v2").read_bytes() == b"{}"
    pinned = download(hub, tmp_path, "org/bert", "config.json", revision=hub.commit("org/bert"))
    assert pinned.read_bytes() == CONFIG


def test_files_on_disk_and_absolute_redirects(tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(WEIGHTS * 2)
    with HubServer(absolute_redirects=True) as hub:
        hub.add_file_from_path("o/r", "big.bin", source)
        path = download(hub, tmp_path / "cache", "o/r", "big.bin")
        assert path.read_bytes() == WEIGHTS * 2


def test_file_metadata(hub: HubServer) -> None:
    commit = hub.commit("org/bert")
    small = hf.get_hf_file_metadata(hf.hf_hub_url("org/bert", "config.json", endpoint=hub.url))
    assert (small.etag, small.size, small.commit_hash) == (
        git_blob_sha1(CONFIG),
        len(CONFIG),
        commit,
    )
    assert small.xet_file_data is None
    big = hf.get_hf_file_metadata(hf.hf_hub_url("org/bert", "model.safetensors", endpoint=hub.url))
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    assert (big.etag, big.size, big.commit_hash) == (sha, len(WEIGHTS), commit)
    assert big.location.startswith(f"{hub.url}/cdn/{sha}")
    assert big.xet_file_data is None


def test_gated_repo(hub: HubServer, tmp_path: Path) -> None:
    hub.set_gated("org/bert", token="secret")
    with pytest.raises(hf_errors.GatedRepoError):
        download(hub, tmp_path, "org/bert", "config.json")
    with pytest.raises(hf_errors.GatedRepoError):
        download(hub, tmp_path, "org/bert", "config.json", token="wrong")
    path = download(hub, tmp_path, "org/bert", "config.json", token="secret")
    assert path.read_bytes() == CONFIG
    assert ("GET", "/org/bert/resolve/main/config.json") in hub.requests


def test_missing_things(hub: HubServer, tmp_path: Path) -> None:
    with pytest.raises(hf_errors.EntryNotFoundError):
        download(hub, tmp_path, "org/bert", "nope.json")
    with pytest.raises(hf_errors.RevisionNotFoundError):
        download(hub, tmp_path, "org/bert", "config.json", revision="v9")
    with pytest.raises(hf_errors.RepositoryNotFoundError) as info:
        download(hub, tmp_path, "org/missing", "config.json")
    assert not isinstance(info.value, hf_errors.GatedRepoError)
    with pytest.raises(hf_errors.RepositoryNotFoundError):
        download(hub, tmp_path, "org/corpus", "data/train/rows.csv")  # it is a dataset


def test_missing_repo_answered_401(tmp_path: Path) -> None:
    with (
        HubServer(repo_not_found_status=401) as hub,
        pytest.raises(hf_errors.RepositoryNotFoundError),
    ):
        download(hub, tmp_path, "org/missing", "config.json")


def test_hf_retries_a_truncated_cdn_download(hub: HubServer, tmp_path: Path) -> None:
    hub.inject(faults.truncated(300_000), path="model.safetensors", on="cdn", times=1)
    path = download(hub, tmp_path, "org/bert", "model.safetensors")
    assert path.read_bytes() == WEIGHTS
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    assert hub.request_count(f"/cdn/{sha}", method="GET") == 2
    # hf only counts bytes it has written, in 10 MiB chunks: below that it starts over
    assert hub.bytes_sent(sha) == 300_000 + len(WEIGHTS)


def test_hf_resumes_with_a_range_after_its_first_chunk(tmp_path: Path) -> None:
    chunk = hf.constants.DOWNLOAD_CHUNK_SIZE
    data = hashlib.sha256(b"big").digest() * ((chunk + (2 << 20)) // 32)
    cut = chunk + 500_000
    with HubServer() as hub:
        hub.add_file("o/big", "model.bin", data)
        hub.inject(faults.truncated(cut), path="model.bin", on="cdn", times=1)
        assert download(hub, tmp_path, "o/big", "model.bin").read_bytes() == data
        assert hub.bytes_sent("model.bin") == cut + len(data) - chunk  # the rest, by Range


def test_hf_gives_up_on_a_connection_reset(hub: HubServer, tmp_path: Path) -> None:
    # huggingface_hub retries RemoteProtocolError/timeouts, but a RST is a ReadError: fatal.
    hub.inject(faults.reset(1000), path="model.safetensors", on="cdn", times=1)
    with pytest.raises(httpx2.ReadError):
        download(hub, tmp_path, "org/bert", "model.safetensors")
    assert hub.bytes_sent("model.safetensors") == 1000


def test_hf_keeps_corrupt_bytes_of_the_right_size(hub: HubServer, tmp_path: Path) -> None:
    # huggingface_hub checks sizes only: a flipped byte lands in its cache unnoticed.
    hub.inject(faults.wrong_bytes(at=10), path="onnx/model.onnx", times=1)
    data = download(hub, tmp_path, "org/bert", "onnx/model.onnx").read_bytes()
    assert len(data) == len(ONNX) and data != ONNX
    assert data[10] == ONNX[10] ^ 0xFF


def test_all_traffic_stayed_on_loopback(hub: HubServer, tmp_path: Path) -> None:
    assert os.environ.get("HF_ENDPOINT") is None
    download(hub, tmp_path, "org/bert", "onnx/model.onnx")
    assert hub.request_count() == 3  # HEAD resolve (302), HEAD cdn, GET cdn: nothing else


# -- the hub API, as huggingface_hub's HfApi and snapshot_download read it ---------------------


def test_repo_info_with_files_metadata(hub: HubServer) -> None:
    api = hf.HfApi(endpoint=hub.url, token=False)
    info = api.repo_info("org/bert", files_metadata=True)
    assert info.id == "org/bert" and info.sha == hub.commit("org/bert")
    assert info.private is False and info.gated is False
    assert info.last_modified is not None
    by_name = {s.rfilename: s for s in info.siblings}
    assert set(by_name) == {"config.json", "model.safetensors", "onnx/model.onnx"}
    config = by_name["config.json"]
    assert (config.size, config.blob_id, config.lfs) == (len(CONFIG), git_blob_sha1(CONFIG), None)
    weights = by_name["model.safetensors"]
    assert weights.lfs is not None
    assert (weights.lfs.sha256, weights.lfs.size) == (
        hashlib.sha256(WEIGHTS).hexdigest(),
        len(WEIGHTS),
    )
    pointer = (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{weights.lfs.sha256}\n"
        f"size {len(WEIGHTS)}\n"
    ).encode()
    assert weights.lfs.pointer_size == len(pointer) and weights.blob_id == git_blob_sha1(pointer)
    data = api.dataset_info("org/corpus")
    assert data.sha == hub.commit("org/corpus", repo_type="dataset")
    assert [s.rfilename for s in data.siblings] == ["data/train/rows.csv"]


def test_list_repo_tree_over_pages(hub: HubServer) -> None:
    hub.tree_page_size = 2
    api = hf.HfApi(endpoint=hub.url, token=False)
    entries = list(api.list_repo_tree("org/bert", recursive=True))
    files = {e.path: e for e in entries if isinstance(e, hf.hf_api.RepoFile)}
    folders = [e.path for e in entries if isinstance(e, hf.hf_api.RepoFolder)]
    assert set(files) == {"config.json", "model.safetensors", "onnx/model.onnx"}
    assert folders == ["onnx"]
    assert files["config.json"].blob_id == git_blob_sha1(CONFIG)
    assert files["onnx/model.onnx"].lfs.sha256 == hashlib.sha256(ONNX).hexdigest()
    assert len(hub.requests_in("api")) == 2  # 4 entries, 2 a page, followed by Link
    top = [e.path for e in api.list_repo_tree("org/bert")]
    assert top == ["config.json", "model.safetensors", "onnx"]
    inside = [e.path for e in api.list_repo_tree("org/bert", path_in_repo="onnx")]
    assert inside == ["onnx/model.onnx"]
    with pytest.raises(hf_errors.EntryNotFoundError):
        list(api.list_repo_tree("org/bert", path_in_repo="nope"))


def snapshot(hub: HubServer, cache: Path, repo: str, **kwargs: object) -> Path:
    kwargs.setdefault("token", False)
    return Path(hf.snapshot_download(repo, cache_dir=cache, endpoint=hub.url, **kwargs))


def test_snapshot_download_with_patterns(hub: HubServer, tmp_path: Path) -> None:
    hub.tree_page_size = 1
    path = snapshot(
        hub,
        tmp_path,
        "org/bert",
        allow_patterns=["*.json", "onnx/"],
        ignore_patterns=["*.safetensors"],
    )
    commit = hub.commit("org/bert")
    assert path == tmp_path / "models--org--bert" / "snapshots" / commit
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) == [
        "config.json",
        "onnx/model.onnx",
    ]
    assert (path / "onnx" / "model.onnx").read_bytes() == ONNX
    listing = json.loads((tmp_path / "models--org--bert" / "trees" / f"{commit}.json").read_text())
    assert set(listing["files"]) == {"config.json", "model.safetensors", "onnx/model.onnx"}
    data = snapshot(hub, tmp_path, "org/corpus", repo_type="dataset")
    assert (data / "data" / "train" / "rows.csv").read_bytes() == ROWS
    assert "datasets--org--corpus" in data.parts
    # offline, the tree listing tells this partial snapshot from a complete one
    with pytest.raises(hf_errors.IncompleteSnapshotError):
        snapshot(hub, tmp_path, "org/bert", local_files_only=True)


def test_snapshot_download_follows_a_moved_branch(hub: HubServer, tmp_path: Path) -> None:
    first = snapshot(hub, tmp_path, "org/bert")
    new = hub.push(
        "org/bert", {"config.json": b'{"model_type": "gpt2"}\n'}, delete=["onnx/model.onnx"]
    )
    hub.reset_counters()
    second = snapshot(hub, tmp_path, "org/bert")
    assert second.name == new != first.name
    assert (second / "config.json").read_bytes() == b'{"model_type": "gpt2"}\n'
    assert not (second / "onnx").exists()
    assert (first / "config.json").read_bytes() == CONFIG  # the old snapshot is intact
    assert (tmp_path / "models--org--bert" / "refs" / "main").read_text() == new
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    assert hub.request_count(f"/cdn/{sha}", method="GET") == 0  # unchanged blob reused
    old = snapshot(hub, tmp_path / "other", "org/bert", revision=first.name)
    assert (old / "onnx" / "model.onnx").read_bytes() == ONNX  # old commits stay served
    hub.tag("org/bert", "v1.0", first.name)
    tagged = snapshot(hub, tmp_path / "tagged", "org/bert", revision="v1.0")
    assert tagged.name == first.name


def test_snapshot_download_of_a_gated_repo(hub: HubServer, tmp_path: Path) -> None:
    hub.set_gated("org/bert", token="secret")
    api = hf.HfApi(endpoint=hub.url, token=False)
    assert api.repo_info("org/bert").gated == "manual"  # the API answers without a token
    assert len(list(api.list_repo_tree("org/bert", recursive=True))) == 4
    with pytest.raises(hf_errors.GatedRepoError):
        snapshot(hub, tmp_path, "org/bert")
    with pytest.raises(hf_errors.GatedRepoError):
        snapshot(hub, tmp_path, "org/bert", token="wrong")
    path = snapshot(hub, tmp_path, "org/bert", token="secret")
    assert (path / "model.safetensors").read_bytes() == WEIGHTS


def test_private_repo(hub: HubServer, tmp_path: Path) -> None:
    hub.set_private("org/bert", token="secret")
    api = hf.HfApi(endpoint=hub.url, token=False)
    for call in (
        lambda: api.repo_info("org/bert"),
        lambda: list(api.list_repo_tree("org/bert")),
        lambda: snapshot(hub, tmp_path, "org/bert"),
        lambda: download(hub, tmp_path, "org/bert", "config.json", token=False),
    ):
        with pytest.raises(hf_errors.RepositoryNotFoundError) as info:
            call()
        assert not isinstance(info.value, hf_errors.GatedRepoError)
    assert hf.HfApi(endpoint=hub.url, token="secret").repo_info("org/bert").private is True
    assert (snapshot(hub, tmp_path, "org/bert", token="secret") / "config.json").exists()


def test_revision_not_found_and_a_renamed_repo(hub: HubServer, tmp_path: Path) -> None:
    api = hf.HfApi(endpoint=hub.url, token=False)
    with pytest.raises(hf_errors.RevisionNotFoundError):
        api.repo_info("org/bert", revision="v9")
    with pytest.raises(hf_errors.RevisionNotFoundError):
        snapshot(hub, tmp_path, "org/bert", revision="v9")
    hub.rename("org/bert", "org/bert-base")
    assert api.repo_info("org/bert").id == "org/bert-base"
    assert download(hub, tmp_path, "org/bert", "config.json", token=False).read_bytes() == CONFIG


def test_api_faults_and_counters(hub: HubServer, tmp_path: Path) -> None:
    hub.inject(faults.status(500), on="api", times=1)
    hub.inject(faults.status(503), on="api", path="tree", times=1)
    with pytest.raises(hf_errors.HfHubHTTPError):
        hf.HfApi(endpoint=hub.url, token=False).repo_info("org/bert")  # repo_info: no retry
    path = snapshot(hub, tmp_path, "org/bert")  # the tree page is retried by hf's backoff
    assert (path / "config.json").exists()
    counts = hub.category_counts()
    assert counts["api"] == 4  # 500, revision, 503, tree
    assert counts["resolve"] == 4  # a HEAD of each file, and the GET of the small one
    assert counts["cdn"] == 4  # HEAD and GET of each LFS file
