#!/usr/bin/env bash
# What the README's examples need, in about a minute: the Python packages of examples/requirements.txt
# (pinned) in .venv, and libb64-0d for perf_analyzer. Safe to run again (a stamp skips what is done).
# It shares .venv with scripts/test.sh, which later adds the test-only packages to the same venv;
# the pins agree (tests/requirements.txt includes examples/requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -e /usr/lib/x86_64-linux-gnu/libb64.so.0d ]; then
  echo "examples-setup: installing libb64-0d (perf_analyzer needs it)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends libb64-0d >/dev/null
fi

stamp=.venv/.examples.sha
want=$(sha256sum examples/requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "examples-setup: installing examples/requirements.txt into .venv"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r examples/requirements.txt
  echo "$want" > "$stamp"
fi
echo "examples-setup: ready (.venv/bin/python; perf_analyzer: .venv/bin/perf_analyzer)"
