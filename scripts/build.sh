#!/usr/bin/env bash
# Builds the filter as a wasm32-wasip1 module (release: LTO, panic=abort) to
# dist/nhi_gate.wasm, and the nhi-gate CLI to dist/nhi-gate (copied from
# cargo's target folder, wherever CARGO_TARGET_DIR or cargo's config puts it).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  rustup target add wasm32-wasip1
fi
cargo build --locked --release -p nhi-gate-filter --target wasm32-wasip1
cargo build --locked --release -p nhi-gate
target_dir="$(scripts/target-dir.sh)"
mkdir -p dist
cp "$target_dir/wasm32-wasip1/release/nhi_gate.wasm" dist/nhi_gate.wasm
cp "$target_dir/release/nhi-gate" dist/nhi-gate
echo "built dist/nhi_gate.wasm ($(wc -c < dist/nhi_gate.wasm) bytes) and dist/nhi-gate" >&2
