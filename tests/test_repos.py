"""Hugging Face repo ids through the library, judged by huggingface_hub's own client.

The loopback hub counts every request, so "a second pull costs one request" and "offline
sends nothing" are counted, not assumed; the real `huggingface_hub` reads what modelfetch
wrote (and modelfetch reuses what it wrote), both ways.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

hf = pytest.importorskip("huggingface_hub")

import modelfetch  # noqa: E402
from modelfetch.catalog import HuggingFaceRef, ModelSpec  # noqa: E402
from modelfetch.config import Settings, load_settings  # noqa: E402
from modelfetch.engine import Fetcher  # noqa: E402
from modelfetch.errors import (  # noqa: E402
    GatedRepo,
    InvalidHubAnswer,
    InvalidRepoId,
    NoMatchingFiles,
    NotCached,
    RepoNotFound,
    UnsafePath,
)
from modelfetch.hfcache import HFCache  # noqa: E402
from modelfetch.hubtypes import RepoRef  # noqa: E402
from modelfetch.results import ModelResult  # noqa: E402
from modelfetch.testing import HubServer, faults  # noqa: E402

REPO = "org/model"
BIG = "weights/big.bin"
FILES = {
    "config.json": b'{"model_type": "bert", "hidden_size": 8}\n',
    "tokenizer_config.json": b'{"model_max_length": 16}\n',
    "onnx/readme.txt": b"small text " * 10,
    BIG: bytes(range(256)) * 40,  # 10 kB: LFS at this hub's threshold
}
ROWS = {"data/train.csv": b"a,b\n1,2\n", "README.md": b"# corpus\n"}


@pytest.fixture(autouse=True)
def _hf_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with HubServer(lfs_threshold=4000, tree_page_size=2) as server:
        for path, data in FILES.items():
            server.add_file(REPO, path, data)
        for path, data in ROWS.items():
            server.add_file("org/corpus", path, data, repo_type="dataset")
        yield server


def settings_for(hub: HubServer, tmp_path: Path, **hf_changes: Any) -> Settings:
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "MODELFETCH_HOME": str(tmp_path / "models"),
        "HOME": str(tmp_path),
    }
    s = load_settings(env=env)
    hf_settings = replace(s.huggingface, backoff=0.01, max_backoff=0.05, **hf_changes)
    return replace(s, huggingface=hf_settings, ipfs=replace(s.ipfs, gateways=()))


def cache_of(settings: Settings) -> HFCache:
    return HFCache(settings.huggingface.cache_dir)


async def pull(settings: Settings, name: str = REPO, **options: Any) -> ModelResult:
    [result] = await modelfetch.apull(name, settings=settings, **options)
    return result


def by_path(result: ModelResult) -> dict[str, Any]:
    return {f.path: f for f in result.files}


def leftovers(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if p.name.endswith((".tmp", ".incomplete"))]


# -- huggingface_hub reads what modelfetch wrote -----------------------------------------------


async def test_huggingface_hub_finds_every_file_offline(hub: HubServer, tmp_path: Path) -> None:
    settings = settings_for(hub, tmp_path)
    result = await pull(settings)
    assert result.ok, result.errors
    commit = hub.commit(REPO)
    cache = cache_of(settings)
    assert result.commit == commit
    assert result.snapshot == result.dir == cache.snapshot_dir(RepoRef(REPO), commit)
    assert {f.path: f.source for f in result.files} == dict.fromkeys(FILES, "huggingface")
    # the revision, then the tree's pages (4 files + 2 dirs, 2 per page), then the files
    api = [p for _, p in hub.requests_in("api")]
    assert api[0].endswith("/revision/main") and len(api) == 4
    assert all(f"/tree/{commit}" in p for p in api[1:])
    assert hub.request_count("/resolve/main/config.json") == 0  # pinned to the commit
    hub.reset_counters()
    root = cache.root
    path = hf.snapshot_download(REPO, cache_dir=root, local_files_only=True)
    assert Path(path) == result.snapshot
    for name, data in FILES.items():
        got = hf.hf_hub_download(REPO, name, cache_dir=root, local_files_only=True)
        assert Path(got).read_bytes() == data
        assert not os.readlink(got).startswith("/")
    report = hf.scan_cache_dir(root)
    assert report.warnings == []
    (repo,) = report.repos
    assert (repo.repo_id, repo.nb_files, repo.size_on_disk) == (
        REPO,
        len(FILES),
        sum(len(d) for d in FILES.values()),
    )
    assert hub.request_count() == 0
    assert leftovers(root) == []
    etag = next(
        f for f in hf.HfApi(endpoint=hub.url).list_repo_tree(REPO) if f.path == "config.json"
    )
    assert (root / ".locks" / "models--org--model" / f"{etag.blob_id}.lock").exists()


async def test_a_second_pull_costs_one_request(hub: HubServer, tmp_path: Path) -> None:
    settings = settings_for(hub, tmp_path)
    assert (await pull(settings)).ok
    hub.reset_counters()
    again = await pull(settings)
    assert again.ok
    assert {f.source for f in again.files} == {"cache"}
    assert sum(f.bytes_downloaded for f in again.files) == 0
    assert hub.request_count() == 1
    assert hub.requests_in("api")[0][1].endswith("/revision/main")
    # a commit revision and the cached tree listing: no request at all
    hub.reset_counters()
    pinned = await pull(settings, revision=again.commit)
    assert pinned.ok and hub.request_count() == 0


async def test_a_moved_branch_moves_only_what_changed(hub: HubServer, tmp_path: Path) -> None:
    settings = settings_for(hub, tmp_path)
    first = await pull(settings)
    old = first.commit
    assert old is not None and first.snapshot is not None
    new = hub.push(REPO, {"config.json": b'{"model_type": "bert", "hidden_size": 16}\n'})
    hub.reset_counters()
    second = await pull(settings)
    assert second.ok and second.commit == new != old
    files = by_path(second)
    assert files["config.json"].source == "huggingface"
    assert {files[p].source for p in FILES if p != "config.json"} == {"cache"}
    assert sum(f.bytes_downloaded for f in second.files) == files["config.json"].size
    assert hub.bytes_sent(BIG) == 0
    cache = cache_of(settings)
    assert cache.read_ref(RepoRef(REPO), "main") == new
    # the old snapshot is intact, its links still resolve to the old bytes
    assert (first.snapshot / "config.json").read_bytes() == FILES["config.json"]
    assert (first.snapshot / BIG).read_bytes() == FILES[BIG]
    assert hf.scan_cache_dir(cache.root).warnings == []
    got = hf.hf_hub_download(REPO, "config.json", cache_dir=cache.root, local_files_only=True)
    assert b"16" in Path(got).read_bytes()


async def test_datasets_and_include_exclude(hub: HubServer, tmp_path: Path) -> None:
    settings = settings_for(hub, tmp_path)
    rows = await pull(settings, "org/corpus", repo_type="dataset")
    assert rows.ok and {f.path for f in rows.files} == set(ROWS)
    assert rows.snapshot is not None and "datasets--org--corpus" in str(rows.snapshot)
    got = hf.snapshot_download(
        "org/corpus", repo_type="dataset", cache_dir=cache_of(settings).root, local_files_only=True
    )
    assert Path(got) == rows.snapshot
    some = await pull(settings, include=["*.json", "weights/"], exclude=["tokenizer*"])
    assert {f.path for f in some.files} == {"config.json", BIG}
    hub.push(REPO, {"odd[1].txt": b"glob characters in a name"})
    exact = await pull(settings, include=["odd[1].txt"])  # as the mirror asks, by name
    assert [f.path for f in exact.files] == ["odd[1].txt"]
    with pytest.raises(NoMatchingFiles, match=r"\*.nothing"):
        await pull(settings, include=["*.nothing"])


async def test_malformed_repo_ids_fail_before_any_request(hub: HubServer, tmp_path: Path) -> None:
    settings = settings_for(hub, tmp_path)
    for bad in ["org/na me", "org/a/b", "org/--x", "org/x.git"]:
        with pytest.raises(InvalidRepoId):
            await pull(settings, bad)
    assert hub.request_count() == 0


# -- modelfetch reuses what huggingface_hub wrote -----------------------------------------------


async def test_we_reuse_what_huggingface_hub_downloaded(hub: HubServer, tmp_path: Path) -> None:
    settings = settings_for(hub, tmp_path)
    root = cache_of(settings).root
    await asyncio.to_thread(hf.snapshot_download, REPO, cache_dir=root, endpoint=hub.url)
    hub.reset_counters()
    result = await pull(settings)
    assert result.ok
    assert {f.source for f in result.files} == {"cache"}
    assert sum(f.bytes_downloaded for f in result.files) == 0
    assert hub.requests_in("resolve") == [] and hub.requests_in("cdn") == []
    # its tree listing was read (one request), or it wrote none and the tree was listed
    assert len(hub.requests_in("api")) in (1, 4)


async def test_a_catalog_model_links_the_hf_cache_blob(hub: HubServer, tmp_path: Path) -> None:
    spec = ModelSpec("cat", "cat", (BIG, "config.json"), huggingface=HuggingFaceRef(REPO))
    settings = replace(settings_for(hub, tmp_path), models={"cat": spec})
    root = cache_of(settings).root
    await asyncio.to_thread(hf.snapshot_download, REPO, cache_dir=root, endpoint=hub.url)
    hub.reset_counters()
    async with Fetcher(settings) as fetcher:
        result = await fetcher.pull_model("cat")
    assert result.ok, result.errors
    assert {f.source for f in result.files} == {"cache"}
    assert hub.bytes_sent(BIG) == 0 and hub.bytes_sent("config.json") == 0
    final = settings.models_dir / "cat" / BIG
    blob = Path(hf.hf_hub_download(REPO, BIG, cache_dir=root, local_files_only=True)).resolve()
    assert final.read_bytes() == FILES[BIG]
    assert os.stat(final).st_ino == os.stat(blob).st_ino  # a hard link: no second copy
    # offline, with no manifest either: the blob's name (the hub's hash) is the evidence
    (settings.models_dir / ".manifests.json").unlink()
    for f in result.files:
        f.local_path.unlink()
    hub.reset_counters()
    offline = replace(settings, huggingface=replace(settings.huggingface, offline=True))
    async with Fetcher(offline) as fetcher:
        again = await fetcher.pull_model("cat")
    assert again.ok, again.errors
    assert hub.request_count() == 0


async def test_a_corrupt_hf_blob_is_never_used_nor_deleted(
    hub: HubServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = ModelSpec("cat", "cat", (BIG,), huggingface=HuggingFaceRef(REPO))
    settings = replace(settings_for(hub, tmp_path), models={"cat": spec})
    root = cache_of(settings).root
    await asyncio.to_thread(hf.snapshot_download, REPO, cache_dir=root, endpoint=hub.url)
    blob = Path(hf.hf_hub_download(REPO, BIG, cache_dir=root, local_files_only=True)).resolve()
    wrong = b"x" * len(FILES[BIG])
    blob.write_bytes(wrong)  # same size, other bytes: only the hash can tell
    caplog.set_level(logging.WARNING)
    async with Fetcher(settings) as fetcher:
        result = await fetcher.pull_model("cat")
    assert result.ok
    assert by_path(result)[BIG].source == "huggingface"
    assert (settings.models_dir / "cat" / BIG).read_bytes() == FILES[BIG]
    assert blob.read_bytes() == wrong  # another tool's file: reported, left alone
    assert str(blob) in caplog.text and "does not match" in caplog.text


async def test_a_corrupt_blob_of_ours_is_replaced_atomically(
    hub: HubServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(hub, tmp_path)
    first = await pull(settings)
    blob = (first.dir / BIG).resolve()
    blob.write_bytes(b"y" * len(FILES[BIG]))
    caplog.set_level(logging.WARNING)
    hub.reset_counters()
    again = await pull(settings)
    assert again.ok
    assert by_path(again)[BIG].source == "huggingface"
    assert blob.read_bytes() == FILES[BIG]
    assert (again.dir / BIG).resolve() == blob
    assert "does not match" in caplog.text
    assert leftovers(cache_of(settings).root) == []


async def test_a_cut_transfer_leaves_no_link_and_resumes(hub: HubServer, tmp_path: Path) -> None:
    settings = settings_for(hub, tmp_path, retries=1)
    hub.inject(faults.reset(after_bytes=6000), on="cdn", times=1)
    first = await pull(settings)
    assert not first.ok and {f.path for f in first.files} == set(FILES) - {BIG}
    assert first.snapshot is not None and not os.path.lexists(first.snapshot / BIG)
    root = cache_of(settings).root
    assert hf.scan_cache_dir(root).warnings == []  # a partial snapshot, never a broken link
    hub.reset_counters()
    second = await pull(settings)
    assert second.ok
    big = by_path(second)[BIG]
    assert big.source == "huggingface" and 0 < big.bytes_downloaded < len(FILES[BIG])
    assert first.snapshot == second.snapshot
    assert (first.snapshot / BIG).read_bytes() == FILES[BIG]
    assert leftovers(root) == []


# -- both at once -------------------------------------------------------------------------------


async def test_modelfetch_and_huggingface_hub_at_once(hub: HubServer, tmp_path: Path) -> None:
    settings = settings_for(hub, tmp_path)
    root = cache_of(settings).root
    hub.inject(faults.slow(40_000), on="cdn")  # the LFS file takes a quarter of a second
    theirs = asyncio.to_thread(hf.snapshot_download, REPO, cache_dir=root, endpoint=hub.url)
    ours, path = await asyncio.gather(pull(settings), theirs)
    assert ours.ok and Path(path) == ours.snapshot
    for name, data in FILES.items():
        assert (Path(path) / name).read_bytes() == data
        assert hub.bytes_sent(f"{REPO}/{name}") == len(data)  # one blob written once
    assert hf.scan_cache_dir(root).warnings == []
    assert leftovers(root) == []


# -- offline, gated, hostile ------------------------------------------------------------------


async def test_offline_sends_nothing_and_names_what_is_missing(
    hub: HubServer, tmp_path: Path
) -> None:
    settings = settings_for(hub, tmp_path)
    assert (await pull(settings, include=["*.json"])).ok
    hub.reset_counters()
    offline = replace(settings, huggingface=replace(settings.huggingface, offline=True))
    result = await pull(offline)
    assert hub.request_count() == 0
    assert {f.path for f in result.files} == {"config.json", "tokenizer_config.json"}
    missing = sorted(str(e) for e in result.errors)
    assert all(isinstance(e, NotCached) for e in result.errors)
    assert len(missing) == 2 and BIG in missing[1] and "onnx/readme.txt" in missing[0]
    # what is in place is verified: a changed file is no longer good
    (result.dir / "config.json").resolve().write_bytes(b"{}" + b" " * 40)
    again = await pull(offline, include=["config.json"])
    assert not again.ok and hub.request_count() == 0
    unknown = await pull(offline, revision="v9")
    assert isinstance(unknown.errors[0], NotCached) and "v9" in str(unknown.errors[0])


async def test_gated_and_private_repos_say_how_to_give_a_token(
    hub: HubServer, tmp_path: Path
) -> None:
    hub.set_gated(REPO, "secret")
    settings = settings_for(hub, tmp_path)
    result = await pull(settings)
    [error] = result.errors
    assert isinstance(error, GatedRepo)
    assert "gated" in str(error) and "HF_TOKEN" in str(error) and "hf auth login" in str(error)
    assert hub.requests_in("resolve") == []  # told before any file was asked for
    with_token = replace(settings, huggingface=replace(settings.huggingface, token="secret"))
    assert (await pull(with_token)).ok
    hub.set_private("org/corpus", "secret", repo_type="dataset")
    hidden = await pull(settings, "org/corpus", repo_type="dataset")
    [error] = hidden.errors
    assert isinstance(error, RepoNotFound)
    assert "private" in str(error) and "HF_TOKEN" in str(error)
    assert "secret" not in str(error)


async def test_a_hostile_tree_listing_writes_nothing(hub: HubServer, tmp_path: Path) -> None:
    settings = settings_for(hub, tmp_path)
    good = {"type": "file", "oid": "a" * 40, "size": 3, "path": "ok.txt"}
    for bad in ["../escape.txt", "/etc/passwd", "a/../../b"]:
        hub.clear_faults()
        body = json.dumps([good, {**good, "path": bad}]).encode()
        hub.inject(faults.status(200, body, {"Content-Type": "application/json"}), on="api")
        result = await pull(settings, revision=hub.commit(REPO))
        [error] = result.errors
        assert isinstance(error, InvalidHubAnswer) and "unsafe" in str(error)
        assert not (tmp_path / "hub").exists()
        assert not (tmp_path / "escape.txt").exists()
    assert hub.requests_in("resolve") == []


# -- --local-dir ---------------------------------------------------------------------------------


async def test_local_dir_is_plain_files_huggingface_hub_trusts(
    hub: HubServer, tmp_path: Path
) -> None:
    settings = settings_for(hub, tmp_path)
    out = tmp_path / "out"
    result = await pull(settings, local_dir=out)
    assert result.ok and result.snapshot == out
    for name, data in FILES.items():
        assert (out / name).read_bytes() == data and not (out / name).is_symlink()
    hub.reset_counters()
    for name in FILES:
        hf.hf_hub_download(REPO, name, revision=result.commit, local_dir=out, endpoint=hub.url)
    assert hub.request_count() == 0  # up to date by its own metadata
    offline = replace(settings, huggingface=replace(settings.huggingface, offline=True))
    again = await pull(offline, local_dir=out)
    assert again.ok and again.commit == result.commit and hub.request_count() == 0
    # from the HF cache into another local dir: no transfer
    assert (await pull(settings)).ok
    hub.reset_counters()
    other = await pull(settings, local_dir=tmp_path / "other")
    assert {f.source for f in other.files} == {"cache"}
    assert hub.requests_in("resolve") == [] and hub.requests_in("cdn") == []


def test_pull_blocking_form(hub: HubServer, tmp_path: Path) -> None:
    settings = settings_for(hub, tmp_path)
    [result] = modelfetch.pull(REPO, settings=settings, include=["config.json"])
    assert result.ok and [f.path for f in result.files] == ["config.json"]


async def test_transformers_loads_what_we_wrote_offline(hub: HubServer, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    words = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]")
    )
    words.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    hub.push(
        REPO,
        {
            "tokenizer.json": words.to_str().encode(),
            "tokenizer_config.json": json.dumps(
                {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]"}
            ).encode(),
        },
    )
    settings = settings_for(hub, tmp_path)
    assert (await pull(settings)).ok
    hub.reset_counters()
    # A fresh interpreter: huggingface_hub reads HF_HUB_OFFLINE once, when imported.
    script = (
        "import transformers as t\n"
        f"c = t.AutoConfig.from_pretrained({REPO!r})\n"
        f"k = t.AutoTokenizer.from_pretrained({REPO!r})\n"
        "print(c.model_type, c.hidden_size, k('hello world')['input_ids'])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache_of(settings).root), HF_ENDPOINT=hub.url)
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "bert 8 [1, 2]"
    assert hub.request_count() == 0


async def test_a_revision_that_is_no_ref_name_fails_first(hub: HubServer, tmp_path: Path) -> None:
    settings = settings_for(hub, tmp_path)
    with pytest.raises(UnsafePath):
        await pull(settings, revision="../../etc")
    assert hub.request_count() == 0
