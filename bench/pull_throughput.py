"""Benchmark: one large file from a loopback hub: modelfetch vs curl vs hf_hub_download.

Run: .venv/bin/python bench/pull_throughput.py [--size-mib 1024] [--runs 3]

Each client downloads the same file from the same loopback Hugging Face-compatible hub
(LFS file: HEAD, 302 to the CDN path, GET). modelfetch verifies the SHA-256 and fsyncs;
curl only writes; hf_hub_download checks the size. Prints the median wall time of each,
the ratios, and modelfetch's peak RSS. `curl+verify` is curl followed by `sha256sum` and
`sync` of the file: what modelfetch guarantees, done by separate tools.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from _common import make_file, timed

from modelfetch.testing import HubServer

REPO = "bench/big-model"
FILE = "model.bin"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib << 20
    work = Path(tempfile.mkdtemp(prefix="modelfetch-bench-"))
    try:
        source = work / "source.bin"
        print(f"generating {args.size_mib} MiB test file ...", flush=True)
        sha256 = make_file(source, size)
        with HubServer() as hub:
            hub.add_file_from_path(REPO, FILE, source, sha256=sha256, lfs=True)
            url = hub.resolve_url(REPO, FILE)
            results = run_all(work, hub.url, url, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results, size)


def run_all(work: Path, hub_url: str, url: str, runs: int) -> dict[str, list[tuple[float, int]]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFETCH", "HF_"))}
    env.update(HF_ENDPOINT=hub_url, HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    config = work / "config.toml"
    config.write_text(
        'order = ["cache", "huggingface"]\n'
        f'[models.big]\ndir = "big"\nfiles = ["{FILE}"]\nhuggingface = {{ repo = "{REPO}" }}\n'
    )
    py = sys.executable
    hf_code = (
        "import sys, huggingface_hub as h; "
        f"h.hf_hub_download('{REPO}', '{FILE}', cache_dir=sys.argv[1])"
    )
    results: dict[str, list[tuple[float, int]]] = {
        "curl": [],
        "curl+verify": [],
        "modelfetch": [],
        "hf_hub": [],
    }
    for i in range(runs):
        for name in results:
            dest = work / f"{name}-{i}"
            dest.mkdir()
            target = str(dest / FILE)
            if name == "curl":
                cmd = ["curl", "-sSfL", "-o", target, url]
            elif name == "curl+verify":  # the same guarantees, from separate tools
                script = (
                    f'curl -sSfL -o "{target}" "{url}" && sha256sum "{target}" && sync "{target}"'
                )
                cmd = ["sh", "-c", script]
            elif name == "modelfetch":
                cmd = [
                    py,
                    "-m",
                    "modelfetch",
                    "pull",
                    "big",
                    "--config",
                    str(config),
                    "--dir",
                    str(dest),
                ]
            else:
                cmd = [py, "-c", hf_code, str(dest)]
            results[name].append(timed(cmd, env))
            print(f"run {i + 1} {name:<12} {results[name][-1][0]:6.2f} s", flush=True)
            shutil.rmtree(dest)
    return results


def report(results: dict[str, list[tuple[float, int]]], size: int) -> None:
    median = {name: statistics.median(t for t, _ in runs) for name, runs in results.items()}
    rss_mib = max(r for _, r in results["modelfetch"]) / 1024
    print()
    print(f"{'client':<14}{'median s':>10}{'MiB/s':>10}")
    for name, seconds in median.items():
        print(f"{name:<14}{seconds:>10.2f}{size / seconds / (1 << 20):>10.0f}")
    print()
    print(
        f"modelfetch / curl            = {median['modelfetch'] / median['curl']:.2f}x time "
        "(aim <= 1.2x, with SHA-256 verification and fsync)"
    )
    print(
        f"modelfetch / curl+verify     = {median['modelfetch'] / median['curl+verify']:.2f}x time "
        "(curl, then sha256sum and sync: the same work)"
    )
    print(
        f"modelfetch / hf_hub_download = {median['modelfetch'] / median['hf_hub']:.2f}x time "
        "(aim < 1.0x)"
    )
    print(f"modelfetch peak RSS          = {rss_mib:.0f} MiB (aim < 100 MiB)")


if __name__ == "__main__":
    main()
