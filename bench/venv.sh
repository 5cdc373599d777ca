# Sourced by the benchmarks' run.sh: `ensure_venv VENV REQUIREMENTS` makes VENV with the pinned
# REQUIREMENTS, again only when the requirements file changes (its hash is kept in the venv).
ensure_venv() {
  local venv=$1 req=$2 want
  want=$(sha256sum "$req" | cut -d' ' -f1)
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.requirements.sha" 2>/dev/null)" != "$want" ]; then
    printf '==> creating %s (%s)\n' "$venv" "$req"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -r "$req"
    echo "$want" > "$venv/.requirements.sha"
  fi
}
