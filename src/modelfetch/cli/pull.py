"""`modelfetch pull`: models into the models dir, verified, with a summary or JSON."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..config import LAYERS
from ..errors import group_failures, grouped_error_reports
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    common_options,
    echo,
    echo_error,
    echo_json,
    handle_errors,
    human_bytes,
    is_terminal,
    run,
    settings_from,
)

if TYPE_CHECKING:
    from ..config import Settings
    from ..events import Listener
    from ..hubtypes import RepoType
    from ..repos import RepoOptions
    from ..results import ModelResult


@click.command("pull")
@click.argument("models", nargs=-1, required=True)
@common_options
@click.option("--prefer", type=click.Choice(LAYERS), default=None, help="Try this layer first.")
@click.option("--revision", default=None, help="Branch, tag or commit of ORG/NAME repos.")
@click.option(
    "--repo-type",
    type=click.Choice(["model", "dataset"]),
    default="model",
    help="Kind of ORG/NAME repos (default: model).",
)
@click.option("--include", multiple=True, help="Only repo files matching this glob (repeatable).")
@click.option("--exclude", multiple=True, help="No repo file matching this glob (repeatable).")
@click.option(
    "--local-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Plain files of ORG/NAME repos in this dir, not the Hugging Face cache.",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Hugging Face cache (default: $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub).",
)
@click.option("--offline", is_flag=True, default=False, help="No request at all (HF_HUB_OFFLINE).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.pass_context
@handle_errors
def pull_command(
    ctx: click.Context,
    models: tuple[str, ...],
    config_file: Path | None,
    models_dir: Path | None,
    prefer: str | None,
    revision: str | None,
    repo_type: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    local_dir: Path | None,
    cache_dir: Path | None,
    offline: bool | None,
    as_json: bool,
) -> None:
    """Download MODEL(s) or Hugging Face repos (ORG/NAME), verified.

    A catalog model goes into the models dir; an ORG/NAME repo into the Hugging Face cache
    (or --local-dir), whose snapshot dir is printed last.
    """
    from ..repos import RepoOptions, parse_name

    settings = settings_from(
        ctx, config_file, models_dir, prefer, cache_dir=cache_dir, offline=offline or None
    )
    kind: RepoType = "dataset" if repo_type == "dataset" else "model"
    for name in models:
        parse_name(settings, name, kind)  # unknown or malformed names fail before any transfer
    options = RepoOptions(revision, kind, include, exclude, local_dir)
    results = run(_pull(settings, list(models), options))
    ok = all(r.ok for r in results)
    if as_json:
        echo_json(pull_document(results))
    else:
        render_pull(results)
    sys.exit(EXIT_OK if ok else EXIT_FAILED)


async def _pull(settings: Settings, names: list[str], options: RepoOptions) -> list[ModelResult]:
    from ..engine import Fetcher
    from ..repos import pull_names

    with contextlib.ExitStack() as stack:
        listeners: list[Listener] = []
        if is_terminal(err=True):  # bars only on a terminal, and rich imported only for them
            from rich.console import Console

            from ..progress import ProgressDisplay

            bars = ProgressDisplay(Console(stderr=True, highlight=False), enabled=True)
            listeners.append(stack.enter_context(bars).listener)
        async with Fetcher(settings, listeners=listeners) as fetcher:
            return await pull_names(fetcher, names, options)


def pull_document(results: list[ModelResult]) -> dict[str, Any]:
    return {
        "ok": all(r.ok for r in results),
        "models": [
            {
                "name": r.name,
                "dir": str(r.dir),
                "snapshot": None if r.snapshot is None else str(r.snapshot),
                "commit": r.commit,
                "files": [f.to_dict() for f in sorted(r.files, key=lambda f: f.path)],
            }
            for r in results
        ],
        "errors": [item for r in results for item in grouped_error_reports(r.name, r.errors)],
    }


def render_pull(results: list[ModelResult]) -> None:
    for r in results:
        fetched = sum(f.bytes_downloaded for f in r.files)
        state = click.style("ok", fg="green") if r.ok else click.style("FAILED", fg="red")
        echo(
            f"{r.name}: {state} {len(r.files)} file(s) in {r.dir}, "
            f"{human_bytes(fetched)} downloaded"
        )
        for f in sorted(r.files, key=lambda f: f.path):
            where = f" {f.gateway}" if f.gateway else ""
            echo(f"  {f.path}  {human_bytes(f.size)}  {f.source}{where}")
        for group in group_failures(r.errors):
            echo_error(group.text())
    for r in results:  # as `hf download`: the snapshot (or local) dir is the last line
        if r.snapshot is not None:
            echo(str(r.snapshot))
