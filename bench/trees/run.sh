#!/usr/bin/env bash
# Tree engine vs XGBoost inplace_predict, LightGBM predict and lleaves, in one run on this
# machine, over a matrix of models (XGBoost hist/exact, LightGBM leaf-wise; depth 4-12; 100
# and 1,000 trees; dense, 5% NaN and categorical data): Flotilla over HTTP and in-process,
# the peers in-process with as many threads. Writes bench/results/trees-<host>.{md,json}.
# Usage: bench/trees/run.sh [--seconds S] [--models REGEX]
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/venv.sh
ensure_venv bench/.venv-trees bench/trees/requirements.txt
echo "==> cargo build --release (flotilla, tree engine bench harness)"
cargo build --release --locked -q -p flotilla --bin flotilla -p flotilla-trees --example bench_trees
exec bench/.venv-trees/bin/python bench/trees/bench.py --harness target/release/examples/bench_trees \
  --flotilla target/release/flotilla "$@"
