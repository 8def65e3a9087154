#!/usr/bin/env bash
# Run the test suite against the oldest dependency versions the members declare
# (requirements-oldest.txt: every lower bound of their pyproject.toml files), or against the
# newest releases the package index offers within those ranges. Each set gets its own
# git-ignored venv (.venv-oldest, .venv-newest) beside the pinned .venv of tools/setup.sh.
# Usage: bash tools/test_versions.sh oldest|newest [pytest arguments]
set -euo pipefail
which="${1:-}"
case "$which" in
    oldest|newest) shift ;;
    *) echo "tools/test_versions.sh: first argument must be 'oldest' or 'newest', got '$which'" >&2; exit 2 ;;
esac
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv=".venv-$which"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
if [ "$which" = oldest ]; then
    "$venv/bin/python" -m pip install --quiet -r requirements-oldest.txt
else
    # The members' own ranges (not the pins), upgraded to the newest release each admits.
    mapfile -t ranges < <("$venv/bin/python" tools/declared_ranges.py)
    "$venv/bin/python" -m pip install --quiet --upgrade --upgrade-strategy eager "${ranges[@]}"
fi
"$venv/bin/python" -m pip install --quiet --no-build-isolation --no-deps \
    -e packages/core -e apps/fewshot -e apps/tracking -e apps/viewpoint
"$venv/bin/python" -m pip check
"$venv/bin/python" -m pip list --format freeze 2>/dev/null \
    | grep -i -E '^(torch|torchvision|numpy|pillow|scipy|opencv-python-headless|matplotlib|pyyaml|h5py|got10k|pycocotools|tqdm|six)=='
"$venv/bin/python" -m pytest "$@"
