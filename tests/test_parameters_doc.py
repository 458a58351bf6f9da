"""docs/parameters.md is what scripts/parameters_doc.py writes from the parameter models now."""

from __future__ import annotations

import importlib.util

from .conftest import ROOT


def test_the_parameters_reference_is_current():
    spec = importlib.util.spec_from_file_location("parameters_doc", ROOT / "scripts" / "parameters_doc.py")
    doc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(doc)
    written = (ROOT / "docs" / "parameters.md").read_text(encoding="utf-8")
    assert written == doc.text(), "docs/parameters.md is out of date: run python scripts/parameters_doc.py"
