"""Settings precedence: flag > env > config file > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfetch.config import DEFAULT_GATEWAYS, load_settings
from modelfetch.errors import ConfigError, UnknownModel


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults(tmp_path: Path) -> None:
    s = load_settings(env={"MODELFETCH_CONFIG": str(write(tmp_path, ""))})
    assert s.order == ("cache", "ipfs", "huggingface")
    assert s.ipfs.gateways == DEFAULT_GATEWAYS
    assert "cloudflare-ipfs.com" not in " ".join(s.ipfs.gateways)
    assert s.huggingface.endpoint == "https://huggingface.co"
    assert s.models_dir.name == "modelfetch"


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        f'models_dir = "{tmp_path / "from-file"}"\n'
        '[huggingface]\nendpoint = "http://file.example"\n'
        '[ipfs]\ngateways = ["http://gw-file"]\ntimeout = 7\n',
    )
    s = load_settings(config_file=cfg, env={})
    assert s.models_dir == tmp_path / "from-file"
    assert s.huggingface.endpoint == "http://file.example"
    assert s.ipfs.timeout == 7.0
    env = {
        "MODELFETCH_HOME": str(tmp_path / "from-env"),
        "HF_ENDPOINT": "http://env.example/",
        "MODELFETCH_IPFS_GATEWAYS": "http://a, http://b",
        "HF_TOKEN": "hf_SeCrEt123",
    }
    s = load_settings(config_file=cfg, env=env)
    assert s.models_dir == tmp_path / "from-env"
    assert s.huggingface.endpoint == "http://env.example"
    assert s.ipfs.gateways == ("http://a", "http://b")
    assert s.huggingface.token == "hf_SeCrEt123"
    assert "hf_SeCrEt123" not in repr(s)
    s = load_settings(config_file=cfg, env=env, models_dir=tmp_path / "flag")
    assert s.models_dir == tmp_path / "flag"


def test_config_from_env_var_and_prefer(tmp_path: Path) -> None:
    cfg = write(tmp_path, 'order = ["cache", "huggingface", "ipfs"]\n')
    s = load_settings(env={"MODELFETCH_CONFIG": str(cfg)}, prefer="ipfs")
    assert s.order == ("ipfs", "cache", "huggingface")


def test_user_models_added(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        '[models.my-model]\ndir = "my-org/my-model"\n'
        'huggingface = { repo = "my-org/my-model", revision = "v2" }\n'
        'ipfs = { cid = "bafyxyz" }\nfiles = ["config.json", "onnx/m.onnx"]\n',
    )
    s = load_settings(config_file=cfg, env={})
    m = s.model("my-model")
    assert m.files == ("config.json", "onnx/m.onnx")
    assert m.huggingface is not None and m.huggingface.revision == "v2"
    assert "whisper-base" in s.models
    with pytest.raises(UnknownModel, match="known models"):
        s.model("nope")


@pytest.mark.parametrize(
    "text, match",
    [
        ('order = ["cache", "ftp"]', "unknown layer"),
        ("[ipfs]\nretries = 0", "out of range"),
        ('[ipfs]\ngateways = ["ftp://x"]', "http"),
        ("bogus = 1", "unknown key"),
        ("not toml [", "not valid TOML"),
        ('[models.x]\nfiles = ["../up"]', "'..'"),
        ('[huggingface]\ntoken = "x"', "unknown key"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_settings(config_file=write(tmp_path, text), env={})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(config_file=tmp_path / "nope.toml", env={})


# -- the Hugging Face environment, as huggingface_hub reads it ----------------------------------

_HF_PROBE = """
import importlib, json, os, sys
cases = json.loads(sys.argv[1])
from huggingface_hub import constants
from huggingface_hub.utils import _auth
out = []
for env in cases:
    for k in [k for k in os.environ if k.startswith(("HF_", "HUGGING", "TRANSFORMERS", "XDG_"))]:
        del os.environ[k]
    os.environ.update(env)
    importlib.reload(constants)
    token = _auth._get_token_from_environment() or _auth._get_token_from_file()
    out.append([constants.HF_HUB_CACHE, constants.HF_TOKEN_PATH, constants.HF_HUB_OFFLINE, token])
