"""`modelfetch metrics list|summary|health|reset`: the download records of the models dir."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..config import LAYERS
from ._common import common_options, echo, echo_json, handle_errors, remember, settings_from

if TYPE_CHECKING:
    from ..config import Settings
    from ..records import Records

RECENT_ROWS = 50  # rows `metrics list` shows in its table unless --limit says otherwise


def _open_records(settings: Settings) -> Records:
    from ..records import Records

    return Records(settings.records_path, retention=timedelta(hours=settings.retention_hours))


@click.group("metrics")
@common_options
@click.pass_context
def metrics_group(ctx: click.Context, config_file: Path | None, models_dir: Path | None) -> None:
    """Download records of the models dir: list, summary, health, reset."""
    remember(ctx, config_file, models_dir)


@metrics_group.command("list")
@common_options
@click.option(
    "--since",
    default=None,
    help="Only attempts since then: ISO time (2024-05-01T10:00Z), Unix ms, or 15m, 2h, 1d.",
)
@click.option("--layer", type=click.Choice(LAYERS), default=None, help="Only this layer.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help=f"At most N rows, newest first (default: all with --json, {RECENT_ROWS} otherwise).",
)
@click.option("--json", "as_json", is_flag=True, help='Print {"metrics": [...]} on stdout.')
@click.pass_context
@handle_errors
def metrics_list(
    ctx: click.Context,
    config_file: Path | None,
    models_dir: Path | None,
    since: str | None,
    layer: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """Recorded download attempts, newest first."""
    from ..server.params import parse_since

    try:
        since_at = parse_since(since) if since is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    settings = settings_from(ctx, config_file, models_dir)
    wanted = limit if limit is not None or as_json else RECENT_ROWS + 1
    with _open_records(settings) as records:
        rows = records.attempts(since_at, layer, wanted)
    if as_json:
        echo_json({"metrics": rows})
        return
    if not rows:
        echo("no download attempts recorded")
        return
    from ._tables import print_attempts

    more = limit is None and len(rows) > RECENT_ROWS
    print_attempts(rows[:RECENT_ROWS] if more else rows)
    if more:
        echo(f"(newest {RECENT_ROWS} shown; use --limit N or --json for more)", err=True)


@metrics_group.command("summary")
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.pass_context
@handle_errors
def metrics_summary(
    ctx: click.Context, config_file: Path | None, models_dir: Path | None, as_json: bool
) -> None:
    """Counts of attempts per layer over the retention window."""
    settings = settings_from(ctx, config_file, models_dir)
    with _open_records(settings) as records:
        summary = records.summary()
    if as_json:
        echo_json(summary)
        return
    from ._tables import print_summary

    print_summary(summary)


@metrics_group.command("health")
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print the health report as JSON.")
@click.pass_context
@handle_errors
def metrics_health(
    ctx: click.Context, config_file: Path | None, models_dir: Path | None, as_json: bool
) -> None:
    """Health of each layer and gateway over the retention window, with each gateway's
    score (0-100: the order its layer's origins are asked in, best first)."""
    from ..scores import Scores, with_scores

    settings = settings_from(ctx, config_file, models_dir)
    with _open_records(settings) as records:
        health = with_scores(records.health(), Scores.load(records))
    if as_json:
        echo_json(health)
        return
    from ._tables import print_health

    print_health(health)


@metrics_group.command("reset")
@common_options
@click.option("--json", "as_json", is_flag=True, help='Print {"ok": true, "message": ...}.')
@click.pass_context
@handle_errors
def metrics_reset(
    ctx: click.Context, config_file: Path | None, models_dir: Path | None, as_json: bool
) -> None:
    """Forget every recorded attempt and finished download (running ones stay)."""
    settings = settings_from(ctx, config_file, models_dir)
    with _open_records(settings) as records:
        records.reset()
    if as_json:
        echo_json({"ok": True, "message": "Metrics reset"})
    else:
        echo(f"Metrics reset ({settings.records_path})")
