"""Benchmark: one large file through `serve --mirror` with huggingface_hub, cold and warm.

Run: .venv/bin/python bench/mirror.py [--size 512] [--runs 3]

A loopback hub serves one LFS file of `--size` MiB. Times `hf_hub_download` of it (fresh
client cache each time): straight from the hub; through a fresh mirror (a pull-through:
the mirror fetches and verifies it, then serves it); through the mirror again (it holds
the file: hashed once, then served from its stamp). Prints the median of `--runs` of each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import huggingface_hub as hf
from aiohttp import web

from modelfetch.config import HuggingFaceSettings, load_settings
from modelfetch.server import create_app
from modelfetch.testing import HubServer

REPO = "bench/big"


def start_mirror(root: Path, hub_url: str) -> tuple[str, Callable[[], None]]:
    """A mirror on its own event loop in a thread; (base URL, stop)."""
    settings = load_settings(models_dir=root / "models", env={"HF_HOME": str(root / "hf")})
    hf_settings = HuggingFaceSettings(
        endpoint=hub_url, cache_dir=root / "hf" / "hub", token_path=root / "hf" / "token"
    )
    settings = replace(settings, huggingface=hf_settings)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, object] = {}

    async def run() -> None:
        app = create_app(settings, mirror=True)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
        box["stop"] = asyncio.Event()
        ready.set()
        await box["stop"].wait()  # type: ignore[attr-defined]
        await runner.cleanup()

    thread = threading.Thread(target=lambda: loop.run_until_complete(run()), daemon=True)
    thread.start()
    ready.wait(30)

    def stop() -> None:
        loop.call_soon_threadsafe(box["stop"].set)  # type: ignore[attr-defined]
        thread.join(30)

    return str(box["url"]), stop


def timed(endpoint: str, cache: Path) -> float:
    started = time.perf_counter()
    hf.hf_hub_download(REPO, "big.bin", cache_dir=cache, endpoint=endpoint)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="MiB")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size << 20
    with tempfile.TemporaryDirectory() as tmp, HubServer() as hub:
        root = Path(tmp)
        source = root / "big.bin"
        with source.open("wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(args.size):
                f.write(block)
        hub.add_file_from_path(REPO, "big.bin", source)
        results: dict[str, list[float]] = {"hub": [], "mirror, cold": [], "mirror, warm": []}
        for run in range(args.runs):
            results["hub"].append(timed(hub.url, root / f"c-hub-{run}"))
            url, stop = start_mirror(root / f"mirror-{run}", hub.url)
            try:
                results["mirror, cold"].append(timed(url, root / f"c-cold-{run}"))
                results["mirror, warm"].append(timed(url, root / f"c-warm-{run}"))
            finally:
                stop()
        print(f"hf_hub_download of {args.size} MiB, median of {args.runs}:")
        for name, times in results.items():
            t = statistics.median(times)
            print(f"  {name:13s} {t:6.2f} s  {size / t / 1e6:7.1f} MB/s")


if __name__ == "__main__":
    main()
