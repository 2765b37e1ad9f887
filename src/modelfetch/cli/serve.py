"""`modelfetch serve`: the REST API, WebSocket progress, /metrics and the dashboard."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from ._common import common_options, echo, handle_errors, settings_from


@click.command("serve")
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
    from ..server import run_server

    settings = settings_from(ctx, config_file, models_dir)
    token = token.strip() if token and token.strip() else None

    def ready(url: str) -> None:
        auth = "; bearer token required" if token else ""
        echo(f"modelfetch serving on {url} (Ctrl-C to stop{auth})")

    with contextlib.suppress(KeyboardInterrupt):  # where signal handlers are not available
        run_server(settings, host, port, token, on_ready=ready)
    echo("stopped", err=True)
