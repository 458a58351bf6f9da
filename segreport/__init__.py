"""segreport: reproducible customer-segmentation reports.

Three segmentation methods (K-means on encoded features, K-Prototypes on mixed
features, K-means on sentence embeddings of each row) run for a grid of k as
papermill notebooks; their results on disk become a Quarto report.
"""

import os

# OpenMP's idle threads sleep instead of spinning (LightGBM, openTSNE and PyTorch all use libgomp). A run's cells,
# kernels and Dask workers share the machine's cores, and a thread that spins for work holds a core another
# process needs: with two other busy processes on 2 cores, 4 LightGBM surrogates on 300 rows took 2.3-5.3 s with
# 2 spinning threads and 0.3-0.5 s with sleeping ones, a 200-row t-SNE 12.2 s and 0.9 s (docs/performance.md).
# It changes how threads wait, never what they compute; libgomp reads it once, when it is loaded, so it is set
# here, before any of them, and every process a run starts inherits it. A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"


class SegreportError(Exception):
    """An error caused by the user's input: printed as one line by the CLI, exit 2."""
