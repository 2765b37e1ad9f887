#!/usr/bin/env bash
# Set up everything the tests need (venv, Python packages, the IPFS node), then run
# lint, type checks and the whole test suite. Used as-is by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'

# Extra system and npm dependencies of later test suites hook in here.
if [ -x scripts/ipfs-node.sh ]; then
  scripts/ipfs-node.sh install
  export MODELFETCH_REQUIRE_IPFS_NODE="${MODELFETCH_REQUIRE_IPFS_NODE:-1}"
fi

echo "== ruff"
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
