#!/usr/bin/env bash
# A real js-ipfs node (npm ipfs@0.66.1, kubo-compatible RPC + path gateway) for modelfetch's tests.
#
#   scripts/ipfs-node.sh install   npm ci into the cache dir (skipped when already there);
#                                  prints the jsipfs path
#   scripts/ipfs-node.sh path      prints the jsipfs path if installed, else exits 1
#   scripts/ipfs-node.sh dir       prints the install dir (installed or not)
#   scripts/ipfs-node.sh jsipfs ARGS...
#                                  runs jsipfs with the Node 20 polyfill preloaded
#                                  (set IPFS_PATH yourself)
#
# Install dir: $MODELFETCH_IPFS_NODE_DIR, else
#   ${XDG_CACHE_HOME:-$HOME/.cache}/modelfetch-ipfs-node/<first 16 hex of sha256(package-lock.json)>
# Optional dependencies are omitted (package.json also overrides the WebRTC helpers, whose installs
# would fetch binaries and GitHub tarballs from outside the npm registry): the node runs offline.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$here/../tests/ipfs_node"
src="$(cd "$src" && pwd)"
lock="$src/package-lock.json"

lock_hash() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$lock" | cut -c1-16
    else
        shasum -a 256 "$lock" | cut -c1-16
    fi
}

install_dir() {
    if [[ -n "${MODELFETCH_IPFS_NODE_DIR:-}" ]]; then
        printf '%s\n' "$MODELFETCH_IPFS_NODE_DIR"
    else
        printf '%s/modelfetch-ipfs-node/%s\n' "${XDG_CACHE_HOME:-$HOME/.cache}" "$(lock_hash)"
    fi
}

jsipfs_path() {
    printf '%s/node_modules/.bin/jsipfs\n' "$(install_dir)"
}

is_installed() {
    local dir
    dir="$(install_dir)"
    [[ -f "$dir/.installed" && -x "$(jsipfs_path)" ]]
}

cmd_install() {
    local dir start
    dir="$(install_dir)"
    if is_installed; then
        echo "ipfs-node: already installed in $dir" >&2
        jsipfs_path
        return 0
    fi
    command -v npm >/dev/null 2>&1 || { echo "ipfs-node: npm not found (install Node.js >= 18)" >&2; exit 1; }
    mkdir -p "$(dirname "$dir")"
    tmp="$(mktemp -d "$dir.tmp.XXXXXX")"
    trap 'rm -rf "${tmp:-}"' EXIT
    cp "$src/package.json" "$lock" "$tmp/"
    start=$SECONDS
    echo "ipfs-node: npm ci in $tmp (takes a few minutes)..." >&2
    (cd "$tmp" && npm ci --omit=optional --no-audit --no-fund --loglevel=error >&2)
    touch "$tmp/.installed"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    trap - EXIT
    echo "ipfs-node: installed in $dir in $((SECONDS - start)) s" >&2
    jsipfs_path
}

cmd_path() {
    if is_installed; then
        jsipfs_path
    else
        echo "ipfs-node: not installed (run: $0 install)" >&2
        exit 1
    fi
}

cmd_jsipfs() {
    is_installed || { echo "ipfs-node: not installed (run: $0 install)" >&2; exit 1; }
    NODE_OPTIONS="--require $src/polyfill.cjs ${NODE_OPTIONS:-}" exec "$(jsipfs_path)" "$@"
}

case "${1:-}" in
    install) cmd_install ;;
    path) cmd_path ;;
    dir) install_dir ;;
    jsipfs) shift; cmd_jsipfs "$@" ;;
    *) echo "usage: $0 {install|path|dir|jsipfs ARGS...}" >&2; exit 2 ;;
esac
