#!/usr/bin/env bash
# Feature-store benchmark, one command: Flotilla's feature store vs Feast 0.67 (feast serve on Redis,
# get_historical_features on the duckdb offline store) and a DuckDB ASOF JOIN, in one run on this
# machine: in-process embedded reads, HTTP /get-online-features, fraud_xgb enrichment from Redis,
# point-in-time training sets. Installs what it needs (Debian: wrk, redis-server when no Redis answers
# on 127.0.0.1:6379; pinned venv bench/.venv-features), builds the release binaries, then writes
# bench/results/features.{md,json}. Uses Redis dbs 11 (Feast) and 12 (Flotilla) and FLUSHes them.
# Usage: bench/features/run.sh [--smoke] [--only online,http,enrich,training]
#   (--smoke, or --only: short/partial run; tables in bench/.work-features/features-smoke.{md,json})
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '==> %s\n' "$*"; }

need=()
command -v wrk >/dev/null || need+=(wrk)
if ! (command -v redis-cli >/dev/null && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1); then
  command -v redis-server >/dev/null || need+=(redis-server)
fi
if [ ${#need[@]} -gt 0 ]; then
  log "installing Debian packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The venv is reinstalled only when its pinned requirements change.
. bench/venv.sh
venv=bench/.venv-features
ensure_venv $venv bench/features/requirements.txt

log "cargo build --release (flotilla, bench_online)"
cargo build --release --locked -q -p flotilla --bin flotilla -p flotilla-features --example bench_online

exec $venv/bin/python bench/features/bench.py "$@" \
  --flotilla target/release/flotilla --online target/release/examples/bench_online
