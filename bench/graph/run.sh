#!/usr/bin/env bash
# Graph-model benchmark, one command: the inputs of a 2-hop (10, 5) GraphSAGE request built from the
# embedded store and from Redis (in-process: fetch and gather, each request timed alone), and the
# whole request through `flotilla serve` over HTTP (client latency; the server's own split into
# fetch, gather and model from its metrics). Needs the local Redis (db 11 is flushed).
# Writes bench/results/graph.{md,json}.
# Usage: bench/graph/run.sh [--requests N]
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "==> cargo build --release (flotilla, bench_graph)"
cargo build --release --locked -q -p flotilla --bin flotilla -p flotilla-features --example bench_online --example bench_graph
exec python3 bench/graph/bench.py --flotilla target/release/flotilla --bench target/release/examples/bench_graph "$@"
