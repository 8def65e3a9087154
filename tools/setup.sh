#!/usr/bin/env bash
# Create the in-project virtual environment and install every member, editable, from the
# repo's own files: the pinned root requirements first, then the four members in one pip call
# (so the apps resolve `dropgrad-core` to the local checkout, never to an index).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements.txt
# poetry-core comes from requirements.txt, so the editable builds need no isolated build env.
.venv/bin/python -m pip install --quiet --no-build-isolation --no-deps \
    -e packages/core -e apps/fewshot -e apps/tracking -e apps/viewpoint
.venv/bin/python -m pip check
.venv/bin/python -c "import dropgrad, dropgrad_fewshot, dropgrad_tracking, dropgrad_viewpoint; print('dropgrad', dropgrad.__version__, 'installed')"
