#!/usr/bin/env bash
# Benchmark (not a test): Envoy on one worker in front of one fast upstream,
# three ways — no filter, Envoy's native jwt_authn + rbac doing the same
# checks, and nhi-gate — driven by wrk at fixed concurrency, interleaved over
# several rounds, RS256 tokens. Prints req/s, p50, p99 per setup and the
# ratios, plus the cold path (nhi-gate with its token cache off).
# Usage: scripts/bench.sh [--rounds N] [--seconds S] [--connections C]
# (--instructions N: instructions per request under callgrind instead; valgrind is installed)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if ! command -v wrk >/dev/null 2>&1; then
  echo "[bench] installing wrk (Debian package)" >&2
  (apt-get update -qq && apt-get install -y -qq wrk) >&2
fi
case " $* " in
  *" --instructions"*)
    if ! command -v valgrind >/dev/null 2>&1; then
      echo "[bench] installing valgrind (Debian package)" >&2
      (apt-get update -qq && apt-get install -y -qq valgrind) >&2
    fi ;;
esac
scripts/setup.sh
scripts/build.sh
if [ -z "${ENVOY_BIN:-}" ]; then
  ENVOY_BIN="$root/.tools/envoy-1.40.0/envoy/_bin/envoy"
fi
export ENVOY_BIN
exec "$root/.tools/venv/bin/python" "$root/scripts/bench.py" "$@"
