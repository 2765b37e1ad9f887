"""Settings from defaults < config file < environment < command-line flags."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .catalog import BUILTIN, ModelSpec, model_from_table
from .errors import ConfigError
from .events import Layer

LAYERS: tuple[Layer, ...] = ("cache", "ipfs", "huggingface")
DEFAULT_GATEWAYS = (
    "https://ipfs.io",
    "https://dweb.link",
    "https://gateway.pinata.cloud",
    "https://trustless-gateway.link",
)
DEFAULT_HF_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class IPFSSettings:
    """How IPFS gateways are tried."""

    gateways: tuple[str, ...] = DEFAULT_GATEWAYS
    timeout: float = 30.0  # seconds without progress before a try is abandoned
    retries: int = 2  # tries per gateway
    pause: float = 1.0  # seconds between tries of one gateway
    connect_timeout: float = 10.0


@dataclass(frozen=True)
class HuggingFaceSettings:
    """How the Hugging Face hub is reached."""

    endpoint: str = DEFAULT_HF_ENDPOINT
    token: str | None = field(default=None, repr=False)  # never printed
    retries: int = 3
    timeout: float = 30.0  # seconds without progress
    connect_timeout: float = 10.0
    backoff: float = 1.0  # first wait; doubles each retry
    max_backoff: float = 60.0


@dataclass(frozen=True)
class Settings:
    """Everything a Fetcher needs, already validated."""

    models_dir: Path
    order: tuple[Layer, ...] = LAYERS
    ipfs: IPFSSettings = IPFSSettings()
    huggingface: HuggingFaceSettings = HuggingFaceSettings()
    models: Mapping[str, ModelSpec] = field(default_factory=lambda: dict(BUILTIN))
    concurrency: int = 4  # files of one model downloaded at once
    retention_hours: float = 24.0  # how long attempt records are kept
    wait_timeout: float = 3600.0  # longest wait for another request's download of a file
    config_file: Path | None = None

    @property
    def records_path(self) -> Path:
        """The SQLite file of attempt and download records."""
        return self.models_dir / ".modelfetch" / "records.sqlite3"

    def model(self, name: str) -> ModelSpec:
        from .errors import UnknownModel

        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise UnknownModel(f"unknown model {name!r}; known models: {known}") from None

    def preferring(self, layer: str | None) -> Settings:
        """These settings with `layer` moved to the front of the order (`--prefer`)."""
        if layer is None:
            return self
        checked = _layer(layer, "--prefer")
        return replace(self, order=(checked, *(x for x in self.order if x != checked)))


def default_models_dir() -> Path:
    import platformdirs  # here, not above: only a default path needs it, and `--help` none

    return Path(platformdirs.user_cache_dir()) / "modelfetch"


def default_config_file() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("modelfetch")) / "config.toml"


def load_settings(
    *,
    config_file: str | os.PathLike[str] | None = None,
    models_dir: str | os.PathLike[str] | None = None,
    prefer: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Build Settings: flag arguments > environment > config file > defaults."""
    env = os.environ if env is None else env
    path = _config_path(config_file, env)
    table = _read_toml(path) if path else {}
    settings = _from_table(table, path)
    settings = _apply_env(settings, env)
    if models_dir is not None:
        settings = replace(settings, models_dir=Path(models_dir).expanduser())
    return settings.preferring(prefer)


