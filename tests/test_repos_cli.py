"""`modelfetch pull ORG/NAME` and `status` as a user runs them: a subprocess, the loopback hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

hf = pytest.importorskip("huggingface_hub")

from modelfetch.testing import HubServer  # noqa: E402

REPO = "org/model"
FILES = {
    "config.json": b'{"model_type": "bert"}\n',
    "vocab.txt": b"[PAD]\n[UNK]\nhello\n",
    "weights/model.bin": bytes(range(256)) * 30,  # LFS at this hub's threshold
}


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with HubServer(lfs_threshold=4000) as server:
        for path, data in FILES.items():
            server.add_file(REPO, path, data)
        server.add_file("org/rows", "train.csv", b"a,b\n", repo_type="dataset")
        yield server


@pytest.fixture
def env(hub: HubServer, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "config.toml"
    config.write_text(
        "[huggingface]\nretries = 2\ntimeout = 5\nbackoff = 0.05\n[ipfs]\ngateways = []\n"
    )
    return {
        "MODELFETCH_HOME": str(tmp_path / "models"),
        "MODELFETCH_CONFIG": str(config),
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1,localhost",
    }


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFETCH", "HF_"))}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "modelfetch", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def cache_root(env: dict[str, str]) -> Path:
    return Path(env["HF_HOME"]) / "hub"


def test_pull_prints_the_snapshot_last_and_hf_uses_it(hub: HubServer, env: dict[str, str]) -> None:
    proc = run(["pull", REPO], env)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    commit = hub.commit(REPO)
    assert last == str(cache_root(env) / "models--org--model" / "snapshots" / commit)
    got = hf.snapshot_download(REPO, cache_dir=cache_root(env), local_files_only=True)
    assert got == last
    # again: one request, and --json adds snapshot and commit
    hub.reset_counters()
    proc = run(["pull", REPO, "--json"], env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    [model] = doc["models"]
    assert doc["ok"] and (model["snapshot"], model["commit"]) == (last, commit)
    assert {f["source"] for f in model["files"]} == {"cache"}
    assert hub.request_count() == 1


def test_pull_options(hub: HubServer, env: dict[str, str], tmp_path: Path) -> None:
    cache = tmp_path / "elsewhere"
    args = ["pull", REPO, "--include", "*.json", "--include", "weights/*"]
    proc = run([*args, "--exclude", "*.bin", "--cache-dir", str(cache)], env)
    assert proc.returncode == 0, proc.stderr
    snapshot = Path(proc.stdout.strip().splitlines()[-1])
    assert snapshot.is_relative_to(cache)
    assert sorted(p.name for p in snapshot.rglob("*") if p.is_file()) == ["config.json"]
    out = tmp_path / "out"
    proc = run(["pull", "org/rows", "--repo-type", "dataset", "--local-dir", str(out)], env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    assert (out / "train.csv").read_bytes() == b"a,b\n"
    commit = hub.commit(REPO)
    proc = run(["pull", REPO, "--revision", commit, "--cache-dir", str(cache), "--json"], env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["models"][0]["commit"] == commit


def test_bad_names_exit_2_without_a_request(hub: HubServer, env: dict[str, str]) -> None:
    for bad in ["org/na me", "not-a-model", "a/b/c"]:
        proc = run(["pull", bad], env)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and "error:" in proc.stderr
    proc = run(["pull", REPO, "--include", "*.nothing"], env)
    assert proc.returncode == 2 and "no file matches" in proc.stderr
    assert hub.requests_in("resolve") == []


def test_offline_missing_file_exits_1_naming_it(hub: HubServer, env: dict[str, str]) -> None:
    assert run(["pull", REPO, "--include", "config.json"], env).returncode == 0
    hub.reset_counters()
    proc = run(["pull", REPO, "--offline"], env)
    assert proc.returncode == 1
    assert "weights/model.bin" in proc.stderr and "offline" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run(["pull", REPO, "--include", "config.json"], {**env, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert hub.request_count() == 0


def test_gated_without_token_exits_1_saying_how(
    hub: HubServer, env: dict[str, str], tmp_path: Path
) -> None:
    hub.set_gated(REPO, "secret")
    proc = run(["pull", REPO], env)
    assert proc.returncode == 1
    assert "gated" in proc.stderr and "HF_TOKEN" in proc.stderr and "hf auth login" in proc.stderr
    assert "Traceback" not in proc.stderr
    token_file = tmp_path / "hf-home" / "token"
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text("secret\n")  # as `hf auth login` leaves it
    proc = run(["pull", REPO], env)
    assert proc.returncode == 0, proc.stderr
    assert "secret" not in proc.stdout + proc.stderr


def test_status_lists_the_hf_cache(hub: HubServer, env: dict[str, str], tmp_path: Path) -> None:
    assert run(["pull", REPO], env).returncode == 0
    # a repo huggingface_hub wrote, that modelfetch never verified
    hf.snapshot_download(
        "org/rows", repo_type="dataset", cache_dir=cache_root(env), endpoint=hub.url
    )
    proc = run(["status", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    repos = {r["repo_id"]: r for r in doc["hf_cache"]["repos"]}
    assert doc["hf_cache"]["cache_dir"] == str(cache_root(env))
    ours, theirs = repos[REPO], repos["org/rows"]
    assert (ours["commit"], ours["files"], ours["verified"]) == (hub.commit(REPO), 3, 3)
    assert ours["state"] == "verified"
    assert ours["size_on_disk"] == sum(len(d) for d in FILES.values())
    assert (theirs["repo_type"], theirs["verified"], theirs["state"]) == (
        "dataset",
        0,
        "unverified",
    )
    text = run(["status"], env).stdout
    assert "Hugging Face cache" in text and REPO in text and "3/3 verified" in text
    empty = run(["status", "--json", "--cache-dir", str(tmp_path / "none")], env)
    assert json.loads(empty.stdout)["hf_cache"]["repos"] == []


def test_a_warm_repo_pull_imports_no_network_stack(
    hub: HubServer, env: dict[str, str], tmp_path: Path
) -> None:
    from test_cli_startup import HEAVY, imports, loaded

    assert run(["pull", REPO], env).returncode == 0
    full = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFETCH", "HF_"))}
    full.update(env)
    for args in (["pull", REPO], ["pull", REPO, "--offline"], ["status"]):
        code, modules = imports(tmp_path, full, *args)
        assert code == 0
        assert loaded(modules, HEAVY) == [], args
