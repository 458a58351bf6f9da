"""Shared fixtures: a scratch project folder, the real bank data from ../shared, demo tables."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BANK = ROOT.parent / "shared" / "data" / "bank-marketing" / "train.csv"


@pytest.fixture
def bank_path() -> Path:
    if not BANK.exists():
        pytest.skip(f"the real bank data is not here ({BANK}): ../shared is absent")
    return BANK


def make_workdir(path: Path) -> Path:
    """A folder laid out like the project (templates, _quarto.yml) in which a run can write."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "templates").symlink_to(ROOT / "templates")
    (path / "params").symlink_to(ROOT / "params")
    shutil.copy(ROOT / "_quarto.yml", path / "_quarto.yml")
    (path / "report").mkdir(exist_ok=True)
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    wd = make_workdir(tmp_path / "project")
    monkeypatch.chdir(wd)
    return wd


def snapshot(folder: Path) -> dict:
    """Every file under a folder with its size and mtime: to check that nothing was written."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}