def _config_path(flag: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    if flag is not None:
        return _must_exist(Path(flag).expanduser(), "--config")
    if env.get("MODELFETCH_CONFIG"):
        return _must_exist(Path(env["MODELFETCH_CONFIG"]).expanduser(), "MODELFETCH_CONFIG")
    default = default_config_file()
    return default if default.is_file() else None


def _must_exist(path: Path, origin: str) -> Path:
    if not path.is_file():
        raise ConfigError(f"config file {path} (from {origin}) does not exist or is not a file")
    return path


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None


_TOP_KEYS = {
    "models_dir",
    "order",
    "ipfs",
    "huggingface",
    "models",
    "concurrency",
    "retention_hours",
}


def _from_table(table: Mapping[str, Any], path: Path | None) -> Settings:
    where = f"config file {path}" if path else "config"
    unknown = set(table) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(_TOP_KEYS)}")
    models_dir = (
        Path(str(table["models_dir"])).expanduser()
        if "models_dir" in table
        else (default_models_dir())
    )
    order = _order(table.get("order", LAYERS), where)
    ipfs = _section(IPFSSettings(), table.get("ipfs", {}), "ipfs", where)
    hf = _section(HuggingFaceSettings(), table.get("huggingface", {}), "huggingface", where)
    models = dict(BUILTIN)
    raw_models = table.get("models", {})
    if not isinstance(raw_models, Mapping):
        raise ConfigError(f"{where}: [models] must be a table of [models.NAME] tables")
    for name, spec in raw_models.items():
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: [models.{name}] must be a table")
        try:
            models[name] = model_from_table(name, spec)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    concurrency = table.get("concurrency", 4)
    if not isinstance(concurrency, int) or not 1 <= concurrency <= 64:
        raise ConfigError(f"{where}: concurrency must be an integer from 1 to 64")
    retention = table.get("retention_hours", 24.0)
    if isinstance(retention, bool) or not isinstance(retention, int | float) or retention <= 0:
        raise ConfigError(f"{where}: retention_hours must be a positive number of hours")
    return Settings(
        retention_hours=float(retention),
        models_dir=models_dir,
        order=order,
        ipfs=ipfs,
        huggingface=hf,
        models=models,
        concurrency=concurrency,
        config_file=path,
    )


def _layer(value: object, where: str) -> Layer:
    if value not in LAYERS:
        raise ConfigError(f"{where}: unknown layer {value!r}; layers: {', '.join(LAYERS)}")
    return value


def _order(value: object, where: str) -> tuple[Layer, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise ConfigError(f"{where}: order must be a list such as {list(LAYERS)}")
    layers = tuple(_layer(v, f"{where}: order") for v in value)
    if len(set(layers)) != len(layers):
        raise ConfigError(f"{where}: order lists a layer twice")
    return layers


def _section(default: Any, value: object, name: str, where: str) -> Any:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: [{name}] must be a table")
    allowed = {k for k in default.__dataclass_fields__ if k != "token"}
    unknown = set(value) - allowed
    if unknown:
        raise ConfigError(
            f"{where}: [{name}] unknown key(s) {sorted(unknown)}; known: {sorted(allowed)}"
        )
    changes: dict[str, Any] = {}
    for key, raw in value.items():
        current = getattr(default, key)
        if key == "gateways":
            changes[key] = _gateways(raw, f"{where}: [ipfs] gateways")
        elif key == "endpoint":
            changes[key] = _base_url(raw, f"{where}: [huggingface] endpoint")
        elif (
            isinstance(current, int | float)
            and not isinstance(raw, bool)
            and isinstance(raw, int | float)
        ):
            if raw < 0 or (key in ("retries",) and raw < 1):
                raise ConfigError(f"{where}: [{name}] {key} = {raw} is out of range")
            changes[key] = type(current)(raw)
        else:
            raise ConfigError(f"{where}: [{name}] {key} must be a number, not {raw!r}")
    return replace(default, **changes)


def _base_url(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a URL string, got {value!r}")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{where}: {value!r} is not an http(s) base URL")
    return value.strip().rstrip("/")


def _gateways(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, Sequence) or not value:
        raise ConfigError(f"{where}: expected a non-empty list of gateway base URLs")
    return tuple(_base_url(v, where) for v in value)


def _apply_env(settings: Settings, env: Mapping[str, str]) -> Settings:
    if env.get("MODELFETCH_HOME"):
        settings = replace(settings, models_dir=Path(env["MODELFETCH_HOME"]).expanduser())
    hf = settings.huggingface
    if env.get("HF_ENDPOINT"):
        hf = replace(hf, endpoint=_base_url(env["HF_ENDPOINT"], "HF_ENDPOINT"))
    if env.get("HF_TOKEN"):
        hf = replace(hf, token=env["HF_TOKEN"].strip())
    ipfs = settings.ipfs
    if env.get("MODELFETCH_IPFS_GATEWAYS"):
        ipfs = replace(
            ipfs, gateways=_gateways(env["MODELFETCH_IPFS_GATEWAYS"], "MODELFETCH_IPFS_GATEWAYS")
        )
    return replace(settings, huggingface=hf, ipfs=ipfs)
