"""What the `modelfetch` command imports to start: the light commands load no network stack.

`--help`, `status` and `verify` run before many jobs; aiohttp alone costs more to import
than they take to run (bench/startup.py times it). Each case runs the command in a fresh
interpreter and reads `sys.modules` as it exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Heavy packages, and the parts of modelfetch that import them.
HEAVY = ("aiohttp", "rich", "prometheus_client", "multiformats", "modelfetch.server")
ENGINE = ("modelfetch.engine", "modelfetch.sources", "modelfetch.transfer")

# Runs the command as `python -m modelfetch` does, then writes what was imported.
PROBE = """
import json, runpy, sys
report, sys.argv = sys.argv[1], ["modelfetch", *sys.argv[2:]]
code = 0
try:
    runpy.run_module("modelfetch", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
with open(report, "w") as f:
    json.dump({"exit": code, "modules": sorted(sys.modules)}, f)
"""

MODEL = "startup-model"
FILES = ("config.json", "weights/part-1.bin", "weights/part-2.bin")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A models dir with one catalog model in place, its files recorded in the manifest."""
    models = tmp_path / "models"
    model_dir = models / "org" / MODEL
    for i, name in enumerate(FILES):
        (model_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (model_dir / name).write_bytes(bytes([i]) * (1000 + i))
    config = tmp_path / "config.toml"
    config.write_text(f'[models.{MODEL}]\ndir = "org/{MODEL}"\nfiles = {json.dumps(FILES)}\n')
    # No terminal, and nothing that makes a pipe count as one (rich's rules, ours too).
    skip = ("MODELFETCH_", "HF_", "FORCE_COLOR", "TTY_COMPATIBLE")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    environ.update(MODELFETCH_HOME=str(models), MODELFETCH_CONFIG=str(config))
    generate = ["manifest", "generate", str(model_dir), "--name", MODEL]
    assert imports(tmp_path, environ, *generate)[0] == 0
    return environ


def imports(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[int, set[str]]:
    """Exit code of `modelfetch ARGS` and every module it imported."""
    report = tmp_path / "imports.json"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(report), *args],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert report.is_file(), proc.stderr
    doc = json.loads(report.read_text())
    return doc["exit"], set(doc["modules"])


def loaded(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    """The modules that are one of `packages` or inside one."""
    return sorted(m for m in modules if any(m == p or m.startswith(f"{p}.") for p in packages))


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        ["status"],
        ["status", "--json"],
        ["verify", MODEL],
        ["verify", MODEL, "--deep", "--json"],
        ["pull", "--help"],
        ["metrics", "--help"],
    ],
)
def test_light_commands_import_no_network_stack(
    tmp_path: Path, env: dict[str, str], args: list[str]
) -> None:
    code, modules = imports(tmp_path, env, *args)
    assert code == 0
    assert {"click", "modelfetch.cli"} <= modules  # the probe saw the command run
    assert loaded(modules, HEAVY + ENGINE) == []


def test_all_cached_pull_off_a_terminal_imports_no_rich(
    tmp_path: Path, env: dict[str, str]
) -> None:
    code, modules = imports(tmp_path, env, "pull", MODEL)
    assert code == 0
    assert "modelfetch.engine" in modules
    assert loaded(modules, ("rich", "modelfetch.progress")) == []
