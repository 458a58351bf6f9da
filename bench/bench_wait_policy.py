"""How OpenMP's idle threads wait, measured on one small run: sleeping (segreport's setting,
OMP_WAIT_POLICY=PASSIVE) against libgomp's default (spin, then sleep), each with N busy processes
beside it (`--load N`: what the other workers of a run, a test suite on both cores or another user do).

    python bench/bench_wait_policy.py [--load 2] [--repeats 2] [--rows 300]

Prints the wall and CPU seconds of each and the ratio default / passive, and the CPU's flags.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from segreport.lib.demo import write_demo
from segreport.methods.llm.embed_fast import cpu_flags

SEGREPORT = [sys.executable, "-m", "segreport", "run", "-q", "--no-render", "--data", "data/demo.csv",
             "--methods", "kmeans", "--k", "2-3", "--workers", "1"]
LIGHT = "stability_resamples: 10\nnull_references: 1\nnull_sample: 300\nprojection_sample: 200\n"


def one_run(folder: Path, policy: str) -> tuple[float, float]:
    shutil.rmtree(folder / "results", ignore_errors=True)
    shutil.rmtree(folder / ".segreport-cache", ignore_errors=True)
    env = dict(os.environ, OMP_WAIT_POLICY=policy)  # "" is libgomp's default (segreport keeps a value set)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(SEGREPORT, cwd=folder, env=env, capture_output=True, text=True)
    said = [line for line in res.stderr.splitlines() if line.strip() and "OMP_WAIT_POLICY" not in line]
    if res.returncode or said:  # (libgomp says once that "" is no value: it keeps its default)
        print("\n".join(said), file=sys.stderr)
        res.check_returncode()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", type=int, default=2, help="busy processes running beside each run")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rows", type=int, default=300)
    a = ap.parse_args()
    flags = ", ".join(f for f, on in cpu_flags().items() if on) or "none"
    print(f"cores {os.cpu_count()}, CPU flags: {flags}; {a.load} busy processes beside each run; "
          f"kmeans k 2-3 on {a.rows} demo rows, one worker")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_demo(folder / "data" / "demo.csv", rows=a.rows, seed=6)
        (folder / "params.yml").write_text(LIGHT)
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.load)]
        try:
            times: dict[str, list[tuple[float, float]]] = {"default": [], "PASSIVE": []}
            for _ in range(a.repeats):  # alternated, so a drift of the machine's load falls on both
                for name, value in (("default", ""), ("PASSIVE", "PASSIVE")):
                    times[name].append(one_run(folder, value))
        finally:
            for h in hogs:
                h.kill()
    for name, runs in times.items():
        print(f"{name:8s} wall " + ", ".join(f"{w:.1f}" for w, _ in runs) + " s; CPU "
              + ", ".join(f"{c:.1f}" for _, c in runs) + " s")
    med = {n: sorted(w for w, _ in r)[len(r) // 2] for n, r in times.items()}
    print(f"ratio default / PASSIVE (median wall): {med['default'] / med['PASSIVE']:.2f}")


if __name__ == "__main__":
    main()
