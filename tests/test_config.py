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
