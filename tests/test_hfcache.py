"""The Hugging Face cache layout (hfcache, hfscan, hflocal), judged by huggingface_hub itself."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

hf = pytest.importorskip("huggingface_hub")
from filelock import Timeout  # noqa: E402
from huggingface_hub import errors as hf_errors  # noqa: E402
from huggingface_hub._local_folder import CACHEDIR_TAG_CONTENT as HF_TAG  # noqa: E402

from modelfetch.errors import StorageError, UnsafePath  # noqa: E402
from modelfetch.hashes import Digests  # noqa: E402
from modelfetch.hfcache import HFCache  # noqa: E402
from modelfetch.hflocal import LocalDir  # noqa: E402
from modelfetch.hub import HubAPI, RepoFile, RepoRef, RepoSnapshot  # noqa: E402
from modelfetch.testing import HubServer, faults  # noqa: E402

REPO = RepoRef("org/model")
DATA = RepoRef("org/corpus", "dataset")
BIG = "weights/big.bin"
FILES = {
    "config.json": b'{"a": 1}\n',
    "tokenizer.json": b"t" * 3000,
    "onnx/model.onnx": b"\x08\x07" + bytes(range(256)) * 8,
    "onnx/deep/er/model_q4.onnx": b"\x08\x07" + bytes(range(256)) * 3,
    BIG: hashlib.sha256(b"w").digest() * 5000,  # 160 kB: LFS at this hub's threshold
}
ROWS = {"data/train.csv": b"a,b\n1,2\n", "README.md": b"# corpus\n"}


@pytest.fixture(autouse=True)
def _hf_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with HubServer(lfs_threshold=100_000) as server:
        for path, data in FILES.items():
            server.add_file(REPO.repo_id, path, data)
        for path, data in ROWS.items():
            server.add_file(DATA.repo_id, path, data, repo_type="dataset")
        yield server


async def fill(
    hub: HubServer,
    cache: HFCache,
    tmp: Path,
    repo: RepoRef = REPO,
    revision: str = "main",
    include: tuple[str, ...] = (),
    contents: dict[str, bytes] = FILES,
) -> RepoSnapshot:
    """What the engine will do: list, then per file install a verified blob and link it."""
    async with HubAPI(hub.url) as api:
        snap = await api.snapshot(repo, revision, include=include)
    for f in snap.files:
        data = contents[f.path]
        digests = Digests(f.identity(), name=f.path)
        digests.update(data)
        digests.verify()
        source = tmp / f"download-{uuid.uuid4().hex}"
        source.write_bytes(data)
        with cache.lock(repo, f.etag):
            if cache.find_blob(repo, f.etag) is None:
                assert cache.install_blob(repo, f.etag, source)
            cache.link(repo, snap.commit, f.path, f.etag)
        assert not source.exists()
    cache.write_tree(repo, snap.commit, snap.tree)
    cache.write_ref(repo, revision, snap.commit)
    return snap


def leftovers(root: Path) -> list[str]:
    return [
        p.name
        for p in root.rglob("*")
        if p.name.endswith((".tmp", ".incomplete")) or "tmp_" in p.name
    ]


# -- huggingface_hub reads what hfcache wrote --------------------------------------------------


async def test_huggingface_hub_uses_our_cache_offline(hub: HubServer, tmp_path: Path) -> None:
    cache = HFCache(tmp_path / "hub")
    snap = await fill(hub, cache, tmp_path)
    folder = cache.root / "models--org--model"
    hub.reset_counters()
    path = hf.snapshot_download(REPO.repo_id, cache_dir=cache.root, local_files_only=True)
    assert Path(path) == folder / "snapshots" / snap.commit
    for name, data in FILES.items():
        got = hf.hf_hub_download(REPO.repo_id, name, cache_dir=cache.root, local_files_only=True)
        assert Path(got) == cache.snapshot_path(REPO, snap.commit, name)
        assert Path(got).read_bytes() == data
        assert not os.readlink(got).startswith("/")  # relative, as huggingface_hub links
        etag = snap.file(name).etag
        assert Path(got).resolve() == folder / "blobs" / etag
        assert (cache.root / ".locks" / "models--org--model" / f"{etag}.lock").exists()
    assert hub.request_count() == 0
    report = hf.scan_cache_dir(cache.root)
    assert report.warnings == []
    (repo,) = report.repos
    assert (repo.repo_id, repo.repo_type, repo.nb_files) == (REPO.repo_id, "model", len(FILES))
    assert repo.size_on_disk == sum(len(d) for d in FILES.values())
    assert {r for rev in repo.revisions for r in rev.refs} == {"main"}
    assert (cache.root / "CACHEDIR.TAG").read_text() == HF_TAG
    assert (folder / "refs" / "main").read_bytes() == snap.commit.encode()  # no newline
    blob_mode = stat.S_IMODE((folder / "blobs" / snap.file("config.json").etag).stat().st_mode)
    probe = tmp_path / "probe"
    probe.touch()  # the mode any new file gets here, as huggingface_hub gives its blobs
    assert blob_mode == stat.S_IMODE(probe.stat().st_mode)
    assert leftovers(cache.root) == []
    # online again: huggingface_hub trusts our tree listing: one revision request, nothing else
    hf.snapshot_download(REPO.repo_id, cache_dir=cache.root, endpoint=hub.url, token=False)
    assert hub.requests == [("GET", "/api/models/org/model/revision/main")]


async def test_a_partial_snapshot_is_known_incomplete(hub: HubServer, tmp_path: Path) -> None:
    cache = HFCache(tmp_path / "hub")
    snap = await fill(hub, cache, tmp_path, include=("*.json",))
    with pytest.raises(hf_errors.IncompleteSnapshotError):
        hf.snapshot_download(REPO.repo_id, cache_dir=cache.root, local_files_only=True)
    ok = hf.snapshot_download(
        REPO.repo_id, cache_dir=cache.root, local_files_only=True, allow_patterns=["*.json"]
    )
    assert Path(ok).name == snap.commit
    scanned = cache.scan().repo("model", REPO.repo_id)
    assert scanned is not None
    (snapshot,) = scanned.snapshots
    assert snapshot.missing == tuple(sorted(p for p in FILES if not p.endswith(".json")))


async def test_datasets_and_nested_refs(hub: HubServer, tmp_path: Path) -> None:
    cache = HFCache(tmp_path / "hub")
    hub.add_file(DATA.repo_id, "data/train.csv", b"pr\n", revision="refs/pr/1", repo_type="dataset")
    main = await fill(hub, cache, tmp_path, DATA, contents=ROWS)
    pr = await fill(hub, cache, tmp_path, DATA, "refs/pr/1", contents={"data/train.csv": b"pr\n"})
    folder = cache.root / "datasets--org--corpus"
    assert (folder / "refs" / "refs" / "pr" / "1").read_text() == pr.commit
    assert (
        cache.read_ref(DATA, "refs/pr/1") == pr.commit
        and cache.read_ref(DATA, "main") == main.commit
    )
    got = hf.hf_hub_download(
        DATA.repo_id,
        "data/train.csv",
        repo_type="dataset",
        revision="refs/pr/1",
        cache_dir=cache.root,
        local_files_only=True,
    )
    assert Path(got).read_bytes() == b"pr\n"
    report = hf.scan_cache_dir(cache.root)
    assert report.warnings == []
    (repo,) = report.repos
    assert {r for rev in repo.revisions for r in rev.refs} == {"main", "refs/pr/1"}
    with pytest.raises(UnsafePath):
        cache.write_ref(DATA, "../escape", main.commit)
    mtime = (folder / "refs" / "main").stat().st_mtime_ns
    cache.write_ref(DATA, "main", main.commit)  # unchanged: not rewritten
    assert (folder / "refs" / "main").stat().st_mtime_ns == mtime


# -- hfcache reads what huggingface_hub wrote --------------------------------------------------


async def test_we_find_what_huggingface_hub_wrote(hub: HubServer, tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    hf.snapshot_download(REPO.repo_id, cache_dir=theirs, endpoint=hub.url, token=False)
    async with HubAPI(hub.url) as api:
        snap = await api.snapshot(REPO)
    cache = HFCache(theirs)
    assert cache.read_ref(REPO, "main") == snap.commit
    assert cache.read_tree(REPO, snap.commit) == {f.path: f for f in snap.tree}
    for f in snap.tree:
        blob = cache.find_blob(REPO, f.etag)
        assert blob is not None
        digests = Digests(f.identity(), name=f.path)
        digests.update(blob.read_bytes())
        digests.verify()
        assert cache.linked_etag(REPO, snap.commit, f.path) == f.etag
    assert cache.find_blob(REPO, "0" * 64) is None
    scanned = cache.scan()
    assert scanned.problems == ()
    (repo,) = scanned.repos
    hf_repo = next(iter(hf.scan_cache_dir(theirs).repos))
    assert (repo.repo_id, repo.size_on_disk) == (REPO.repo_id, hf_repo.size_on_disk)
    assert repo.refs == {"main": snap.commit}
    (snapshot,) = repo.snapshots
    assert {f.path: f.etag for f in snapshot.files} == {f.path: f.etag for f in snap.tree}
    assert snapshot.missing == () and repo.problems == () and repo.incomplete == ()
    # and our listing of the same commit is byte for byte the one huggingface_hub wrote
    ours = HFCache(tmp_path / "ours").write_tree(REPO, snap.commit, snap.tree)
    assert (
        ours.read_bytes()
        == (theirs / "models--org--model" / "trees" / f"{snap.commit}.json").read_bytes()
    )


# -- one blob, two tools: the shared lock --------------------------------------------------------


def _download_in_thread(
    hub: HubServer, cache: Path, name: str
) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []

    def run() -> None:
        try:
            result.append(
                hf.hf_hub_download(
                    REPO.repo_id, name, cache_dir=cache, endpoint=hub.url, token=False
                )
            )
        except Exception as exc:  # reported to the test thread
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def _wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


async def test_our_lock_holds_huggingface_hub_back(hub: HubServer, tmp_path: Path) -> None:
    cache = HFCache(tmp_path / "hub")
    async with HubAPI(hub.url) as api:
        snap = await api.snapshot(REPO)
    big = snap.file(BIG)
    cdn = f"/cdn/{big.etag}"
    with cache.lock(REPO, big.etag):
        thread, result = _download_in_thread(hub, cache.root, BIG)
        _wait_for(lambda: hub.request_count(cdn, method="HEAD") == 1)  # its metadata call
        time.sleep(0.3)  # had the lock not held it, it would GET the file now
        assert thread.is_alive() and hub.request_count(cdn, method="GET") == 0
        source = tmp_path / "ours"
        source.write_bytes(FILES[BIG])
        assert cache.install_blob(REPO, big.etag, source)
        inode = cache.blob_path(REPO, big.etag).stat().st_ino
        cache.link(REPO, snap.commit, BIG, big.etag)
    thread.join(10)
    assert result == [str(cache.snapshot_path(REPO, snap.commit, BIG))]
    assert hub.request_count(cdn, method="GET") == 0  # it used our blob
    assert cache.blob_path(REPO, big.etag).stat().st_ino == inode
    assert hf.scan_cache_dir(cache.root).warnings == []


async def test_huggingface_hubs_lock_holds_us_back(hub: HubServer, tmp_path: Path) -> None:
    cache = HFCache(tmp_path / "hub")
    async with HubAPI(hub.url) as api:
        snap = await api.snapshot(REPO)
    big = snap.file(BIG)
    hub.inject(faults.slow(400_000), path=BIG, on="cdn")
    thread, result = _download_in_thread(hub, cache.root, BIG)
    _wait_for(lambda: hub.bytes_sent(big.etag) > 0)  # it GETs only while holding the lock
    lock = cache.lock(REPO, big.etag)
    with pytest.raises(Timeout):
        lock.acquire(timeout=0.05)
    lock.acquire(timeout=10)
    try:
        assert not thread.is_alive() or result  # it finished its write before releasing
        blob = cache.find_blob(REPO, big.etag)
        assert blob is not None and blob.read_bytes() == FILES[BIG]
        inode = blob.stat().st_ino
        source = tmp_path / "ours"
        source.write_bytes(FILES[BIG])
        assert not cache.install_blob(REPO, big.etag, source)  # theirs is kept
        assert blob.stat().st_ino == inode and not source.exists()
    finally:
        lock.release()
    thread.join(10)
    assert hub.bytes_sent(big.etag) == len(FILES[BIG])  # written once


# -- writing blobs and links ---------------------------------------------------------------------


def _blob(cache: HFCache, tmp_path: Path, data: bytes) -> str:
    etag = hashlib.sha256(data).hexdigest()
    source = tmp_path / f"s-{uuid.uuid4().hex}"
    source.write_bytes(data)
    cache.install_blob(REPO, etag, source)
    return etag


def test_install_never_overwrites_and_replace_is_atomic(tmp_path: Path) -> None:
    cache = HFCache(tmp_path / "hub")
    etag = hashlib.sha256(b"good").hexdigest()
    blob = cache.blob_path(REPO, etag)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"another tool's bad bytes")  # not ours to delete
    source = tmp_path / "good"
    source.write_bytes(b"good")
    assert not cache.install_blob(REPO, etag, source)
    assert blob.read_bytes() == b"another tool's bad bytes" and not source.exists()
    with open(blob, "rb") as reader:  # a reader of the old blob keeps its bytes
        source.write_bytes(b"good")
        cache.replace_blob(REPO, etag, source)
        assert reader.read() == b"another tool's bad bytes"
    assert blob.read_bytes() == b"good" and not source.exists()
    kept = tmp_path / "kept"  # move=False: a hard link, the source stays
    kept.write_bytes(b"kept")
    kept_etag = hashlib.sha256(b"kept").hexdigest()
    assert cache.install_blob(REPO, kept_etag, kept, move=False)
    assert kept.exists() and cache.blob_path(REPO, kept_etag).stat().st_ino == kept.stat().st_ino
    with pytest.raises(StorageError):
        cache.blob_path(REPO, "../../etc/passwd")
    assert leftovers(cache.root) == []


def test_install_across_filesystems_copies(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem to copy from")
    cache = HFCache(tmp_path / "hub")
    source = shm / f"modelfetch-test-{uuid.uuid4().hex}"
    source.write_bytes(b"far away")
    try:
        etag = hashlib.sha256(b"far away").hexdigest()
        assert cache.install_blob(REPO, etag, source)
        assert cache.blob_path(REPO, etag).read_bytes() == b"far away" and not source.exists()
    finally:
        source.unlink(missing_ok=True)
    assert leftovers(cache.root) == []


def test_wrong_and_broken_links_are_replaced_atomically(tmp_path: Path) -> None:
    cache = HFCache(tmp_path / "hub")
    commit = "c" * 40
    a, b = _blob(cache, tmp_path, b"A" * 100), _blob(cache, tmp_path, b"B" * 100)
    dest = cache.snapshot_path(REPO, commit, "sub/file.bin")
    dest.parent.mkdir(parents=True)
    os.symlink("../../../blobs/" + "d" * 64, dest)  # broken
    cache.link(REPO, commit, "sub/file.bin", a)
    assert dest.read_bytes() == b"A" * 100 and os.readlink(dest) == f"../../../blobs/{a}"
    cache.link(REPO, commit, "sub/file.bin", b)  # wrong -> replaced
    assert dest.read_bytes() == b"B" * 100
    with pytest.raises(StorageError, match="missing"):
        cache.link(REPO, commit, "sub/file.bin", "e" * 64)
    assert dest.read_bytes() == b"B" * 100  # the good link stayed
    # a reader never sees the path missing while links are swapped under it
    misses = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            if not os.path.exists(dest):
                misses.append(1)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(300):
            cache.link(REPO, commit, "sub/file.bin", a if i % 2 else b)
    finally:
        stop.set()
        reader.join()
    assert misses == []
    assert hf.scan_cache_dir(cache.root).warnings == []
    assert leftovers(cache.root) == []


# -- the --local-dir layout ----------------------------------------------------------------------


async def test_local_dir_is_up_to_date_for_huggingface_hub(hub: HubServer, tmp_path: Path) -> None:
    local = LocalDir(tmp_path / "local")
    async with HubAPI(hub.url) as api:
        snap = await api.snapshot(REPO)
    for f in snap.files:
        source = tmp_path / f"dl-{uuid.uuid4().hex}"
        source.write_bytes(FILES[f.path])
        with local.lock(f.path):
            local.install(f.path, source, commit=snap.commit, etag=f.etag, move=True)
    local.write_tree(snap.commit, snap.tree)
    meta = local.meta_dir / "download" / "onnx" / "model.onnx.metadata"
    lines = meta.read_text().splitlines()
    assert lines[:2] == [snap.commit, snap.file("onnx/model.onnx").etag] and float(lines[2]) > 0
    assert (local.meta_dir / ".gitignore").read_text() == "*"
    assert (local.meta_dir / "CACHEDIR.TAG").read_text() == HF_TAG
    assert local.read_metadata("config.json") is not None
    hub.reset_counters()
    for name, data in FILES.items():
        got = hf.hf_hub_download(
            REPO.repo_id,
            name,
            local_dir=local.root,
            endpoint=hub.url,
            token=False,
            cache_dir=tmp_path / "unused",
        )
        assert Path(got).read_bytes() == data
    assert all(method == "HEAD" for method, _ in hub.requests)  # metadata only, no GET
    hub.reset_counters()
    hf.snapshot_download(
        REPO.repo_id, local_dir=local.root, endpoint=hub.url, token=False, cache_dir=tmp_path / "x"
    )
    assert hub.requests == [("GET", "/api/models/org/model/revision/main")]
    assert leftovers(local.root) == []
    # a file changed after its metadata is no longer up to date
    later = time.time() + 5
    os.utime(local.file_path("config.json"), (later, later))
    assert local.read_metadata("config.json") is None


# -- scan: tolerant of foreign and broken entries ---------------------------------------------


async def test_scan_reports_foreign_and_broken_entries(hub: HubServer, tmp_path: Path) -> None:
    cache = HFCache(tmp_path / "hub")
    snap = await fill(hub, cache, tmp_path)
    root = cache.root
    (root / "junk.txt").write_text("x")
    (root / "notarepo").mkdir()
    (root / "models--no--snapshots").mkdir()
    (root / "widgets--a--b" / "snapshots").mkdir(parents=True)
    broken = root / "models--org--broken"
    (broken / "snapshots" / ("a" * 40)).mkdir(parents=True)
    (broken / "snapshots" / "stray.txt").write_text("x")
    os.symlink("../../blobs/" + "f" * 64, broken / "snapshots" / ("a" * 40) / "gone.bin")
    (broken / "refs").mkdir()
    (broken / "refs" / "main").write_text("b" * 40 + "\n")
    scanned = cache.scan()
    assert len(scanned.problems) == 4
    assert any("junk.txt" in p and "not a directory" in p for p in scanned.problems)
    assert any("notarepo" in p for p in scanned.problems)
    assert any("Snapshots dir doesn't exist" in p for p in scanned.problems)
    assert any("widgets" in p for p in scanned.problems)
    good = scanned.repo("model", REPO.repo_id)
    assert good is not None and good.problems == ()
    assert good.refs == {"main": snap.commit}
    bad = scanned.repo("model", "org/broken")
    assert bad is not None
    text = " | ".join(bad.problems)
    assert "Found a file" in text and "broken symlink" in text
    assert "does not hold a commit sha" in text and "missing commit hashes" in text
    (gone,) = bad.snapshots[0].files
    assert gone.blob is None and gone.path == "gone.bin"
    assert len(hf.scan_cache_dir(root).warnings) == 5  # huggingface_hub agrees: 5 bad entries
    assert HFCache(tmp_path / "nowhere").scan().repos == ()


def test_tree_listing_with_unsafe_names_is_not_used(tmp_path: Path) -> None:
    cache = HFCache(tmp_path / "hub")
    commit = "a" * 40
    path = cache.write_tree(REPO, commit, [RepoFile("ok.txt", 1, "b" * 40)])
    assert cache.read_tree(REPO, commit) == {"ok.txt": RepoFile("ok.txt", 1, "b" * 40)}
    path.write_text(path.read_text().replace("ok.txt", "../evil"))
    assert cache.read_tree(REPO, commit) is None


def test_cache_dir_resolution(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    assert HFCache.resolve(env={"HF_HOME": str(tmp_path)}).root == tmp_path / "hub"
    assert HFCache.resolve("~/flag", env={"HOME": home, "HF_HUB_CACHE": "/x"}).root == Path(
        home, "flag"
    )
    assert HFCache.resolve(env={"HOME": home, "HF_HUB_CACHE": "$HOME/c"}).root == Path(home, "c")
    assert HFCache.resolve(env={"HOME": home}).root == Path(home, ".cache/huggingface/hub")
