"""The `modelfetch` command: parse, call the library, render. One place decides exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Coroutine
from datetime import timedelta
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import __version__
from .config import LAYERS, Settings, load_settings
from .engine import Fetcher, ModelResult
from .errors import ConfigError, ModelfetchError, error_report
from .inventory import inspect_model
from .manifest import MANIFEST_NAME, generate
from .progress import ProgressDisplay
from .records import Records
from .sources.ipfs import GatewayStatus
from .store import Store

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

err = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def handle_errors(func: F) -> F:
    """Turn expected failures into a message and an exit code, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            err.print(f"[red]error:[/] {exc}", markup=True)
            sys.exit(EXIT_USAGE)
        except ModelfetchError as exc:
            err.print(f"[red]error:[/] {exc}", markup=True)
            sys.exit(EXIT_FAILED)
        except KeyboardInterrupt:
            err.print("interrupted: partial downloads are kept and will resume")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def common_options(func: F) -> F:
    """--config and --dir, accepted by the group and by every command, wherever they stand."""
    func = click.option(
        "--dir",
        "models_dir",
        type=click.Path(path_type=Path),
        default=None,
        help="Models directory (default: $MODELFETCH_HOME or the user cache).",
    )(func)
    func = click.option(
        "--config",
        "config_file",
        type=click.Path(path_type=Path),
        default=None,
        help="Config file (TOML); default: $MODELFETCH_CONFIG.",
    )(func)
    return func


def remember(ctx: click.Context, config_file: Path | None, models_dir: Path | None) -> None:
    """Keep --config/--dir given to a command group for the command below it."""
    obj = ctx.find_root().obj
    if config_file is not None:
        obj["config_file"] = config_file
    if models_dir is not None:
        obj["models_dir"] = models_dir


