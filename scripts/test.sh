#!/usr/bin/env bash
# Runs every test: native unit tests, clippy (panic-free lints on the module),
# the core unit tests compiled to wasm32-wasip1 and run in wasmtime, the CLI
# tests, and the end-to-end tests inside real Envoy (1.40 and 1.36 unless
# ENVOY_BIN names one binary).
#
# Usage: scripts/test.sh [pytest args]            everything
#        scripts/test.sh --e2e-only [paths] [args]  setup, build, then only the
#                                                   end-to-end tests (default tests/)
set -euo pipefail
e2e_only=false
if [ "${1:-}" = "--e2e-only" ]; then
  e2e_only=true
  shift
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup.sh
scripts/build.sh

if ! $e2e_only; then
  echo "== native unit tests" >&2
  cargo test --locked --workspace

  echo "== clippy (module: no unwrap/expect/panic/indexing)" >&2
  cargo clippy --locked -p nhi-gate-filter --target wasm32-wasip1 --lib -- -D warnings
  cargo clippy --locked -p nhi-gate-filter --lib -- -D warnings

  echo "== core unit tests as wasm32-wasip1 (wasmtime)" >&2
  CARGO_TARGET_WASM32_WASIP1_RUNNER="$root/.tools/wasmtime run --dir=. -W unknown-imports-trap=y" \
    cargo test --locked --profile wasm-test -p nhi-gate-filter --target wasm32-wasip1
fi

echo "== end-to-end tests in Envoy" >&2
if [ -z "${ENVOY_BIN:-}" ]; then
  ENVOY_BINS="$(ls "$root"/.tools/envoy-*/envoy/_bin/envoy | tr '\n' ':')"
  export ENVOY_BINS
fi
export NHI_GATE_CLI="$root/dist/nhi-gate"
# --e2e-only with test paths first (tests/test_masking.py): those instead of tests/
if $e2e_only && [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  "$root/.tools/venv/bin/pytest" -q "$@"
else
  "$root/.tools/venv/bin/pytest" -q "$root/tests" "$@"
fi
