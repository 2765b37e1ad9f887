"""`modelfetch cid`, `gateways check` and `publish`: CIDs, gateways, and models to IPFS."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import ConfigError, ModelfetchError
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    common_options,
    echo,
    echo_json,
    handle_errors,
    human_bytes,
    remember,
    run,
    settings_from,
)

if TYPE_CHECKING:
    from ..config import Settings
    from ..ipfs.publish import LocalModel
    from ..sources.ipfs import GatewayStatus


@click.command("cid")
@click.argument("target", type=click.Path(path_type=Path))
@click.option(
    "--cid-version",
    type=click.Choice(["0", "1"]),
    default="0",
    show_default=True,
    help="0 = kubo's defaults; 1 = kubo's --cid-version=1 (raw leaves).",
)
@click.option(
    "--profile",
    type=click.Choice(["unixfs-v0-2015", "unixfs-v1-2025"]),
    default=None,
    help="A named import profile (wins over --cid-version).",
)
@common_options
@handle_errors
def cid_command(
    target: Path,
    cid_version: str,
    profile: str | None,
    config_file: Path | None,
    models_dir: Path | None,
) -> None:
    """Print the CID of FILE or DIR exactly as `ipfs add --only-hash` computes it."""
    from ..ipfs.directory import cid_of_path

    if not target.exists():
        raise ConfigError(f"{target} does not exist")
    try:
        value = cid_of_path(target, cid_version=int(cid_version), profile=profile)
    except ValueError as exc:  # a FIFO, a device
        raise ConfigError(f"{target}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{target}: {exc.strerror}") from None
    echo(value)


@click.group("gateways")
@common_options
@click.pass_context
def gateways_group(ctx: click.Context, config_file: Path | None, models_dir: Path | None) -> None:
    """Inspect the configured IPFS gateways."""
    remember(ctx, config_file, models_dir)


@gateways_group.command("check")
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_context
@handle_errors
def gateways_check(
    ctx: click.Context, config_file: Path | None, models_dir: Path | None, as_json: bool
) -> None:
    """Probe each gateway (/ipfs/bafkqaaa): status, latency, trustless support, and its
    score from the recorded attempts (0-100; "-" when never used)."""
    from datetime import timedelta

    from ..scores import Scores

    settings = settings_from(ctx, config_file, models_dir)
    results = run(_check_gateways(settings))
    retention = timedelta(hours=settings.retention_hours)
    scores = Scores.from_file(settings.records_path, retention=retention).snapshot()
    if as_json:
        echo_json(
            {
                "gateways": [
                    {**r.to_dict(), "score": scores[r.url]["score"] if r.url in scores else None}
                    for r in results
                ]
            }
        )
    else:
        for r in results:
            state = click.style("up", fg="green") + "  " if r.ok else click.style("down", fg="red")
            latency = f"{r.latency_ms:7.1f} ms" if r.latency_ms is not None else "      -   "
            kind = "trustless" if r.trustless else "path     "
            score = f"score {scores[r.url]['score']:5.1f}" if r.url in scores else "score     -"
            echo(f"{state} {latency}  {kind}  {score}  {r.url}  {click.style(r.detail, dim=True)}")
    sys.exit(EXIT_OK if any(r.ok for r in results) else EXIT_FAILED)


async def _check_gateways(settings: Settings) -> list[GatewayStatus]:
    import asyncio

    from ..httpclient import Client
    from ..sources.ipfs import check_gateway

    async with Client() as client:
        return list(
            await asyncio.gather(
                *(check_gateway(client, g, settings.ipfs) for g in settings.ipfs.gateways)
            )
        )


@click.command("publish")
@click.argument("model")
@common_options
@click.option(
    "--to",
    "target",
    type=click.Choice(["kubo", "pinata", "psa"]),
    required=True,
    help="kubo RPC (/api/v0/add), Pinata (pinFileToIPFS) or an IPFS Pinning Service API.",
)
@click.option(
    "--endpoint",
    default=None,
    metavar="URL",
    help="Service base URL. Default: $MODELFETCH_KUBO_API or http://127.0.0.1:5001; "
    "$MODELFETCH_PINATA_API or https://api.pinata.cloud; $MODELFETCH_PSA_ENDPOINT or "
    "https://api.pinata.cloud/psa.",
)
@click.option(
    "--cid-version",
    type=click.IntRange(0, 1),
    default=1,
    show_default=True,
    help="0: kubo's defaults (Qm…); 1: raw leaves (bafy…).",
)
@click.option(
    "--profile",
    default=None,
    metavar="NAME",
    help="unixfs-v0-2015, cid-version-1 or unixfs-v1-2025 (wins over --cid-version).",
)
@click.option(
    "--origin",
    "origins",
    multiple=True,
    metavar="MULTIADDR",
    help="psa: address of an IPFS node that has the content, for the service to fetch "
    "from (repeatable). The service pins by CID only.",
)
@click.option(
    "--gateway",
    "gateway_url",
    default=None,
    metavar="URL",
    help="Gateway URL to record with the CID (Pinata's by default for Pinata).",
)
@click.option(
    "--timeout",
    "pin_timeout",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="psa: seconds to wait for the pin request to reach 'pinned'.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON result on stdout.")
@click.pass_context
@handle_errors
def publish_command(
    ctx: click.Context,
    model: str,
    config_file: Path | None,
    models_dir: Path | None,
    target: str,
    endpoint: str | None,
    cid_version: int,
    profile: str | None,
    origins: tuple[str, ...],
    gateway_url: str | None,
    pin_timeout: float,
    as_json: bool,
) -> None:
    """Publish MODEL's verified files to IPFS and record the CID for the next pull.

    The directory CID is computed locally first and printed; a service that reports another
    CID fails the command and nothing is recorded. Credentials come from the environment
    only (never logged): PINATA_JWT, or PINATA_API_KEY + PINATA_SECRET_KEY, for Pinata;
    MODELFETCH_PSA_TOKEN (PINATA_JWT for Pinata's) for a pinning service;
    MODELFETCH_KUBO_TOKEN if the kubo RPC needs one.
    """
    from ..ipfs.publish import publish
    from ..manifest import MANIFEST_NAME

    settings = settings_from(ctx, config_file, models_dir)
    settings.model(model)  # an unknown name fails before anything is hashed
    local_cid: list[str] = []

    def show_local(local: LocalModel) -> None:
        local_cid.append(local.cid)
        if not as_json:
            echo(
                f"local CID  {local.cid}  ({local.spec.name}: {len(local.files)} file(s), "
                f"{human_bytes(local.total_bytes)}, {local.profile.name})"
            )

    try:
        result = run(
            publish(
                settings,
                model,
                to=target,  # type: ignore[arg-type]  # click.Choice checked it
                cid_version=cid_version,
                profile=profile,
                endpoint=endpoint,
                origins=origins,
                gateway_url=gateway_url,
                pin_timeout=pin_timeout,
                on_local=show_local,
            )
        )
    except ModelfetchError as exc:
        if as_json:
            failure = {
                "ok": False,
                "model": model,
                "target": target,
                "local_cid": local_cid[0] if local_cid else None,
                "error_type": type(exc).__name__,
                "message": str(exc),
            }
            echo_json(failure)
        raise
    if as_json:
        echo_json({"ok": True, **result.to_dict()})
        return
    pinned = "pinned" if result.pinned else "not pinned yet"
    echo(f"published  {result.cid}  to {result.target} at {result.endpoint} ({pinned})")
    if result.request_id:
        echo(f"  pin request {result.request_id}")
    for delegate in result.delegates:
        echo(f"  delegate {delegate}")
    manifest_path = settings.models_dir / MANIFEST_NAME
    echo(f"recorded in {manifest_path}: the next pull of {result.model} can use IPFS")
