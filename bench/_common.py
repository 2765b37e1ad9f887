"""What the benchmarks share: test files, timing child processes, medians and ratios."""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


def make_file(path: Path, size: int) -> str:
    """Write `size` pseudo-random (incompressible) bytes and return their SHA-256."""
    digest = hashlib.sha256()
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        written = 0
        counter = 0
        while written < size:
            chunk = hashlib.sha256(counter.to_bytes(8, "little")).digest() + block[32:]
            chunk = chunk[: size - written]
            f.write(chunk)
            digest.update(chunk)
            written += len(chunk)
            counter += 1
    return digest.hexdigest()


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without modelfetch or Hugging Face settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFETCH", "HF_"))}
    env.update(HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", **extra)
    return env


def modelfetch_argv() -> list[str]:
    """The installed `modelfetch` script beside this interpreter, as a user runs it."""
    script = Path(sys.executable).parent / "modelfetch"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "modelfetch"]


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one child process; fails loudly on error."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed: {stderr[-2000:]}")
    return elapsed, usage.ru_maxrss


@dataclass
class Runs:
    """Paired runs: every client once per round, rounds interleaved, medians at the end."""

    times: dict[str, list[float]] = field(default_factory=dict)
    rss_kib: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, seconds: float, rss: int) -> None:
        self.times.setdefault(name, []).append(seconds)
        self.rss_kib[name] = max(self.rss_kib.get(name, 0), rss)

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def table(self, size: int | None = None) -> None:
        print(
            f"\n{'client':<28}{'median s':>10}{'min s':>9}"
            + ("{:>10}".format("MiB/s") if size else "")
        )
        for name, values in self.times.items():
            line = f"{name:<28}{statistics.median(values):>10.2f}{min(values):>9.2f}"
            if size:
                line += f"{size / statistics.median(values) / (1 << 20):>10.1f}"
            print(line)


def rounds(count: int, clients: dict[str, Callable[[], tuple[float, int]]], runs: Runs) -> None:
    """Run every client once per round, `count` rounds, printing each time."""
    for i in range(count):
        for name, client in clients.items():
            seconds, rss = client()
            runs.add(name, seconds, rss)
            print(f"  round {i + 1} {name:<28} {seconds:7.2f} s", flush=True)
