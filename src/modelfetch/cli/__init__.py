"""The `modelfetch` command: the group and its commands, one module per command group.

Each module parses its options and imports what its commands use (the engine, rich, the
server) inside them, so `modelfetch --help` and `modelfetch status` start in a fraction
of the time the engine and aiohttp take to import (see bench/startup.py). One place,
`_common.handle_errors`, turns failures into exit codes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import __version__
from ._common import common_options
from .demo import demo_command
from .ipfs import cid_command, gateways_group, publish_command
from .manifest import manifest_group
from .metrics import metrics_group
from .pull import pull_command
from .serve import serve_command
from .status import status_command, verify_command

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@common_options
@click.option("-v", "--verbose", count=True, help="Log more (-vv for debug).")
@click.version_option(__version__, prog_name="modelfetch")
@click.pass_context
def main(
    ctx: click.Context, config_file: Path | None, models_dir: Path | None, verbose: int
) -> None:
    """Get model files from the cache, IPFS gateways or Hugging Face, verified."""
    import logging  # not above: `--help` and `--version` return before this runs

    ctx.obj = {"config_file": config_file, "models_dir": models_dir}
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


main.add_command(pull_command)
main.add_command(verify_command)
main.add_command(status_command)
main.add_command(manifest_group)
main.add_command(cid_command)
main.add_command(gateways_group)
main.add_command(publish_command)
main.add_command(metrics_group)
main.add_command(serve_command)
main.add_command(demo_command)
