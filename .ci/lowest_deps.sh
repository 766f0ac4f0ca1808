#!/usr/bin/env bash
# The dependency floors in pyproject.toml are tested, not guessed: resolve the lowest version every direct
# dependency allows (uv's lowest-direct resolution; transitive ones stay at their highest) into a separate venv
# (packages from the uv cache) and run the fast tests (`-m "not slow"`) on it.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d /tmp/eomt-lowest.XXXXXX)"
trap 'rm -rf "$work"' EXIT
start=$SECONDS

uv pip compile --quiet --python 3.11 --resolution lowest-direct --group dev -o "$work/lowest.txt" \
  "$repo/pyproject.toml"
uv venv --quiet --python 3.11 "$work/venv"
uv pip sync --quiet -p "$work/venv/bin/python" "$work/lowest.txt"
uv pip install --quiet -p "$work/venv/bin/python" --no-deps -e "$repo"
echo "lowest direct versions: $(grep -oE '^(torch|torchvision|timm|transformers|lightning|numpy|numba|scipy|typer|streamlit)==[^ ]+' "$work/lowest.txt" | tr '\n' ' ')"
cd "$repo"
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider -m "not slow"
echo "lowest-direct check passed in $((SECONDS - start)) s"
