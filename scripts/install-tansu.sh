#!/usr/bin/env bash
# Builds tansu, a Kafka-protocol broker in Rust (crates.io), for the Kafka stream tests, and
# caches it outside the checkout: ~20 minutes on 2 cores the first time, nothing afterwards.
# The tests find it at $FLOTILLA_TANSU (default ~/.cache/flotilla/tansu/bin/tansu).
set -euo pipefail
version=0.6.0
bin="${FLOTILLA_TANSU:-$HOME/.cache/flotilla/tansu/bin/tansu}"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$version"; then
  exit 0
fi
root="$(dirname "$(dirname "$bin")")"
echo "==> building tansu $version into $root (once; about 20 minutes on 2 cores)"
# its own target folder, so the project's build cache is untouched; removed afterwards
target="$(mktemp -d)"
trap 'rm -rf "$target"' EXIT
CARGO_TARGET_DIR="$target" cargo install --locked --quiet "tansu@$version" --features dynostore --root "$root"