def settings_from(
    ctx: click.Context, config_file: Path | None, models_dir: Path | None, prefer: str | None = None
) -> Settings:
    obj = ctx.find_root().obj or {}
    return load_settings(
        config_file=config_file or obj.get("config_file"),
        models_dir=models_dir or obj.get("models_dir"),
        prefer=prefer,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@common_options
@click.option("-v", "--verbose", count=True, help="Log more (-vv for debug).")
@click.version_option(__version__, prog_name="modelfetch")
@click.pass_context
def main(
    ctx: click.Context, config_file: Path | None, models_dir: Path | None, verbose: int
) -> None:
    """Get model files from the cache, IPFS gateways or Hugging Face, verified."""
    ctx.obj = {"config_file": config_file, "models_dir": models_dir}
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


# -- pull --------------------------------------------------------------------------------


@main.command()
@click.argument("models", nargs=-1, required=True)
@common_options
@click.option("--prefer", type=click.Choice(LAYERS), default=None, help="Try this layer first.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.pass_context
@handle_errors
def pull(
    ctx: click.Context,
    models: tuple[str, ...],
    config_file: Path | None,
    models_dir: Path | None,
    prefer: str | None,
    as_json: bool,
) -> None:
    """Download MODEL(s) into the models dir, verified."""
    settings = settings_from(ctx, config_file, models_dir, prefer)
    for name in models:
        settings.model(name)  # unknown names fail before any transfer
    results = run(_pull(settings, list(models)))
    ok = all(r.ok for r in results)
    if as_json:
        out.print_json(json.dumps(pull_document(results)))
    else:
        render_pull(results)
    sys.exit(EXIT_OK if ok else EXIT_FAILED)


async def _pull(settings: Settings, names: list[str]) -> list[ModelResult]:
    with ProgressDisplay(err, enabled=err.is_terminal) as display:
        async with Fetcher(settings, listeners=[display.listener]) as fetcher:
            return await fetcher.pull(names)


def pull_document(results: list[ModelResult]) -> dict[str, Any]:
    return {
        "ok": all(r.ok for r in results),
        "models": [
            {
                "name": r.name,
                "dir": str(r.dir),
                "files": [f.to_dict() for f in sorted(r.files, key=lambda f: f.path)],
            }
            for r in results
        ],
        "errors": [error_report(r.name, e) for r in results for e in r.errors],
    }


def render_pull(results: list[ModelResult]) -> None:
    for r in results:
        fetched = sum(f.bytes_downloaded for f in r.files)
        state = "[green]ok[/]" if r.ok else "[red]FAILED[/]"
        out.print(
            f"{r.name}: {state} {len(r.files)} file(s) in {r.dir}, "
            f"{human_bytes(fetched)} downloaded"
        )
        for f in sorted(r.files, key=lambda f: f.path):
            where = f" {f.gateway}" if f.gateway else ""
            out.print(f"  {f.path}  {human_bytes(f.size)}  {f.source}{where}", markup=False)
        for e in r.errors:
            err.print(f"[red]error:[/] {e}")


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


# -- verify / status ---------------------------------------------------------------------


@main.command()
@click.argument("models", nargs=-1, required=True)
@common_options
@click.option("--deep", is_flag=True, help="Rehash every file even if a verified stamp matches.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_context
@handle_errors
def verify(
    ctx: click.Context,
    models: tuple[str, ...],
    config_file: Path | None,
    models_dir: Path | None,
    deep: bool,
    as_json: bool,
) -> None:
    """Check MODEL(s) on disk against the manifest, with no network."""
    settings = settings_from(ctx, config_file, models_dir)
    specs = [settings.model(n) for n in models]
    store = Store(settings.models_dir)
    statuses = [run(inspect_model(store, s, deep=deep)) for s in specs]
    ok = all(s.state == "complete" for s in statuses)
    if as_json:
        out.print_json(json.dumps({"ok": ok, "models": [s.to_dict() for s in statuses]}))
    else:
        for s in statuses:
            out.print(f"{s.name}: {s.state}")
            for f in s.files:
                why = f" ({f.reason})" if f.reason else ""
                out.print(f"  {f.state:<10} {f.path}{why}", markup=False)
    sys.exit(EXIT_OK if ok else EXIT_FAILED)


@main.command()
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_context
@handle_errors
def status(
    ctx: click.Context, config_file: Path | None, models_dir: Path | None, as_json: bool
) -> None:
    """List every catalog model, present or not, with its state."""
    settings = settings_from(ctx, config_file, models_dir)
    store = Store(settings.models_dir)
    statuses = [run(inspect_model(store, m)) for m in settings.models.values()]
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "models_dir": str(settings.models_dir),
                    "models": [s.to_dict() for s in statuses],
                }
            )
        )
        return
    out.print(f"models dir: {settings.models_dir}")
    for s in statuses:
        present = sum(1 for f in s.files if f.state == "verified")
        out.print(
            f"  {s.name:<24} {s.state:<10} {present}/{len(s.files)} files  "
            f"{human_bytes(s.bytes)}  {s.dir}",
            markup=False,
        )


# -- manifest ----------------------------------------------------------------------------


@main.group()
@common_options
@click.pass_context
def manifest(ctx: click.Context, config_file: Path | None, models_dir: Path | None) -> None:
    """Manage .manifests.json."""
    remember(ctx, config_file, models_dir)


@manifest.command("generate")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--name", required=True, help="Model name to record the files under.")
@click.option(
    "--manifest",
    "manifest_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Manifest to write (default: .manifests.json in the models dir).",
)
@common_options
@click.pass_context
@handle_errors
def manifest_generate(
    ctx: click.Context,
    directory: Path,
    name: str,
    manifest_file: Path | None,
    config_file: Path | None,
    models_dir: Path | None,
) -> None:
    """Hash every file in DIRECTORY and record it as model NAME."""
    if manifest_file is None:
        manifest_file = settings_from(ctx, config_file, models_dir).models_dir / MANIFEST_NAME
    files = generate(directory, name, manifest_file)
    total = sum(e.size for e in files.values())
    out.print(f"{name}: {len(files)} file(s), {human_bytes(total)} recorded in {manifest_file}")


