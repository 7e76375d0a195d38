#!/usr/bin/env bash
# Benchmark (not a test): masking throughput inside Envoy vs passthrough on
# 1 KiB / 64 KiB / 1 MiB JSON, clean and PII-dense; then the native core's
# MB/s (cargo bench). Usage: scripts/bench-mask.sh [--rounds N] [--seconds S]
# (--instructions N: instructions per request under callgrind instead; needs valgrind)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if ! command -v wrk >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq wrk) >&2
fi
instructions=0
case " $* " in
  *" --instructions"*)
    instructions=1
    if ! command -v valgrind >/dev/null 2>&1; then
      (apt-get update -qq && apt-get install -y -qq valgrind) >&2
    fi ;;
esac
scripts/setup.sh
scripts/build.sh
# the no-op Wasm filter of the latency table (filter/examples/noop_filter.rs)
cargo build --locked --release -p nhi-gate-filter --example noop_filter --target wasm32-wasip1
target_dir="$(scripts/target-dir.sh)"
export NOOP_WASM="$target_dir/wasm32-wasip1/release/examples/noop_filter.wasm"
# the interleaved latency client of the latency table (cli/examples/latency_ab.rs)
cargo build --locked --release -p nhi-gate --example latency_ab
export LATENCY_AB="$target_dir/release/examples/latency_ab"
export ENVOY_BIN="${ENVOY_BIN:-$root/.tools/envoy-1.40.0/envoy/_bin/envoy}"
"$root/.tools/venv/bin/python" "$root/scripts/bench_mask.py" "$@"
if [ "$instructions" = 0 ]; then
  echo; echo "native core (release):"
  cargo bench --locked -p nhi-gate-filter --bench mask_throughput
fi
