#!/usr/bin/env bash
# Change data capture benchmark, one command: Flotilla's PostgreSQL stream against pg_recvlogical
# (PostgreSQL's own client reading the same changes to /dev/null: the physical limit here).
#   1. apply rate: 1M single-row UPDATE transactions are committed while nothing reads the slots,
#      then pg_recvlogical (on a copy of Flotilla's slot) and Flotilla each drain the same backlog;
#   2. visibility: pgbench commits single-row updates at a steady 5k/s while Flotilla streams;
#      commit-to-visible latency from a probe (a row updated every 20 ms, polled over HTTP until
#      the new value is served) and from Flotilla's own histogram.
# Sets wal_level = logical on the local PostgreSQL when needed (restarts it), builds the release
# binary, makes bench/.venv-cdc, writes bench/results/cdc.{md,json}.
# Usage: bench/cdc/run.sh [--updates N] [--rate N] [--seconds N]
set -euo pipefail
cd "$(dirname "$0")/../.."
./scripts/postgres-logical.sh
. bench/venv.sh
venv=bench/.venv-cdc
ensure_venv $venv bench/cdc/requirements.txt
echo "==> cargo build --release (flotilla)"
cargo build --release --locked -q -p flotilla --bin flotilla
exec $venv/bin/python bench/cdc/bench.py --flotilla target/release/flotilla "$@"