# -- IPFS --------------------------------------------------------------------------------


@main.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option(
    "--cid-version",
    type=click.Choice(["0", "1"]),
    default="0",
    show_default=True,
    help="0 = kubo's defaults; 1 = kubo's --cid-version=1 (raw leaves).",
)
@click.option(
    "--profile",
    type=click.Choice(["unixfs-v0-2015", "unixfs-v1-2025"]),
    default=None,
    help="A named import profile (wins over --cid-version).",
)
@common_options
@handle_errors
def cid(
    target: Path,
    cid_version: str,
    profile: str | None,
    config_file: Path | None,
    models_dir: Path | None,
) -> None:
    """Print the CID of FILE or DIR exactly as `ipfs add --only-hash` computes it."""
    from .ipfs.importer import cid_of_path

    if not target.exists():
        raise ConfigError(f"{target} does not exist")
    try:
        value = cid_of_path(target, cid_version=int(cid_version), profile=profile)
    except ValueError as exc:  # a FIFO, a device, a directory too big to shard here
        raise ConfigError(f"{target}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{target}: {exc.strerror}") from None
    out.print(value, markup=False, highlight=False)


@main.group()
@common_options
@click.pass_context
def gateways(ctx: click.Context, config_file: Path | None, models_dir: Path | None) -> None:
    """Inspect the configured IPFS gateways."""
    remember(ctx, config_file, models_dir)


@gateways.command("check")
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_context
@handle_errors
def gateways_check(
    ctx: click.Context, config_file: Path | None, models_dir: Path | None, as_json: bool
) -> None:
    """Probe each gateway (/ipfs/bafkqaaa): status, latency, trustless support."""
    settings = settings_from(ctx, config_file, models_dir)
    results = run(_check_gateways(settings))
    if as_json:
        out.print_json(json.dumps({"gateways": [r.to_dict() for r in results]}))
    else:
        for r in results:
            state = "[green]up[/]  " if r.ok else "[red]down[/]"
            latency = f"{r.latency_ms:7.1f} ms" if r.latency_ms is not None else "      -   "
            kind = "trustless" if r.trustless else "path     "
            out.print(f"{state} {latency}  {kind}  {r.url}  [dim]{r.detail}[/]")
    sys.exit(EXIT_OK if any(r.ok for r in results) else EXIT_FAILED)


async def _check_gateways(settings: Settings) -> list[GatewayStatus]:
    from .httpclient import Client
    from .sources.ipfs import check_gateway

    async with Client() as client:
        return list(
            await asyncio.gather(
                *(check_gateway(client, g, settings.ipfs) for g in settings.ipfs.gateways)
            )
        )


# -- demo --------------------------------------------------------------------------------


@main.command()
@common_options
@click.pass_context
@handle_errors
def demo(ctx: click.Context, config_file: Path | None, models_dir: Path | None) -> None:
    """Pull a generated model through loopback origins with faults, fully offline."""
    from .demo import run_demo

    root = ctx.find_root().obj or {}
    sys.exit(run_demo(out, err, models_dir or root.get("models_dir")))


# == metrics and serve ===================================================================
# Download records of the models dir, and the HTTP service (src/modelfetch/server/).

RECENT_ROWS = 50  # rows `metrics list` shows in its table unless --limit says otherwise


def _open_records(settings: Settings) -> Records:
    return Records(settings.records_path, retention=timedelta(hours=settings.retention_hours))


@main.group("metrics")
@common_options
@click.pass_context
def metrics_group(ctx: click.Context, config_file: Path | None, models_dir: Path | None) -> None:
    """Download records of the models dir: list, summary, health, reset."""
    remember(ctx, config_file, models_dir)


