"""What every command shares: exit codes, error handling, --config/--dir, plain output."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Coroutine
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import ConfigError, ModelfetchError

if TYPE_CHECKING:
    from ..config import Settings

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def run(coro: Coroutine[Any, Any, T]) -> T:
    import asyncio  # here, not above: `--help` needs no event loop

    return asyncio.run(coro)


# -- output ------------------------------------------------------------------------------
# Plain lines go through click: rich costs a tenth of a second to import, so it is loaded
# only to draw progress bars on a terminal and the metrics tables.


def is_terminal(*, err: bool = False) -> bool:
    """Whether stdout (stderr with `err`) is a terminal, by the rules rich follows too."""
    tty_compatible = os.environ.get("TTY_COMPATIBLE", "")
    if tty_compatible in ("0", "1"):
        return tty_compatible == "1"
    force_color = os.environ.get("FORCE_COLOR")
    if force_color is not None:
        return force_color != ""
    try:
        return (sys.stderr if err else sys.stdout).isatty()
    except ValueError:  # a closed stream
        return False


def _colour(err: bool) -> bool:
    dumb = os.environ.get("TERM", "").lower() in ("dumb", "unknown")
    return is_terminal(err=err) and not os.environ.get("NO_COLOR") and not dumb


def echo(message: str = "", *, err: bool = False) -> None:
    """One line on stdout (results) or stderr (progress, errors); click.style colours only
    reach a colour terminal."""
    click.echo(message, err=err, color=_colour(err))


def echo_error(message: object) -> None:
    echo(f"{click.style('error:', fg='red')} {message}", err=True)


def echo_json(document: Any) -> None:
    """One JSON document on stdout, indented by two spaces."""
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


# -- errors and options ------------------------------------------------------------------


def handle_errors(func: F) -> F:
    """Turn expected failures into a message and an exit code, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            echo_error(exc)
            sys.exit(EXIT_USAGE)
        except ModelfetchError as exc:
            echo_error(exc)
            sys.exit(EXIT_FAILED)
        except KeyboardInterrupt:
            echo("interrupted: partial downloads are kept and will resume", err=True)
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
    ctx: click.Context,
    config_file: Path | None,
    models_dir: Path | None,
    prefer: str | None = None,
    *,
    cache_dir: Path | None = None,
    offline: bool | None = None,
) -> Settings:
    from ..config import load_settings

    obj = ctx.find_root().obj or {}
    return load_settings(
        config_file=config_file or obj.get("config_file"),
        models_dir=models_dir or obj.get("models_dir"),
        prefer=prefer,
        cache_dir=cache_dir,
        offline=offline,
    )
