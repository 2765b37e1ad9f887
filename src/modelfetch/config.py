"""Settings from defaults < config file < environment < command-line flags."""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .catalog import BUILTIN, ModelSpec, model_from_table
from .errors import ConfigError
from .events import Layer

log = logging.getLogger(__name__)

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
    #: RPC base URLs of IPFS nodes used as trustless block sources (`block/get`), tried
    #: before the gateways: a machine's own node (`http://127.0.0.1:5001`) in a fleet.
    rpc: tuple[str, ...] = ()
    timeout: float = 30.0  # seconds without progress before a try is abandoned
    retries: int = 2  # tries per gateway
    pause: float = 1.0  # seconds between tries of one gateway
    connect_timeout: float = 10.0


# -- the Hugging Face environment, read exactly as huggingface_hub 2.4 reads it -------------
# (huggingface_hub/constants.py and utils/_auth.py; names and precedence are theirs)

_TRUE_VALUES = frozenset({"1", "ON", "YES", "TRUE"})  # constants.ENV_VARS_TRUE_VALUES


def hf_home(env: Mapping[str, str]) -> Path:
    """`HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`."""
    default = os.path.join(env.get("XDG_CACHE_HOME") or _home(env, ".cache"), "huggingface")
    return Path(_expand(env.get("HF_HOME") or default, env))


def hf_cache_dir(env: Mapping[str, str], flag: str | os.PathLike[str] | None = None) -> Path:
    """The hub cache: `--cache-dir`, else `HF_HUB_CACHE` (or the legacy
    `HUGGINGFACE_HUB_CACHE`), else `$HF_HOME/hub`."""
    if flag is not None and str(flag):
        return Path(_expand(os.fspath(flag), env))
    value = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    return Path(_expand(value, env)) if value else hf_home(env) / "hub"


def hf_token_path(env: Mapping[str, str]) -> Path:
    """Where `hf auth login` writes the token: `HF_TOKEN_PATH`, else `$HF_HOME/token`."""
    value = env.get("HF_TOKEN_PATH")
    return Path(_expand(value, env)) if value else hf_home(env) / "token"


def hf_token(env: Mapping[str, str]) -> str | None:
    """The token huggingface_hub would send: `HF_TOKEN` (or the legacy
    `HUGGING_FACE_HUB_TOKEN`), else the token file; CR/LF removed, stripped, empty = none."""
    from_env = _clean_token(env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN"))
    if from_env is not None:
        return from_env
    path = hf_token_path(env)
    try:
        return _clean_token(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        # Not fatal: most commands need no token; a gated pull then says how to give one.
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        log.warning("ignoring the Hugging Face token file %s: %s", path, reason)
        return None


def hf_offline(env: Mapping[str, str]) -> bool:
    """`HF_HUB_OFFLINE` (else `TRANSFORMERS_OFFLINE`) is one of 1/ON/YES/TRUE, any case."""
    value = env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE")
    return value is not None and value.upper() in _TRUE_VALUES


def _clean_token(token: str | None) -> str | None:
    if token is None:
        return None
    return token.replace("\r", "").replace("\n", "").strip() or None


def _home(env: Mapping[str, str], *parts: str) -> str:
    home = env.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, *parts)


_VAR = re.compile(r"\$(\w+|\{[^}]*\})", re.ASCII)


def _expand(value: str, env: Mapping[str, str]) -> str:
    """`os.path.expandvars(os.path.expanduser(value))`, reading variables from `env`."""
    if value == "~" or value.startswith("~/"):
        value = _home(env) + value[1:]
    else:
        value = os.path.expanduser(value)  # ~user

    def var(match: re.Match[str]) -> str:
        name = match.group(1).strip("{}")
        return env.get(name, match.group(0))

    return _VAR.sub(var, value)


@dataclass(frozen=True)
class HuggingFaceSettings:
    """How the Hugging Face hub is reached, and where its cache is.

    Built directly (tests), the cache dir and token path come from the process environment;
    `load_settings` fills them from the environment it is given.
    """

    endpoint: str = DEFAULT_HF_ENDPOINT
    token: str | None = field(default=None, repr=False)  # never printed
    retries: int = 3  # tries in all, per request
    timeout: float = 30.0  # seconds without progress
    connect_timeout: float = 10.0
    backoff: float = 1.0  # first wait; doubles each retry
    max_backoff: float = 60.0
    mirrors: tuple[str, ...] = ()  # HF-compatible mirrors, asked before `endpoint`
    offline: bool = False  # HF_HUB_OFFLINE / --offline: no request at all
    cache_dir: Path = field(default_factory=lambda: hf_cache_dir(os.environ))
    token_path: Path = field(default_factory=lambda: hf_token_path(os.environ))


@dataclass(frozen=True)
class TransferSettings:
    """The `[transfer]` table: connections per large file, piece sizes, hedging."""

    connections: int = 8  # connections per large file, spread over every origin that has it
    min_segment: int = 8 << 20  # bytes (the file says MiB); a file under 2 x this: one connection
    hedge_delay: float = 2.0  # s without a first byte before the next-best origin is raced
    min_steal: int = 1 << 20  # never split a piece into parts smaller than this
    flush_bytes: int = 1 << 20  # a connection hands its bytes to the disk at least this often
    flush_every: float = 1.0  # ... and at least this often (s)


@dataclass(frozen=True)
class Settings:
    """Everything a Fetcher needs, already validated."""

    models_dir: Path
    order: tuple[Layer, ...] = LAYERS
    ipfs: IPFSSettings = IPFSSettings()
    huggingface: HuggingFaceSettings = field(default_factory=HuggingFaceSettings)
    transfer: TransferSettings = TransferSettings()
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
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
) -> Settings:
    """Build Settings: flag arguments > environment > config file > defaults.

    `cache_dir` is `--cache-dir` (the Hugging Face cache), `offline` is `--offline`.
    """
    env = os.environ if env is None else env
    path = _config_path(config_file, env)
    table = _read_toml(path) if path else {}
    settings = _from_table(table, path)
    settings = _apply_env(settings, env)
    if models_dir is not None:
        settings = replace(settings, models_dir=Path(models_dir).expanduser())
    hf = settings.huggingface
    if cache_dir is not None:
        hf = replace(hf, cache_dir=hf_cache_dir(env, cache_dir))
    if offline:
        hf = replace(hf, offline=True)
    return replace(settings, huggingface=hf).preferring(prefer)


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
    "transfer",
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
    transfer = _transfer(table.get("transfer", {}), where)
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
        transfer=transfer,
        models=models,
        concurrency=concurrency,
        config_file=path,
    )