@metrics_group.command("list")
@common_options
@click.option(
    "--since",
    default=None,
    help="Only attempts since then: ISO time (2024-05-01T10:00Z), Unix ms, or 15m, 2h, 1d.",
)
@click.option("--layer", type=click.Choice(LAYERS), default=None, help="Only this layer.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help=f"At most N rows, newest first (default: all with --json, {RECENT_ROWS} otherwise).",
)
@click.option("--json", "as_json", is_flag=True, help='Print {"metrics": [...]} on stdout.')
@click.pass_context
@handle_errors
def metrics_list(
    ctx: click.Context,
    config_file: Path | None,
    models_dir: Path | None,
    since: str | None,
    layer: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """Recorded download attempts, newest first."""
    from .server.params import parse_since

    try:
        since_at = parse_since(since) if since is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    settings = settings_from(ctx, config_file, models_dir)
    wanted = limit if limit is not None or as_json else RECENT_ROWS + 1
    with _open_records(settings) as records:
        rows = records.attempts(since_at, layer, wanted)
    if as_json:
        out.print_json(json.dumps({"metrics": rows}))
        return
    more = limit is None and len(rows) > RECENT_ROWS
    render_attempts(rows[:RECENT_ROWS] if more else rows)
    if more:
        err.print(f"(newest {RECENT_ROWS} shown; use --limit N or --json for more)")


def render_attempts(rows: list[dict[str, Any]]) -> None:
    if not rows:
        out.print("no download attempts recorded")
        return
    table = _table()
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("model/file", overflow="fold", ratio=2)
    table.add_column("source", overflow="fold", ratio=2)
    table.add_column("status", no_wrap=True)
    table.add_column("latency", justify="right", no_wrap=True)
    table.add_column("bytes", justify="right", no_wrap=True)
    table.add_column("error", overflow="fold", ratio=3)
    for row in rows:
        error = ": ".join(str(x) for x in (row["error_type"], row["error_message"]) if x)
        latency = row["latency_ms"]
        gateway = str(row["gateway"] or "").split("://", 1)[-1]
        source = " ".join(x for x in (row["layer"] or "all layers", gateway) if x)
        status = str(row["status"])
        table.add_row(
            str(row["timestamp"]).replace("T", " ")[5:19],
            Text(f"{row['model']}/{row['file']}"),
            Text(source),
            Text(status, style=_STATUS_STYLE.get(status, "")),
            "" if latency is None else f"{latency:,.0f} ms",
            human_bytes(int(row["bytes_downloaded"])) if row["bytes_downloaded"] else "",
            Text(error),
        )
    out.print(table)


def _table() -> Table:
    return Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)


_STATUS_STYLE = {
    "hit": "green",
    "success": "green",
    "healthy": "green",
    "error": "red",
    "exhausted": "bold red",
    "down": "bold red",
    "degraded": "yellow",
    "unknown": "dim",
}


@metrics_group.command("summary")
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.pass_context
@handle_errors
def metrics_summary(
    ctx: click.Context, config_file: Path | None, models_dir: Path | None, as_json: bool
) -> None:
    """Counts of attempts per layer over the retention window."""
    settings = settings_from(ctx, config_file, models_dir)
    with _open_records(settings) as records:
        summary = records.summary()
    if as_json:
        out.print_json(json.dumps(summary))
        return
    table = _table()
    table.add_column("layer")
    table.add_column("success", justify="right")
    table.add_column("error", justify="right")
    table.add_column("avg latency", justify="right")
    for layer in ("ipfs", "huggingface"):
        entry = summary.get(layer, {})
        table.add_row(
            layer,
            str(entry.get("success", 0)),
            str(entry.get("error", 0)),
            f"{entry.get('avg_latency', 0):,.1f} ms",
        )
    table.add_row(
        "cache",
        f"{summary['cache_hits']} hits",
        f"{summary.get('cache_misses', 0)} misses",
        "",
    )
    out.print(table)
    out.print(
        f"{summary['total']} attempt(s) in the last {summary.get('window_hours', 24):g} h; "
        f"{summary.get('exhausted', 0)} file(s) failed on every layer; "
        f"{human_bytes(int(summary.get('bytes_downloaded', 0)))} downloaded",
        markup=False,
    )


