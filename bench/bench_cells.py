"""Where a grid cell's time goes: a per-stage table over every cell of a finished run.

    .venv/bin/python bench/bench_cells.py results/train

Reads what a run already records, measures nothing itself:
- each cell's `timings.json` (written by `cell.run_cell`: read inputs, fit, stability refits,
  metrics, LightGBM surrogate + SHAP, decision-tree rules, personas, writing the files);
- each executed notebook's papermill metadata (per code cell seconds, the whole notebook's), from
  which the kernel-side overhead follows: the `from segreport import notebook` cell (imports; ~0
  in a warm kernel), the display cells after `run_cell`, and kernel start + papermill's own work
  (notebook seconds minus the cells' sum);
- each cell's `done.json` (wall seconds seen by the grid), whose excess over the notebook is the
  worker's own overhead (waiting for a kernel to reset, writing the notebook).
Cells reused from an earlier run are left out (their timings are not this run's).
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

STAGES = ("read", "fit", "stability", "metrics", "surrogate", "rules", "personas", "write")


def cell_rows(run: Path) -> list[dict]:
    """One dict of stage seconds per cell computed by this run's grid."""
    manifest = json.loads((run / "manifest.json").read_text())
    rows = []
    for cdir in sorted((run / "cells").glob("*/*")):
        tfile, nbfile, done = cdir / "timings.json", cdir / "notebook.ipynb", cdir / "done.json"
        if not (tfile.exists() and nbfile.exists() and done.exists()):
            continue
        name = f"{cdir.parent.name}/{cdir.name}"
        status = manifest.get("cells", {}).get(name, {})
        if status.get("reused"):
            continue
        t = json.loads(tfile.read_text())
        if "read" not in t:  # timings written before the stages were split
            continue
        nb = json.loads(nbfile.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        src = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in code]
        dur = [float((c.get("metadata", {}).get("papermill") or {}).get("duration") or 0.0) for c in code]
        i_run = next(i for i, s in enumerate(src) if "run_cell(" in s)
        i_imp = next((i for i, s in enumerate(src) if "import notebook" in s), None)
        nb_total = float(nb["metadata"]["papermill"]["duration"] or 0.0)
        wall = float(json.loads(done.read_text()).get("wall_seconds") or nb_total)
        row = {"cell": name, "method": cdir.parent.name, **{s: float(t.get(s, 0.0)) for s in STAGES}}
        row["imports (kernel)"] = dur[i_imp] if i_imp is not None else 0.0
        row["display cells"] = sum(dur[i_run + 1:])
        row["kernel start + papermill"] = max(0.0, nb_total - sum(dur))
        row["run_cell, untimed"] = max(0.0, dur[i_run] - float(t.get("total", 0.0)))
        row["worker"] = max(0.0, wall - nb_total)
        row["wall"] = wall
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    if not rows:
        return "no cell computed by this run has stage timings"
    cols = [*STAGES, "run_cell, untimed", "imports (kernel)", "display cells", "kernel start + papermill", "worker"]
    methods = sorted({r["method"] for r in rows})
    out = [f"{'stage':<26}" + "".join(f"{m:>14}" for m in methods) + f"{'all cells':>14}{'share':>8}",
           f"{'(mean s per cell)':<26}" + "".join(f"{'n=' + str(sum(r['method'] == m for r in rows)):>14}"
                                                 for m in methods) + f"{'(sum s)':>14}"]
    total = sum(r["wall"] for r in rows)
    for c in [*cols, "wall"]:
        per = [np.mean([r[c] for r in rows if r["method"] == m]) for m in methods]
        s = sum(r[c] for r in rows)
        out.append(f"{c:<26}" + "".join(f"{v:>14.2f}" for v in per) + f"{s:>14.1f}{100 * s / total:>7.0f}%")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a run's results folder, e.g. results/train")
    ns = ap.parse_args()
    run = Path(ns.run)
    if not (run / "manifest.json").exists():
        sys.exit(f"{run}: no manifest.json (not a run's results folder)")
    print(table(cell_rows(run)))


if __name__ == "__main__":
    main()
