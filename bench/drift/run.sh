#!/usr/bin/env bash
# Drift monitoring cost, one command: fraud_xgb served with monitoring off and on under the same
# wrk load, interleaved; writes bench/results/drift.{md,json}. Installs wrk (Debian) when absent and
# builds the release binary. Usage: bench/drift/run.sh [--smoke] [--seconds N] [--rounds N] [--what payload]
# (--what payload: the payload log's cost instead, every request logged; bench/results/payload.{md,json})
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v wrk >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
echo "==> cargo build --release (flotilla)"
cargo build --release --locked -q -p flotilla --bin flotilla
exec python3 bench/drift/bench.py --flotilla target/release/flotilla "$@"
