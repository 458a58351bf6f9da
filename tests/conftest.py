"""Shared fixtures: a scratch project folder, the real bank data from ../shared, demo tables."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BANK = ROOT.parent / "shared" / "data" / "bank-marketing" / "train.csv"
LIGHT = "stability_resamples: 10\nnull_references: 1\nnull_sample: 300\n"


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
    # runs in a test check behaviour, not the defaults' sample sizes: fewer bootstrap refits and a
    # single small null reference keep the grid quick (a file given with --params replaces this one)
    (path / "params.yml").write_text(LIGHT)
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    wd = make_workdir(tmp_path / "project")
    monkeypatch.chdir(wd)
    return wd


def snapshot(folder: Path) -> dict:
    """Every file under a folder with its size and mtime: to check that nothing was written (a run folder's
    .lock aside: a command that holds the lock signs it, whatever it then writes)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


def segreport(cwd: Path, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m segreport ARGS` in `cwd` as a user runs it (a fresh process); fails the test with the
    command's stderr where it does not succeed (check)."""
    res = subprocess.run([sys.executable, "-m", "segreport", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"segreport {' '.join(args)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return res
