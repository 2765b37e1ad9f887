"""The `modelfetch` command as a user runs it: a subprocess, real origins, exit codes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CID, REPO, model_files
from modelfetch.testing import GatewayServer, HubServer, faults

ONNX = "onnx/model.onnx"


def run(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFETCH", "HF_"))}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "modelfetch", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def served(tmp_path: Path, hub: HubServer, gw1: GatewayServer) -> dict[str, str]:
    files = model_files()
    for path, data in files.items():
        hub.add_file(REPO, path, data)
    gw1.add_directory(CID, files)
    config = tmp_path / "config.toml"
    config.write_text(
        "[ipfs]\ntimeout = 2\nretries = 1\npause = 0.05\n"
        "[huggingface]\nretries = 2\ntimeout = 2\nbackoff = 0.05\n"
        f'[models.my-model]\ndir = "org/my-model"\nfiles = {json.dumps(list(files))}\n'
        f'huggingface = {{ repo = "{REPO}" }}\nipfs = {{ cid = "{CID}" }}\n'
    )
    return {
        "MODELFETCH_HOME": str(tmp_path / "models"),
        "MODELFETCH_CONFIG": str(config),
        "HF_ENDPOINT": hub.url,
        "MODELFETCH_IPFS_GATEWAYS": gw1.url,
    }


def test_pull_json_document(served: dict[str, str], gw1: GatewayServer, tmp_path: Path) -> None:
    proc = run(["pull", "my-model", "--json"], served)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True and doc["errors"] == []
    (model,) = doc["models"]
    assert model["name"] == "my-model"
    assert model["dir"] == str(tmp_path / "models" / "org" / "my-model")
    files = {f["path"]: f for f in model["files"]}
    data = model_files()
    assert set(files) == set(data)
    onnx = files[ONNX]
    assert onnx == {
        "path": ONNX,
        "size": len(data[ONNX]),
        "sha256": hashlib.sha256(data[ONNX]).hexdigest(),
        "source": "ipfs",
        "gateway": gw1.url,
        "bytes_downloaded": len(data[ONNX]),
    }
    assert "Traceback" not in proc.stderr
    # second run: cache, no network
    proc = run(["pull", "my-model", "--json"], served)
    doc = json.loads(proc.stdout)
    assert {f["source"] for f in doc["models"][0]["files"]} == {"cache"}
    assert {f["gateway"] for f in doc["models"][0]["files"]} == {None}
    assert {f["bytes_downloaded"] for f in doc["models"][0]["files"]} == {0}


def test_prefer_flag_and_dir_after_command(
    served: dict[str, str], hub: HubServer, tmp_path: Path
) -> None:
    proc = run(
        [
            "pull",
            "my-model",
            "--prefer",
            "huggingface",
            "--json",
            "--dir",
            str(tmp_path / "elsewhere"),
        ],
        served,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {f["source"] for f in doc["models"][0]["files"]} == {"huggingface"}
    assert {f["gateway"] for f in doc["models"][0]["files"]} == {hub.url}
    assert (tmp_path / "elsewhere" / "org" / "my-model" / ONNX).is_file()


def test_every_source_failing_exits_1_with_one_line_per_attempt(
    served: dict[str, str], hub: HubServer, gw1: GatewayServer, tmp_path: Path
) -> None:
    gw1.inject(faults.status(502), path=ONNX)
    hub.inject(faults.reset(after_bytes=10), path=ONNX, on="cdn")
    proc = run(["pull", "my-model"], served)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "onnx/model.onnx: all download layers exhausted" in proc.stderr
    lines = [ln.strip() for ln in proc.stderr.splitlines()]
    assert any(ln.startswith(f"ipfs {gw1.url}: HTTPStatus:") and "502" in ln for ln in lines)
    hub_lines = [ln for ln in lines if ln.startswith(f"huggingface {hub.url}: ConnectFailed:")]
    assert len(hub_lines) == 2  # retries = 2 in the config
    assert not (tmp_path / "models" / "org" / "my-model" / ONNX).exists()
    # the other files are in place and verified
    assert (tmp_path / "models" / "org" / "my-model" / "config.json").is_file()


def test_json_errors_on_failure(served: dict[str, str], gw1: GatewayServer, hub: HubServer) -> None:
    gw1.inject(faults.wrong_bytes(), path=ONNX)
    hub.inject(faults.wrong_bytes(), path=ONNX, on="cdn")
    proc = run(["pull", "my-model", "--json"], served)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False
    (error,) = doc["errors"]
    assert error["model"] == "my-model" and error["file"] == ONNX
    assert [(a["layer"], a["gateway"], a["error_type"]) for a in error["attempts"]] == [
        ("ipfs", gw1.url, "HashMismatch"),
        ("huggingface", hub.url, "HashMismatch"),
    ]


@pytest.mark.parametrize("bad", ["../escape.bin", "/etc/passwd", "a\\\\b"])
def test_unsafe_file_name_exits_2_before_any_network(
    tmp_path: Path, hub: HubServer, bad: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[models.evil]\nfiles = ["{bad}"]\nhuggingface = {{ repo = "a/b" }}\n')
    proc = run(
        ["pull", "evil"],
        {
            "MODELFETCH_CONFIG": str(config),
            "HF_ENDPOINT": hub.url,
            "MODELFETCH_HOME": str(tmp_path / "m"),
        },
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "error:" in proc.stderr
    assert hub.request_count() == 0


def test_unknown_model_and_bad_flags_exit_2(tmp_path: Path) -> None:
    env = {"MODELFETCH_HOME": str(tmp_path)}
    proc = run(["pull", "no-such-model"], env)
    assert proc.returncode == 2 and "unknown model 'no-such-model'" in proc.stderr
    assert "whisper-base" in proc.stderr
    proc = run(["pull", "whisper-base", "--prefer", "ftp"], env)
    assert proc.returncode == 2
    proc = run(["pull", "x", "--config", str(tmp_path / "missing.toml")], env)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_status_lists_every_catalog_model(served: dict[str, str]) -> None:
    proc = run(["status", "--json"], served)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    states = {m["name"]: m["state"] for m in doc["models"]}
    assert states == {"whisper-base": "missing", "tts-models": "missing", "my-model": "missing"}
    run(["pull", "my-model"], served)
    doc = json.loads(run(["status", "--json"], served).stdout)
    states = {m["name"]: m["state"] for m in doc["models"]}
    assert states["my-model"] == "complete"
    text = run(["status"], served).stdout
    assert "my-model" in text and "whisper-base" in text


def test_verify_and_deep_verify(served: dict[str, str], tmp_path: Path) -> None:
    assert run(["pull", "my-model"], served).returncode == 0
    proc = run(["verify", "my-model", "--json"], served)
    assert proc.returncode == 0, proc.stdout
    target = tmp_path / "models" / "org" / "my-model" / "tokenizer.json"
    stat = target.stat()
    data = bytearray(target.read_bytes())
    data[5] ^= 1
    target.write_bytes(bytes(data))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime
    # The stamp also records the inode, but a rewrite in place keeps it: only --deep sees it.
    proc = run(["verify", "my-model", "--deep", "--json"], served)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    files = {f["path"]: f["state"] for f in doc["models"][0]["files"]}
    assert files["tokenizer.json"] == "corrupt" and files["config.json"] == "verified"
    assert target.exists(), "verify reports; it does not move files"


def test_manifest_generate(tmp_path: Path) -> None:
    d = tmp_path / "src"
    d.mkdir()
    (d / "a.bin").write_bytes(b"abc")
    manifest = tmp_path / "out.json"
    proc = run(
        ["manifest", "generate", str(d), "--name", "mine", "--manifest", str(manifest)],
        {"MODELFETCH_HOME": str(tmp_path / "m")},
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(manifest.read_text())
    assert data["mine"]["files"]["a.bin"] == {
        "size": 3,
        "sha256": hashlib.sha256(b"abc").hexdigest(),
    }
    proc = run(
        ["manifest", "generate", str(tmp_path / "nope"), "--name", "x"],
        {"MODELFETCH_HOME": str(tmp_path / "m")},
    )
    assert proc.returncode == 2


def test_demo_twice(tmp_path: Path) -> None:
    env = {"MODELFETCH_HOME": str(tmp_path / "models")}
    first = run(["demo"], env)
    assert first.returncode == 0, first.stderr + first.stdout
    assert "ConnectFailed" in first.stdout and "connection refused" in first.stdout
    assert "HashMismatch" in first.stdout
    assert first.stdout.count("from huggingface") == 3
    second = run(["demo"], env)
    assert second.returncode == 0
    assert second.stdout.count("cache: hit") == 3
    assert second.stdout.count("from cache") == 3


def test_python_module_and_version() -> None:
    proc = run(["--version"], {})
    assert proc.returncode == 0 and "modelfetch" in proc.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--dir", "{d}", "metrics", "summary", "--json"],
        ["metrics", "--dir", "{d}", "summary", "--json"],
        ["metrics", "summary", "--json", "--dir", "{d}"],
    ],
)
def test_dir_is_accepted_wherever_it_stands(tmp_path: Path, args: list[str]) -> None:
    proc = run([a.format(d=tmp_path / "m") for a in args], {})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["total"] == 0
    assert (tmp_path / "m" / ".modelfetch" / "records.sqlite3").is_file()


def test_files_failing_the_same_way_are_reported_once(
    served: dict[str, str], tmp_path: Path
) -> None:
    # The hub's host does not resolve and the model has no CID: every file fails the same
    # way. The host is asked once, then skipped as down for the other files; the report
    # names every layer (ipfs skipped, with why) and groups the files.
    config = tmp_path / "nocid.toml"
    files = list(model_files())
    config.write_text(
        "[huggingface]\nretries = 3\ntimeout = 2\nbackoff = 0.05\n"
        f'[models.plain]\ndir = "org/plain"\nfiles = {json.dumps(files)}\n'
        f'huggingface = {{ repo = "{REPO}" }}\n'
    )
    env = {
        **served,
        "MODELFETCH_CONFIG": str(config),
        "HF_ENDPOINT": "http://no-such-host.invalid",
    }
    proc = run(["pull", "plain"], env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{len(files)} files (" in proc.stderr
    assert proc.stderr.count("all download layers exhausted") == 1
    assert "cannot resolve host no-such-host.invalid" in proc.stderr
    assert "ipfs: skipped: the model has no IPFS CID" in proc.stderr
    proc = run(["pull", "plain", "--json"], env)
    (error,) = json.loads(proc.stdout)["errors"]
    assert sorted(error["files"]) == sorted(files) and error["file"] in files
    layers = [(a["layer"], a["error_type"]) for a in error["attempts"]]
    assert ("huggingface", "ConnectFailed") in layers and ("ipfs", "Skipped") in layers
