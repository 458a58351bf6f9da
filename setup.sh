#!/usr/bin/env bash
# Set up (or bring up to date) the project environment in .venv: the pinned requirements
# (torch 2.13.0 CPU build from the local wheel), segreport itself, and the Jupyter kernel
# spec "segreport" that the analysis notebooks run on. Safe to run again: it only
# reinstalls when requirements.txt or pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.segreport-setup
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! .venv/bin/python -c "import segreport" 2>/dev/null; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  .venv/bin/python -m pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
.venv/bin/python -m ipykernel install --sys-prefix --name segreport \
  --display-name "segreport (project environment)" > /dev/null
