#!/usr/bin/env bash
# Rebuilds the 64-bit examples: src/*.mo -> <name>.wasm + <name>.did, with the
# Motoko compiler from npm package motoko@4.10.0 (64-bit Wasm: memory64 + table64,
# enhanced orthogonal persistence; library: mo:core v2.5.0 bundled in the package).
# Needs only node + npm. Usage: ./build.sh [output-dir]   (default: this directory)
set -euo pipefail
MOTOKO_VERSION=4.10.0
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund "motoko@$MOTOKO_VERSION" >/dev/null)
set +e
NODE_PATH="$work/node_modules" node "$here/build.js" "$out" "$MOTOKO_VERSION" 2>&1 | grep -a -E '^(ok|FAIL)|^  '
status=${PIPESTATUS[0]}
exit "$status"
