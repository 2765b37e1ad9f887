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
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_context
@handle_errors
def status_command(
    ctx: click.Context, config_file: Path | None, models_dir: Path | None, as_json: bool
) -> None:
    """List every catalog model, present or not, with its state."""
    from ..inventory import inspect_model
    from ..store import Store

    settings = settings_from(ctx, config_file, models_dir)
    store = Store(settings.models_dir)
    statuses = [run(inspect_model(store, m)) for m in settings.models.values()]
    if as_json:
        echo_json(
            {"models_dir": str(settings.models_dir), "models": [s.to_dict() for s in statuses]}
        )
        return
    echo(f"models dir: {settings.models_dir}")
    for s in statuses:
        present = sum(1 for f in s.files if f.state == "verified")
        echo(
            f"  {s.name:<24} {s.state:<10} {present}/{len(s.files)} files  "
            f"{human_bytes(s.bytes)}  {s.dir}"
        )
