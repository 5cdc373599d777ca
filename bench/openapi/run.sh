#!/usr/bin/env bash
# A long schemathesis run against the REST API's OpenAPI document (GET /openapi.json) of a release
# server with the example repository: EXAMPLES per operation (default 500), every phase (examples,
# coverage, fuzzing, stateful); fails on any 5xx or schema violation. CI runs a bounded one
# (tests/python/test_openapi.py). Writes bench/results/openapi.md.
#   bench/openapi/run.sh [EXAMPLES]
set -euo pipefail
cd "$(dirname "$0")/../.."
examples=${1:-500}
[ -x .venv/bin/st ] || .venv/bin/pip install -q -r tests/requirements.txt
cargo build --release --locked --bin flotilla
work=$(mktemp -d)
target/release/flotilla serve --http-port 18600 --grpc-port 18601 --metrics-port 0 > "$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
until curl -s localhost:18600/v2/health/ready > /dev/null; do sleep 0.5; done
printf '[parameters]\n"path.model" = "simple"\n"path.version" = "1"\n' > "$work/st.toml"
start=$(date +%s)
set +e
(cd "$work" && "$OLDPWD/.venv/bin/st" --config-file st.toml run http://127.0.0.1:18600/openapi.json \
  --checks not_a_server_error,response_schema_conformance --max-examples "$examples" --request-timeout 30) \
  > "$work/st.out" 2>&1
rc=$?
set -e
summary=$(grep -E "generated|passed|failed" "$work/st.out" | tail -1)
{
  echo "# OpenAPI contract (schemathesis)"
  echo
  echo "\`bench/openapi/run.sh $examples\`, $(date -u +%Y-%m-%d), $(nproc) cores: schemathesis $(.venv/bin/st --version | awk '{print $3}'),"
  echo "checks \`not_a_server_error\` and \`response_schema_conformance\`, all phases, $(( $(date +%s) - start )) s."
  echo
  echo "| result | |"
  echo "|---|---|"
  echo "| test cases | $summary |"
  echo "| exit status | $rc |"
  echo "| server panics | $(grep -c panicked "$work/server.log" || true) |"
} > bench/results/openapi.md
cat bench/results/openapi.md
exit $rc
