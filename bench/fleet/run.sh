#!/usr/bin/env bash
# Fleet benchmark, one command: a router and six workers (release build) on this machine, the AWS
# g4dn spot trace replayed onto the opportunistic workers with and without preemption notices,
# capacity-class policies, router overhead, slowed workers (cgroup CPU quotas, needs root) and
# 10x overload. Installs its client venv (bench/.venv-fleet), builds the release binary, then
# writes bench/results/fleet.{md,json}. About 40 minutes.
# Usage: bench/fleet/run.sh [--smoke] [--compress N] [--only SECTIONS]
#   (--smoke: a few minutes, table in bench/.work-fleet/; --only overhead,slowed: rerun sections into the results)
#        bench/fleet/run.sh --control [--smoke]
#   (the control plane instead: digest sync of 100 models to 6 workers, a rollout under load, a
#    faulty canary, an A/B split; ~5 minutes; bench/results/fleet-control.{md,json})
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ ! -e /usr/lib/x86_64-linux-gnu/libb64.so.0d ]; then
  printf '==> installing Debian package libb64-0d (perf_analyzer)\n'
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends libb64-0d >/dev/null
fi

log() { printf '==> %s\n' "$*"; }

. bench/venv.sh
venv=bench/.venv-fleet
ensure_venv $venv bench/fleet/requirements.txt

log "cargo build --release (flotilla)"
cargo build --release --locked -q -p flotilla --bin flotilla

if [ "${1:-}" = "--control" ]; then
  shift
  exec $venv/bin/python bench/fleet/control.py "$@"
fi
exec $venv/bin/python bench/fleet/bench.py "$@"
