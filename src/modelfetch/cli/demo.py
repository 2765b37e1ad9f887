"""`modelfetch demo`: a pull through loopback origins with faults (src/modelfetch/demo.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ._common import common_options, handle_errors


@click.command("demo")
@common_options
@click.pass_context
@handle_errors
def demo_command(ctx: click.Context, config_file: Path | None, models_dir: Path | None) -> None:
    """Pull a generated model through loopback origins with faults, fully offline."""
    from rich.console import Console

    from ..demo import run_demo

    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False)
    root = ctx.find_root().obj or {}
    sys.exit(run_demo(out, err, models_dir or root.get("models_dir")))
