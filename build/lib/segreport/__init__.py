"""segreport: reproducible customer-segmentation reports.

Three segmentation methods (K-means on encoded features, K-Prototypes on mixed
features, K-means on sentence embeddings of each row) run for a grid of k as
papermill notebooks; their results on disk become a Quarto report.
"""

__version__ = "0.1.0"


class SegreportError(Exception):
    """An error caused by the user's input: printed as one line by the CLI, exit 2."""
