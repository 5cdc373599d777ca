#!/usr/bin/env bash
# Fuzzes targets to a number of executions rather than for a time (the issue's bar: 10^7 per
# target): one libFuzzer process per target, as many side by side as there are cores, each from
# its seeds (as bench/fuzz/run.sh). Prints a table row per target (executions, seconds, peak RSS,
# findings); crashes, timeouts and OOMs are copied to fuzz/regressions/<target>/ as run.sh does.
# Expects the binaries bench/fuzz/run.sh builds (cargo +nightly fuzz build --release).
#
#   bench/fuzz/runs.sh [RUNS] TARGET...        e.g. bench/fuzz/runs.sh 10000000 rest_json rest_binary
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-10000000}
shift || true
[ $# -gt 0 ] || { echo "name the targets (ls fuzz/fuzz_targets)" >&2; exit 1; }
bin=fuzz/target/x86_64-unknown-linux-gnu/release
seeds_of() {  # the seed folders crates/fuzz/src/lib.rs lists for a target
  grep -o "name: \"$1\", run: [a-z_]*, seeds: &\[[^]]*\]" crates/fuzz/src/lib.rs | grep -o '"[^"]*"' | tail -n +2 | tr -d '"'
}
tmp=$(mktemp -d)
one() {
  local t=$1 corpus="$tmp/corpus-$1" start end
  mkdir -p "$corpus" "fuzz/artifacts/$t"
  for s in $(seeds_of "$t"); do
    [ -e "$s" ] && find "$s" -type f -size -4M -exec cp -n {} "$corpus/" \; 2>/dev/null || true
  done
  start=$(date +%s)
  (cd fuzz && /usr/bin/time -f "peak_rss_kb %M" "../$bin/$t" "$corpus" -runs="$runs" -rss_limit_mb=2048 \
      -timeout=10 -max_len=1048576 -artifact_prefix="artifacts/$t/" -print_final_stats=1) > "$tmp/$t.log" 2>&1 || true
  end=$(date +%s)
  local execs rss crashes timeouts ooms
  execs=$(grep -h '^stat::number_of_executed_units' "$tmp/$t.log" | awk '{s+=$2} END {print s+0}')
  rss=$(grep -o 'peak_rss_kb [0-9]*' "$tmp/$t.log" | awk '{print int($2/1024)}')
  crashes=$(ls "fuzz/artifacts/$t" 2>/dev/null | grep -c '^crash-' || true)
  timeouts=$(ls "fuzz/artifacts/$t" 2>/dev/null | grep -c '^timeout-' || true)
  ooms=$(ls "fuzz/artifacts/$t" 2>/dev/null | grep -c '^oom-' || true)
  for f in fuzz/artifacts/"$t"/crash-* fuzz/artifacts/"$t"/timeout-* fuzz/artifacts/"$t"/oom-*; do
    [ -e "$f" ] || continue
    mkdir -p "fuzz/regressions/$t"
    cp "$f" "fuzz/regressions/$t/"
  done
  echo "| $t | $execs | $((end - start)) s | ${rss:-?} MB | $crashes | $timeouts | $ooms |"
}
echo "| target | executions | time | peak RSS | crashes | timeouts | OOMs |"
echo "|---|---:|---:|---:|---:|---:|---:|"
running=0
for t in "$@"; do
  one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$(nproc)" ]; then
    wait -n
    running=$((running - 1))
  fi
done
wait
rm -rf "$tmp"
