#!/usr/bin/env bash
# The soak under overload and faults (bench/soak/soak.py): a release server with private Redis and
# NATS servers and a private PostgreSQL (CDC) that it restarts, for SECONDS (default 600). Writes bench/results/soak.md.
#   bench/soak/run.sh [SECONDS] [--bin PATH]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-600}
shift || true
bin=target/release/flotilla
if [ "${1:-}" = "--bin" ]; then bin=$2; else cargo build --release --locked --bin flotilla --bin flotilla-load; fi
exec .venv/bin/python bench/soak/soak.py --duration "$seconds" --bin "$bin"
