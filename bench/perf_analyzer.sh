#!/usr/bin/env bash
# Triton's perf_analyzer against Flotilla's `simple` model, HTTP and gRPC,
# concurrency 1..4, on a release build. Writes bench/results/perf_analyzer-<host>.md.
# Usage: bench/perf_analyzer.sh   (run ./scripts/test.sh once first: it creates .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/perf_analyzer ] || { echo "run ./scripts/test.sh first (it installs perf_analyzer into .venv)"; exit 1; }
cargo build --release --locked -q
export LD_LIBRARY_PATH="$(.venv/bin/python -c 'import nvidia.cuda_runtime as m; print(m.__path__[0])')/lib"
http=18100; grpc=18101
./target/release/flotilla serve --host 127.0.0.1 --http-port $http --grpc-port $grpc --metrics-port 0 \
  --feature-repo none --log-level warn & pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf localhost:$http/v2/health/ready >/dev/null && break; sleep 0.1; done
mkdir -p bench/results
out="bench/results/perf_analyzer-$(hostname -s).md"
{
  echo "# perf_analyzer vs Flotilla \`simple\` ($(date -u +%F), $(nproc) cores, $(uname -m))"
  echo
  echo "| protocol | concurrency | infer/s | p50 µs | p99 µs |"
  echo "|---|---|---|---|---|"
} > "$out"
for proto in http grpc; do
  port=$([ $proto = http ] && echo $http || echo $grpc)
  csv=$(mktemp)
  .venv/bin/perf_analyzer -m simple -u localhost:$port -i $proto --concurrency-range 1:4 \
    --measurement-interval 3000 --stability-percentage 50 --max-trials 20 -f "$csv" >/dev/null
  # CSV columns: Concurrency, Inferences/Second, ..., p50 latency, p90, p95, p99, ...
  .venv/bin/python - "$csv" "$proto" >> "$out" <<'PY'
import csv, sys
rows = sorted(csv.DictReader(open(sys.argv[1])), key=lambda r: int(r["Concurrency"]))
for r in rows:
    print(f"| {sys.argv[2]} | {r['Concurrency']} | {float(r['Inferences/Second']):.0f} | {r['p50 latency']} | {r['p99 latency']} |")
PY
done
cat "$out"
