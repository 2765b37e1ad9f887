"""Benchmark: start-up time of the `modelfetch` command next to `python -c pass` and `hf`.

Run: .venv/bin/python bench/startup.py [--runs 15]

Each case is one child process, run once to warm the page cache and then `--runs` times;
the table shows the median and the fastest wall time, and the median's ratio to
`python -c pass` (the interpreter's own start-up, the floor for any Python command).
The warm pull is a catalog model whose 15 files are all in place and verified, so it is
all cache hits and needs no network: what a script that runs `modelfetch pull` before
every job pays. `hf --help` is huggingface_hub's command, for comparison.

The repo cases pull a 15-file Hugging Face repo id that is already in an HF cache, from the
loopback hub (`modelfetch.testing.HubServer`, running in this process): by branch (one
revision request), by commit and offline (no request); `hf download` of the same repo into
the same cache is timed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

WARM_MODEL = "bench-warm"
WARM_FILES = 15


@dataclass(frozen=True)
class Case:
    """One command to time, with its environment."""

    label: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any modelfetch or Hugging Face setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFETCH_", "HF_"))}
    env.update(extra)
    return env


def modelfetch_argv() -> list[str]:
    """The installed `modelfetch` script beside this interpreter, as a user runs it."""
    script = Path(sys.executable).parent / "modelfetch"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "modelfetch"]


def run_checked(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return proc


def warm_pull_case(work: Path) -> Case:
    """`modelfetch pull` of a catalog model whose files are all cached and verified.

    The model's files are put in place in a fresh models dir, recorded with `modelfetch
    manifest generate` and declared in a config file's `[models.NAME]` table; one pull
    stamps them verified, and the timed pulls are then all cache hits. To time a Hugging
    Face repo id instead, return a Case whose argv pulls `org/name` with `--cache-dir` set
    to an HF cache prepared here, and check the same way that nothing was downloaded.
    """
    models = work / "models"
    model_dir = models / "bench" / "warm"
    names = [f"part-{i:02d}.bin" for i in range(WARM_FILES)]
    for i, name in enumerate(names):
        (model_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (model_dir / name).write_bytes(bytes([i]) * (4096 + i))
    config = work / "config.toml"
    config.write_text(
        f'[models.{WARM_MODEL}]\ndir = "bench/warm"\nfiles = {json.dumps(names)}\n',
        encoding="utf-8",
    )
    env = clean_env(MODELFETCH_HOME=str(models), MODELFETCH_CONFIG=str(config))
    cli = modelfetch_argv()
    run_checked([*cli, "manifest", "generate", str(model_dir), "--name", WARM_MODEL], env)
    doc = json.loads(run_checked([*cli, "pull", WARM_MODEL, "--json"], env).stdout)
    files = doc["models"][0]["files"]
    if len(files) != WARM_FILES or any(
        f["source"] != "cache" or f["bytes_downloaded"] for f in files
    ):
        raise SystemExit(f"the warm pull is not all cache hits: {json.dumps(files)}")
    return Case(f"modelfetch pull (warm, {WARM_FILES} files)", [*cli, "pull", WARM_MODEL], env)


WARM_REPO = "bench/warm-repo"


def repo_cases(work: Path, hub_url: str, commit: str) -> list[Case]:
    """`pull org/name` of a repo whose 15 files are in the HF cache, three ways, and `hf
    download` of it; the first pull fills the cache and is checked to be complete."""
    cache = work / "hf-hub"
    env = clean_env(
        MODELFETCH_HOME=str(work / "repo-models"),
        HF_ENDPOINT=hub_url,
        HF_HUB_CACHE=str(cache),
        HF_HUB_DISABLE_TELEMETRY="1",
        NO_PROXY="127.0.0.1,localhost",
    )
    cli = modelfetch_argv()
    doc = json.loads(run_checked([*cli, "pull", WARM_REPO, "--json"], env).stdout)
    if len(doc["models"][0]["files"]) != WARM_FILES or not doc["ok"]:
        raise SystemExit(f"the repo pull failed: {json.dumps(doc)[:2000]}")
    label = f"modelfetch pull {WARM_REPO} (warm, {WARM_FILES} files"
    out = [
        Case(f"{label}, 1 request)", [*cli, "pull", WARM_REPO], env),
        Case(f"{label}, --revision sha)", [*cli, "pull", WARM_REPO, "--revision", commit], env),
        Case(f"{label}, --offline)", [*cli, "pull", WARM_REPO, "--offline"], env),
    ]
    hf = Path(sys.executable).parent / "hf"
    if hf.is_file():
        out.append(Case(f"hf download {WARM_REPO} (warm)", [str(hf), "download", WARM_REPO], env))
    return out


def cases(work: Path, hub_url: str | None = None, commit: str = "") -> tuple[list[Case], list[str]]:
    """Every case to time, and notes on the ones skipped."""
    cli = modelfetch_argv()
    warm = warm_pull_case(work)
    timed = [
        Case("python -c pass", [sys.executable, "-c", "pass"], clean_env()),
        Case("modelfetch --help", [*cli, "--help"], warm.env),
        Case("modelfetch status", [*cli, "status"], warm.env),
        Case("modelfetch status --json", [*cli, "status", "--json"], warm.env),
        Case(f"modelfetch verify ({WARM_FILES} files)", [*cli, "verify", WARM_MODEL], warm.env),
        warm,
    ]
    notes = []
    if hub_url is not None:
        timed.extend(repo_cases(work, hub_url, commit))
    hf = Path(sys.executable).parent / "hf"
    if hf.is_file():
        timed.append(Case("hf --help", [str(hf), "--help"], clean_env()))
    else:
        notes.append(f"hf --help skipped: no {hf} (pip install huggingface_hub)")
    return timed, notes


def measure(case: Case, runs: int) -> list[float]:
    """Wall seconds of `runs` runs of `case`, after one warm-up run."""
    run_checked(case.argv, case.env)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run_checked(case.argv, case.env)
        times.append(time.perf_counter() - started)
    return times


def report(results: dict[str, list[float]], runs: int) -> None:
    base = statistics.median(results["python -c pass"])
    width = max(len(label) for label in results)
    print(f"median and fastest of {runs} runs (after one warm-up run), wall time")
    print(f"{'command':<{width}}  {'median':>9}  {'fastest':>9}  {'x python -c pass':>16}")
    for label, times in results.items():
        median = statistics.median(times)
        print(
            f"{label:<{width}}  {median * 1000:>6.0f} ms  {min(times) * 1000:>6.0f} ms  "
            f"{median / base:>15.1f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per case")
    args = parser.parse_args()
    from modelfetch.testing import HubServer

    work = Path(tempfile.mkdtemp(prefix="modelfetch-startup-"))
    try:
        with HubServer() as hub:
            for i in range(WARM_FILES):
                hub.add_file(WARM_REPO, f"part-{i:02d}.bin", bytes([i]) * (4096 + i))
            timed, notes = cases(work, hub.url, hub.commit(WARM_REPO))
            results = {case.label: measure(case, args.runs) for case in timed}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results, args.runs)
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
