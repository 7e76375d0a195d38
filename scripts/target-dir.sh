#!/usr/bin/env bash
# Prints cargo's target folder for this workspace (CARGO_TARGET_DIR, cargo's
# config, or ./target), as `cargo metadata` reports it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --format-version 1 --no-deps --locked |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
