#!/usr/bin/env bash
# Serving benchmark, one command: Flotilla vs MLServer 1.7 and Ray Serve (XGBoost) and Triton 2.51 (Python
# backend + onnxruntime MLP), the raw engine in-process, dynamic batching, overload (429s) and
# memory across reloads, in one run on this machine. Installs what it needs (Debian: wrk,
# libb64-0d; pinned venvs bench/.venv-serving-{mlserver,triton,client,ray}), builds the release
# binary, then writes bench/results/serving.{md,json}.
# Usage: bench/serving/run.sh [--smoke] [--only SECTIONS]   (--smoke: seconds per section; --only: e.g.
# raw,batching,memory; either writes its table to bench/.work-serving/, not bench/results/)
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '==> %s\n' "$*"; }

need=()
command -v wrk >/dev/null || need+=(wrk)
[ -e /usr/lib/x86_64-linux-gnu/libb64.so.0d ] || need+=(libb64-0d)
if [ ${#need[@]} -gt 0 ]; then
  log "installing Debian packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# One venv per peer, reinstalled only when its pinned requirements change.
. bench/venv.sh
for name in mlserver triton client ray; do
  ensure_venv bench/.venv-serving-$name bench/serving/requirements-$name.txt
done

log "cargo build --release (flotilla, bench_raw, flotilla-load, flotilla-floor)"
cargo build --release --locked -q -p flotilla --bin flotilla --example bench_raw
cargo build --release --locked -q -p flotilla-bench --bin flotilla-load --bin flotilla-floor

mkdir -p bench/.work-serving
bench/.venv-serving-client/bin/python bench/serving/make_models.py bench/.work-serving 4 2
exec bench/.venv-serving-client/bin/python bench/serving/bench.py "$@" \
  --flotilla target/release/flotilla --raw target/release/examples/bench_raw --load target/release/flotilla-load \
  --floor target/release/flotilla-floor