def _transfer(value: object, where: str) -> TransferSettings:
    """The `[transfer]` table: connections (1-64), min_segment (MiB), hedge_delay (s)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: [transfer] must be a table")
    known = {"connections", "min_segment", "hedge_delay"}
    unknown = set(value) - known
    if unknown:
        raise ConfigError(
            f"{where}: [transfer] unknown key(s) {sorted(unknown)}; known: {sorted(known)}"
        )
    out = TransferSettings()
    connections = value.get("connections", out.connections)
    if (
        isinstance(connections, bool)
        or not isinstance(connections, int)
        or not 1 <= connections <= 64
    ):
        raise ConfigError(f"{where}: [transfer] connections must be an integer from 1 to 64")
    segment = value.get("min_segment", out.min_segment / (1 << 20))
    if isinstance(segment, bool) or not isinstance(segment, int | float) or not segment > 0:
        raise ConfigError(f"{where}: [transfer] min_segment must be a positive number of MiB")
    hedge = value.get("hedge_delay", out.hedge_delay)
    if isinstance(hedge, bool) or not isinstance(hedge, int | float) or hedge < 0:
        raise ConfigError(f"{where}: [transfer] hedge_delay must be a number of seconds >= 0")
    return replace(
        out,
        connections=connections,
        min_segment=max(1, int(segment * (1 << 20))),
        hedge_delay=float(hedge),
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


# Settings only the environment or a flag gives (a token never sits in a config file).
_NOT_IN_FILE = frozenset({"token", "offline", "cache_dir", "token_path"})


def _section(default: Any, value: object, name: str, where: str) -> Any:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: [{name}] must be a table")
    allowed = {k for k in default.__dataclass_fields__ if k not in _NOT_IN_FILE}
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
        elif key == "rpc" and name == "ipfs":
            changes[key] = _gateways(raw, f"{where}: [ipfs] rpc")
        elif key == "mirrors":
            changes[key] = _mirrors(raw, f"{where}: [huggingface] mirrors")
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
    """Gateway base URLs; an empty list means no gateway (the IPFS layer is then skipped)."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, Sequence):
        raise ConfigError(f"{where}: expected a list of gateway base URLs")
    return tuple(_base_url(v, where) for v in value)


def _mirrors(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ConfigError(f"{where}: expected a list of http(s) base URLs (it may be empty)")
    mirrors = tuple(_base_url(v, where) for v in value)
    if len(set(mirrors)) != len(mirrors):
        raise ConfigError(f"{where}: a mirror is listed twice")
    return mirrors


def _apply_env(settings: Settings, env: Mapping[str, str]) -> Settings:
    if env.get("MODELFETCH_HOME"):
        settings = replace(settings, models_dir=Path(env["MODELFETCH_HOME"]).expanduser())
    hf = settings.huggingface
    if env.get("HF_ENDPOINT"):
        hf = replace(hf, endpoint=_base_url(env["HF_ENDPOINT"], "HF_ENDPOINT"))
    hf = replace(
        hf,
        token=hf_token(env),
        offline=hf_offline(env),
        cache_dir=hf_cache_dir(env),
        token_path=hf_token_path(env),
    )
    ipfs = settings.ipfs
    if env.get("MODELFETCH_IPFS_GATEWAYS"):
        ipfs = replace(
            ipfs, gateways=_gateways(env["MODELFETCH_IPFS_GATEWAYS"], "MODELFETCH_IPFS_GATEWAYS")
        )
    if env.get("MODELFETCH_IPFS_RPC"):
        ipfs = replace(ipfs, rpc=_gateways(env["MODELFETCH_IPFS_RPC"], "MODELFETCH_IPFS_RPC"))
    return replace(settings, huggingface=hf, ipfs=ipfs)
