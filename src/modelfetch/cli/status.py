"""`modelfetch verify` and `modelfetch status`: what is on disk, checked with no network."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    common_options,
    echo,
    echo_json,
    handle_errors,
    human_bytes,
    run,
    settings_from,
)


@click.command("verify")
@click.argument("models", nargs=-1, required=True)
@common_options
@click.option("--deep", is_flag=True, help="Rehash every file even if a verified stamp matches.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_context
@handle_errors
def verify_command(
    ctx: click.Context,
    models: tuple[str, ...],
    config_file: Path | None,
    models_dir: Path | None,
    deep: bool,
    as_json: bool,
) -> None:
    """Check MODEL(s) on disk against the manifest, with no network."""
    from ..inventory import inspect_model
    from ..store import Store

    settings = settings_from(ctx, config_file, models_dir)
    specs = [settings.model(n) for n in models]
    store = Store(settings.models_dir)
    statuses = [run(inspect_model(store, s, deep=deep)) for s in specs]
    ok = all(s.state == "complete" for s in statuses)
    if as_json:
        echo_json({"ok": ok, "models": [s.to_dict() for s in statuses]})
    else:
        for s in statuses:
            echo(f"{s.name}: {s.state}")
            for f in s.files:
                why = f" ({f.reason})" if f.reason else ""
                echo(f"  {f.state:<10} {f.path}{why}")
    sys.exit(EXIT_OK if ok else EXIT_FAILED)


@click.command("status")
@common_options
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Hugging Face cache (default: $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_context
@handle_errors
def status_command(
    ctx: click.Context,
    config_file: Path | None,
    models_dir: Path | None,
    cache_dir: Path | None,
    as_json: bool,
) -> None:
    """List every catalog model, present or not, and the repos of the Hugging Face cache."""
    from ..hfcache import HFCache
    from ..hfstatus import cache_status
    from ..inventory import inspect_model
    from ..store import Store

    settings = settings_from(ctx, config_file, models_dir, cache_dir=cache_dir)
    store = Store(settings.models_dir)
    statuses = [run(inspect_model(store, m)) for m in settings.models.values()]
    cache = HFCache(settings.huggingface.cache_dir)
    repos, problems = cache_status(cache, settings.models_dir)
    if as_json:
        echo_json(
            {
                "models_dir": str(settings.models_dir),
                "models": [s.to_dict() for s in statuses],
                "hf_cache": {
                    "cache_dir": str(cache.root),
                    "repos": [r.to_dict() for r in repos],
                    "problems": problems,
                },
            }
        )
        return
    echo(f"models dir: {settings.models_dir}")
    for s in statuses:
        present = sum(1 for f in s.files if f.state == "verified")
        echo(
            f"  {s.name:<24} {s.state:<10} {present}/{len(s.files)} files  "
            f"{human_bytes(s.bytes)}  {s.dir}"
        )
    echo(f"Hugging Face cache: {cache.root}")
    if not repos:
        echo("  (no repos)")
    for r in repos:
        name = (
            r.repo.repo_id
            if r.repo.repo_type == "model"
            else f"{r.repo.repo_id} ({r.repo.repo_type})"
        )
        commit = r.snapshot.commit[:12] if r.snapshot is not None else "-"
        echo(
            f"  {name:<24} {r.state:<10} {r.verified}/{r.files} verified  "
            f"{human_bytes(r.repo.size_on_disk)}  {commit}"
        )
    for problem in problems:
        echo(f"  problem: {problem}")
