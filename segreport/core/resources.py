"""Files that ship inside the package: templates, notebooks, the default parameters, the Quarto project.

Found through importlib.resources, so a plain `pip install .` (not editable) works from any
folder; the repository's top-level `templates/` and `analysis/` are links to these folders.
"""

from __future__ import annotations

from importlib import resources as _res
from pathlib import Path


def package_dir() -> Path:
    return Path(str(_res.files("segreport")))


def resource(rel: str | Path) -> Path:
    """A shipped file by its path relative to the package (e.g. 'templates/row_text.j2')."""
    return package_dir() / rel


TEMPLATES = resource("templates")
ANALYSIS = resource("analysis")
SEGMENT = "segment.ipynb"  # the one analysis notebook, in ANALYSIS (or the folder params.analysis names)
DEFAULT_PARAMS = resource("params.yml")
QUARTO_PROJECT = resource("project/_quarto.yml")
