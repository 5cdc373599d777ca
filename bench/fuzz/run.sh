#!/usr/bin/env bash
# Coverage-guided fuzzing of every decoder (crates/fuzz): builds the libFuzzer binaries with
# cargo-fuzz on the nightly toolchain (AddressSanitizer), seeds each corpus from the repository's
# fixtures (bench/fuzz/make_seeds.py for the inputs that have no fixture files), runs each target
# for SECONDS (default 60) on all cores but one, and writes executions, corpus size, coverage and
# findings to bench/results/fuzz.md. A crash is copied to fuzz/regressions/<target>/, where the
# stable test suite (cargo nextest run -p flotilla-fuzz) replays it from then on.
#
#   bench/fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-60}
shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q nightly || { echo "cargo-fuzz needs the nightly toolchain" >&2; exit 1; }
[ -x .venv/bin/python ] && .venv/bin/python bench/fuzz/make_seeds.py >/dev/null
# the fuzz workspace builds the same dependency versions as the main one
[ -f fuzz/Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(ls fuzz/fuzz_targets | sed 's/\.rs$//')
fi
jobs=$(( $(nproc) > 1 ? $(nproc) - 1 : 1 ))
(cd fuzz && cargo +nightly fuzz build --release)

seeds_of() {  # the seed folders crates/fuzz/src/lib.rs lists for a target
  grep -o "name: \"$1\", run: [a-z_]*, seeds: &\[[^]]*\]" crates/fuzz/src/lib.rs | grep -o '"[^"]*"' | tail -n +2 | tr -d '"'
}

out=bench/results/fuzz.md
tmp=$(mktemp -d)
{
  echo "# Fuzzing"
  echo
  echo "\`bench/fuzz/run.sh $seconds\` on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(date -u +%Y-%m-%d),"
  echo "$jobs libFuzzer workers per target, $seconds s each, AddressSanitizer, \`-rss_limit_mb=2048 -timeout=10 -max_len=1048576\`."
  echo
  echo "| target | executions | exec/s | corpus | coverage (edges) | crashes | timeouts | OOMs |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
} > "$tmp/table.md"
for t in "${targets[@]}"; do
  corpus="$tmp/corpus-$t"
  mkdir -p "$corpus" "fuzz/artifacts/$t"
  for s in $(seeds_of "$t"); do
    [ -e "$s" ] && find "$s" -type f -size -4M -exec cp -n {} "$corpus/" \; 2>/dev/null || true
  done
  log="$tmp/$t.log"
  (cd fuzz && timeout $((seconds + 120)) ./target/x86_64-unknown-linux-gnu/release/"$t" "$corpus" \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -max_len=1048576 \
      -jobs="$jobs" -workers="$jobs" -artifact_prefix="artifacts/$t/" -print_final_stats=1 \
      > "$log" 2>&1) || true
  cat fuzz/fuzz-*.log >> "$log" 2>/dev/null || true
  rm -f fuzz/fuzz-*.log
  execs=$(grep -h '^stat::number_of_executed_units' "$log" | awk '{s+=$2} END {print s+0}')
  rate=$(( execs / seconds ))
  cov=$(grep -ho 'cov: [0-9]*' "$log" | awk '{print $2}' | sort -n | tail -1)
  crashes=$(ls "fuzz/artifacts/$t" 2>/dev/null | grep -c '^crash-' || true)
  timeouts=$(ls "fuzz/artifacts/$t" 2>/dev/null | grep -c '^timeout-' || true)
  ooms=$(ls "fuzz/artifacts/$t" 2>/dev/null | grep -c '^oom-' || true)
  echo "| $t | $execs | $rate | $(ls "$corpus" | wc -l) | ${cov:-?} | $crashes | $timeouts | $ooms |" >> "$tmp/table.md"
  for f in fuzz/artifacts/"$t"/crash-* fuzz/artifacts/"$t"/timeout-* fuzz/artifacts/"$t"/oom-*; do
    [ -e "$f" ] || continue
    mkdir -p "fuzz/regressions/$t"
    cp "$f" "fuzz/regressions/$t/"
  done
  echo "$t: $execs executions, crashes $crashes, timeouts $timeouts, OOMs $ooms" >&2
done
mv "$tmp/table.md" "$out"
rm -rf "$tmp"
echo "wrote $out" >&2
