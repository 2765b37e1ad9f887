"""The `modelfetch` command: parse, call the library, render. One place decides exit codes."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable, Coroutine
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from . import __version__
from .config import LAYERS, Settings, load_settings
from .engine import Fetcher, ModelResult
from .errors import AllSourcesFailed, ConfigError, ModelfetchError
from .inventory import inspect_model
from .manifest import MANIFEST_NAME, generate
from .progress import ProgressDisplay
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


def error_dict(model: str, exc: ModelfetchError) -> dict[str, Any]:
    item: dict[str, Any] = {
        "model": model,
        "error_type": type(exc).__name__,
        "message": str(exc).splitlines()[0],
    }
    if isinstance(exc, AllSourcesFailed):
        item["file"] = exc.path
        item["attempts"] = [
            {
                "layer": a.layer,
                "gateway": a.origin,
                "error_type": a.error_type,
                "message": a.message,
            }
            for a in exc.attempts
        ]
    return item


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
        "errors": [error_dict(r.name, e) for r in results for e in r.errors],
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
def manifest() -> None:
    """Manage .manifests.json."""


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
