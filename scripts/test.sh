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

# System packages the tests drive: Node.js/npm (a real IPFS node), curl (benchmarks),
# Debian's Chromium (the dashboard tests, through Playwright; its own browser download
# is not used).
need_apt=()
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  else
    echo "missing system packages: ${need_apt[*]} (install them, e.g. with sudo apt-get)" >&2
  fi
fi

# A real js-ipfs node for the IPFS tests, from the committed lock file (cached).
scripts/ipfs-node.sh install
export MODELFETCH_REQUIRE_IPFS_NODE="${MODELFETCH_REQUIRE_IPFS_NODE:-1}"

# @helia/verified-fetch, the independent judge of `serve --mirror`, from its lock file
# (tests/test_gateway_helia.py); reinstalled only when the lock changes.
vf=tests/verified_fetch
if ! cmp -s "$vf/package-lock.json" "$vf/node_modules/.modelfetch-installed" 2>/dev/null; then
  (cd "$vf" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$vf/package-lock.json" "$vf/node_modules/.modelfetch-installed"
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