@metrics_group.command("health")
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print the health report as JSON.")
@click.pass_context
@handle_errors
def metrics_health(
    ctx: click.Context, config_file: Path | None, models_dir: Path | None, as_json: bool
) -> None:
    """Health of each layer and gateway over the retention window."""
    settings = settings_from(ctx, config_file, models_dir)
    with _open_records(settings) as records:
        health = records.health()
    if as_json:
        out.print_json(json.dumps(health))
        return
    table = _table()
    table.add_column("layer / gateway")
    table.add_column("status")
    table.add_column("success", justify="right")
    table.add_column("avg latency", justify="right")
    table.add_column("p95 latency", justify="right")
    table.add_column("attempts", justify="right")

    def row(label: str, entry: dict[str, Any]) -> None:
        status = str(entry.get("status", "unknown"))
        table.add_row(
            Text(label),
            Text(status, style=_STATUS_STYLE.get(status, "")),
            f"{entry.get('success_rate', 0):.1f} %",
            f"{entry.get('avg_latency_ms', 0):,.1f} ms",
            f"{entry.get('p95_latency_ms', 0):,.1f} ms",
            str(entry.get("attempts", 0)),
        )

    for layer in ("ipfs", "huggingface"):
        entry = health.get(layer, {})
        row(layer, entry)
        for gateway, gw_entry in entry.get("gateways", {}).items():
            row(f"  {gateway}", gw_entry)
    out.print(table)
    cache = health.get("cache", {})
    out.print(
        f"cache hit rate {cache.get('hit_rate', 0):.1f} % "
        f"({cache.get('hits', 0)} hits, {cache.get('misses', 0)} misses)",
        markup=False,
    )


@metrics_group.command("reset")
@common_options
@click.option("--json", "as_json", is_flag=True, help='Print {"ok": true, "message": ...}.')
@click.pass_context
@handle_errors
def metrics_reset(
    ctx: click.Context, config_file: Path | None, models_dir: Path | None, as_json: bool
) -> None:
    """Forget every recorded attempt and finished download (running ones stay)."""
    settings = settings_from(ctx, config_file, models_dir)
    with _open_records(settings) as records:
        records.reset()
    if as_json:
        out.print_json(json.dumps({"ok": True, "message": "Metrics reset"}))
    else:
        out.print(f"Metrics reset ({settings.records_path})", markup=False)


@main.command("serve")
@common_options
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; anything but loopback needs a token.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="TCP port (0: any free port, printed at start).",
)
@click.option(
    "--token",
    envvar="MODELFETCH_TOKEN",
    default=None,
    help="Bearer token the API requires (default: $MODELFETCH_TOKEN, which keeps it out of ps).",
)
@click.pass_context
@handle_errors
def serve_command(
    ctx: click.Context,
    config_file: Path | None,
    models_dir: Path | None,
    host: str,
    port: int,
    token: str | None,
) -> None:
    """Serve the REST API, WebSocket progress and /metrics under /gm until Ctrl-C."""
    from .server import run_server

    settings = settings_from(ctx, config_file, models_dir)
    token = token.strip() if token and token.strip() else None

    def ready(url: str) -> None:
        auth = "; bearer token required" if token else ""
        out.print(f"modelfetch serving on {url} (Ctrl-C to stop{auth})", markup=False)

    with contextlib.suppress(KeyboardInterrupt):  # where signal handlers are not available
        run_server(settings, host, port, token, on_ready=ready)
    err.print("stopped")


# == publish ============================================================================
# `modelfetch publish`: a verified model to kubo, Pinata or a pinning service
# (src/modelfetch/ipfs/publish.py), then its CID into the manifest and the records.


