"""`modelfetch serve`: the REST API, WebSocket progress, /metrics and the dashboard."""

from __future__ import annotations

import contextlib
import os
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
@click.option(
    "--mirror",
    is_flag=True,
    help="Also serve the store as a Hugging Face hub (HF_ENDPOINT=http://this-host:PORT), "
    "pulling through what it lacks, and its models with a CID as a trustless IPFS gateway "
    "(/ipfs/<cid>).",
)
@click.option(
    "--open-reads",
    is_flag=True,
    help="With --mirror: its read routes need no token (a LAN cache of public models); "
    "allows a non-loopback --host without a token. Everything else keeps needing one.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The Hugging Face cache the mirror serves and fills (default: HF_HUB_CACHE, "
    "$HF_HOME/hub, ~/.cache/huggingface/hub).",
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
    mirror: bool,
    open_reads: bool,
    cache_dir: Path | None,
) -> None:
    """Serve the REST API, WebSocket progress and /metrics under /gm until Ctrl-C."""
    from dataclasses import replace

    from ..config import hf_cache_dir
    from ..errors import ConfigError
    from ..server import run_server

    if open_reads and not mirror:
        raise ConfigError("--open-reads opens the mirror's read routes: add --mirror")
    settings = settings_from(ctx, config_file, models_dir)
    if cache_dir is not None:
        hf = replace(settings.huggingface, cache_dir=hf_cache_dir(os.environ, cache_dir))
        settings = replace(settings, huggingface=hf)
    token = token.strip() if token and token.strip() else None

    def ready(url: str) -> None:
        auth = "; bearer token required" if token else ""
        if mirror:
            base = url.removesuffix("/gm/")
            reads = "open to all" if open_reads else "token required" if token else "local"
            echo(f"Hugging Face mirror at {base} (HF_ENDPOINT={base}; reads {reads})")
            echo(f'IPFS trustless gateway at {base}/ipfs/ ([ipfs] gateways = ["{base}"])')
        echo(f"modelfetch serving on {url} (Ctrl-C to stop{auth})")

    with contextlib.suppress(KeyboardInterrupt):  # where signal handlers are not available
        run_server(
            settings, host, port, token, on_ready=ready, mirror=mirror, open_reads=open_reads
        )
    echo("stopped", err=True)
