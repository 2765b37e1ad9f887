"""`modelfetch manifest generate`: record a directory's files, hashed, in .manifests.json."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import common_options, echo, handle_errors, human_bytes, remember, settings_from


@click.group("manifest")
@common_options
@click.pass_context
def manifest_group(ctx: click.Context, config_file: Path | None, models_dir: Path | None) -> None:
    """Manage .manifests.json."""
    remember(ctx, config_file, models_dir)


@manifest_group.command("generate")
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
    from ..manifest import MANIFEST_NAME, generate

    if manifest_file is None:
        manifest_file = settings_from(ctx, config_file, models_dir).models_dir / MANIFEST_NAME
    files = generate(directory, name, manifest_file)
    total = sum(e.size for e in files.values())
    echo(f"{name}: {len(files)} file(s), {human_bytes(total)} recorded in {manifest_file}")