@main.command("publish")
@click.argument("model")
@common_options
@click.option(
    "--to",
    "target",
    type=click.Choice(["kubo", "pinata", "psa"]),
    required=True,
    help="kubo RPC (/api/v0/add), Pinata (pinFileToIPFS) or an IPFS Pinning Service API.",
)
@click.option(
    "--endpoint",
    default=None,
    metavar="URL",
    help="Service base URL. Default: $MODELFETCH_KUBO_API or http://127.0.0.1:5001; "
    "$MODELFETCH_PINATA_API or https://api.pinata.cloud; $MODELFETCH_PSA_ENDPOINT or "
    "https://api.pinata.cloud/psa.",
)
@click.option(
    "--cid-version",
    type=click.IntRange(0, 1),
    default=1,
    show_default=True,
    help="0: kubo's defaults (Qm…); 1: raw leaves (bafy…).",
)
@click.option(
    "--profile",
    default=None,
    metavar="NAME",
    help="unixfs-v0-2015, cid-version-1 or unixfs-v1-2025 (wins over --cid-version).",
)
@click.option(
    "--origin",
    "origins",
    multiple=True,
    metavar="MULTIADDR",
    help="psa: address of an IPFS node that has the content, for the service to fetch "
    "from (repeatable). The service pins by CID only.",
)
@click.option(
    "--gateway",
    "gateway_url",
    default=None,
    metavar="URL",
    help="Gateway URL to record with the CID (Pinata's by default for Pinata).",
)
@click.option(
    "--timeout",
    "pin_timeout",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="psa: seconds to wait for the pin request to reach 'pinned'.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON result on stdout.")
@click.pass_context
@handle_errors
def publish_command(
    ctx: click.Context,
    model: str,
    config_file: Path | None,
    models_dir: Path | None,
    target: str,
    endpoint: str | None,
    cid_version: int,
    profile: str | None,
    origins: tuple[str, ...],
    gateway_url: str | None,
    pin_timeout: float,
    as_json: bool,
) -> None:
    """Publish MODEL's verified files to IPFS and record the CID for the next pull.

    The directory CID is computed locally first and printed; a service that reports another
    CID fails the command and nothing is recorded. Credentials come from the environment
    only (never logged): PINATA_JWT, or PINATA_API_KEY + PINATA_SECRET_KEY, for Pinata;
    MODELFETCH_PSA_TOKEN (PINATA_JWT for Pinata's) for a pinning service;
    MODELFETCH_KUBO_TOKEN if the kubo RPC needs one.
    """
    from .ipfs.publish import LocalModel, publish

    settings = settings_from(ctx, config_file, models_dir)
    settings.model(model)  # an unknown name fails before anything is hashed
    local_cid: list[str] = []

    def show_local(local: LocalModel) -> None:
        local_cid.append(local.cid)
        if not as_json:
            out.print(
                f"local CID  {local.cid}  ({local.spec.name}: {len(local.files)} file(s), "
                f"{human_bytes(local.total_bytes)}, {local.profile.name})",
                markup=False,
            )

    try:
        result = run(
            publish(
                settings,
                model,
                to=target,  # type: ignore[arg-type]  # click.Choice checked it
                cid_version=cid_version,
                profile=profile,
                endpoint=endpoint,
                origins=origins,
                gateway_url=gateway_url,
                pin_timeout=pin_timeout,
                on_local=show_local,
            )
        )
    except ModelfetchError as exc:
        if as_json:
            failure = {
                "ok": False,
                "model": model,
                "target": target,
                "local_cid": local_cid[0] if local_cid else None,
                "error_type": type(exc).__name__,
                "message": str(exc),
            }
            out.print_json(json.dumps(failure))
        raise
    if as_json:
        out.print_json(json.dumps({"ok": True, **result.to_dict()}))
        return
    pinned = "pinned" if result.pinned else "not pinned yet"
    out.print(
        f"published  {result.cid}  to {result.target} at {result.endpoint} ({pinned})",
        markup=False,
    )
    if result.request_id:
        out.print(f"  pin request {result.request_id}", markup=False)
    for delegate in result.delegates:
        out.print(f"  delegate {delegate}", markup=False)
    manifest_path = settings.models_dir / MANIFEST_NAME
    out.print(
        f"recorded in {manifest_path}: the next pull of {result.model} can use IPFS",
        markup=False,
    )
