"""Benchmark: what loading the origin scores costs a `Fetcher`, over a full records file.

Run: .venv/bin/python bench/scores_load.py [--rows 100000] [--gateways 6] [--runs 5]

Writes `--rows` attempts of `--gateways` origins (one every 0.8 s, so all inside the 24 h
window) to a fresh records file, then times `Scores.load` (the one query and the replay)
`--runs` times and prints the median and the fastest.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from modelfetch.events import AttemptEvent
from modelfetch.records import Records
from modelfetch.scores import Scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--gateways", type=int, default=6)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(1)
    gateways = [f"https://gw{i}.example" for i in range(args.gateways)]
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp, Records(Path(tmp) / "records.sqlite3") as records:
        for i in range(args.rows):
            ok = rng.random() < 0.7
            records.listener(
                AttemptEvent(
                    "m",
                    f"f{i}",
                    "ipfs",
                    "success" if ok else "error",
                    gateway=rng.choice(gateways),
                    latency_ms=50.0,
                    bytes_downloaded=100_000 if ok else 0,
                    ttfb_ms=3.0 if ok else None,
                    timestamp=now - timedelta(seconds=i * 0.8),
                )
            )
        records.flush()
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            scores = Scores.load(records)
            times.append(time.perf_counter() - started)
    print(
        f"Scores.load over {args.rows:,} attempts of {args.gateways} gateways "
        f"({len(scores.snapshot())} scored): median {statistics.median(times) * 1000:.1f} ms, "
        f"fastest {min(times) * 1000:.1f} ms ({args.runs} runs)"
    )


if __name__ == "__main__":
    main()
