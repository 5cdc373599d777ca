#!/usr/bin/env bash
# Tree engine vs XGBoost inplace_predict, LightGBM predict and lleaves, in one run on
# this machine: same 500-tree depth-8 models on 50 features, same rows, single thread,
# batch 1 and 1024, all timed in-process. Writes bench/results/trees-<host>.{md,json}.
# Usage: bench/trees/run.sh [--seconds S]
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=bench/.venv-trees
stamp=$venv/.requirements.sha
want=$(sha256sum bench/trees/requirements.txt | cut -d' ' -f1)
if [ ! -x $venv/bin/python ] || [ "$(cat $stamp 2>/dev/null)" != "$want" ]; then
  echo "==> creating $venv (xgboost, lightgbm, lleaves)"
  python3 -m venv $venv
  $venv/bin/pip install -q --upgrade pip
  $venv/bin/pip install -q -r bench/trees/requirements.txt
  echo "$want" > $stamp
fi
echo "==> cargo build --release (tree engine bench harness)"
cargo build --release --locked -q -p flotilla-trees --example bench_trees
exec $venv/bin/python bench/trees/bench.py --harness target/release/examples/bench_trees "$@"
