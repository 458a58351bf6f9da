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
# numba compiles its kernels on first use and caches them beside their modules: compile them here, once,
# instead of in the first `segreport run` (pynndescent's, which openTSNE's first t-SNE reaches: about 10 s;
# segreport's K-Prototypes engine: about 3 s). Nothing is compiled again when the caches are there.
.venv/bin/python - <<'PY'
import numpy as np

from segreport.lib.projections import tsne
from segreport.methods._kprototypes import KPrototypesSegmenter

rng = np.random.default_rng(0)
tsne(rng.normal(size=(200, 5)), 0)
X = np.c_[rng.normal(size=(60, 2)), rng.integers(3, size=(60, 2))].astype(object)
KPrototypesSegmenter(n_clusters=2, n_init=1, random_state=0).fit(X, categorical=[2, 3])
PY