print(json.dumps(out))
"""


def test_hf_environment_matches_huggingface_hub(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    from modelfetch.config import hf_cache_dir, hf_offline, hf_token, hf_token_path

    home = tmp_path / "home"
    (home / ".cache" / "huggingface").mkdir(parents=True)
    (home / ".cache" / "huggingface" / "token").write_text("hf_default\n")
    (tmp_path / "hfh").mkdir()
    (tmp_path / "hfh" / "token").write_text("  hf_from_home \r\n")
    (tmp_path / "tok").write_text("hf_from_path")
    (tmp_path / "empty").write_text("\n")
    base = {"HOME": str(home)}
    cases = [
        base,
        {**base, "XDG_CACHE_HOME": str(tmp_path / "xdg")},
        {**base, "HF_HOME": str(tmp_path / "hfh"), "HF_HUB_OFFLINE": "yes"},
        {
            **base,
            "HF_HOME": "~/elsewhere",
            "HF_HUB_CACHE": "$HOME/c",
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "1",
        },
        {**base, "HUGGINGFACE_HUB_CACHE": str(tmp_path / "legacy"), "TRANSFORMERS_OFFLINE": "ON"},
        {**base, "HF_TOKEN_PATH": str(tmp_path / "tok"), "HF_HUB_OFFLINE": "false"},
        {**base, "HF_TOKEN_PATH": str(tmp_path / "empty")},
        {**base, "HF_TOKEN": " hf_env\n", "HF_TOKEN_PATH": str(tmp_path / "tok")},
        {**base, "HF_TOKEN": "", "HUGGING_FACE_HUB_TOKEN": "hf_legacy"},
        {**base, "HF_TOKEN_PATH": str(tmp_path / "missing")},
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    probe = subprocess.run(
        [sys.executable, "-c", _HF_PROBE, json.dumps(cases)],
        env={**env, "HOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    theirs = json.loads(probe.stdout)
    ours = [
        [str(hf_cache_dir(c)), str(hf_token_path(c)), hf_offline(c), hf_token(c)] for c in cases
    ]
    assert ours == theirs
    assert {t[3] for t in theirs} >= {"hf_default", "hf_from_home", "hf_from_path", None}


def test_hf_settings_precedence_and_repr(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("hf_SeCrEtFromFile\n")
    env = {"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    s = load_settings(env=env)
    hf = s.huggingface
    assert hf.token == "hf_SeCrEtFromFile"
    assert hf.offline is True
    assert hf.cache_dir == tmp_path / "hub"
    assert hf.token_path == tmp_path / "token"
    assert "hf_SeCrEtFromFile" not in repr(s) and "hf_SeCrEtFromFile" not in repr(hf)
    flagged = load_settings(env=env, cache_dir=tmp_path / "flag-cache", offline=True)
    assert flagged.huggingface.cache_dir == tmp_path / "flag-cache"
    online = load_settings(env={"HF_HOME": str(tmp_path / "none")}, offline=None)
    assert online.huggingface.offline is False and online.huggingface.token is None


def test_unreadable_token_file_is_no_token(tmp_path: Path) -> None:
    (tmp_path / "token").mkdir()  # a directory: reading it fails
    s = load_settings(env={"HF_HOME": str(tmp_path)})
    assert s.huggingface.token is None


def test_mirrors_parsed_and_validated(tmp_path: Path) -> None:
    cfg = write(
        tmp_path, '[huggingface]\nmirrors = ["http://10.0.0.2:8765/", "https://m.example"]\n'
    )
    s = load_settings(config_file=cfg, env={})
    assert s.huggingface.mirrors == ("http://10.0.0.2:8765", "https://m.example")
    assert load_settings(env={}).huggingface.mirrors == ()
    for text, match in [
        ('mirrors = ["ftp://x"]', "http"),
        ('mirrors = "http://x"', "list"),
        ('mirrors = ["http://x", "http://x/"]', "twice"),
        ("offline = true", "unknown key"),
        ('cache_dir = "/tmp/x"', "unknown key"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_settings(config_file=write(tmp_path, f"[huggingface]\n{text}\n"), env={})


def test_an_empty_gateway_list_means_no_gateway(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[ipfs]\ngateways = []\n")
    settings = load_settings(config_file=config, env={})
    assert settings.ipfs.gateways == ()


def test_ipfs_rpc_nodes_from_file_and_env(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[ipfs]\nrpc = ["http://127.0.0.1:5001/"]\ngateways = []\n')
    s = load_settings(config_file=cfg, env={})
    assert s.ipfs.rpc == ("http://127.0.0.1:5001",) and s.ipfs.gateways == ()
    s = load_settings(config_file=cfg, env={"MODELFETCH_IPFS_RPC": "http://10.0.0.2:5001"})
    assert s.ipfs.rpc == ("http://10.0.0.2:5001",)
    with pytest.raises(ConfigError, match=r"\[ipfs\] rpc"):
        load_settings(config_file=write(tmp_path, '[ipfs]\nrpc = ["ftp://x"]\n'), env={})
