"""Memory as the table grows: a synthetic table of N rows (default 1,000,000) through kmeans and kprototypes.

    .venv/bin/python bench/bench_memory.py [--rows 1000000] [--methods kmeans,kprototypes] [--k 3-4]

Generates the demo table at that size, runs `segreport run --no-render` on it in a scratch folder
and samples the resident memory of the whole process tree (the CLI, its grid workers and their
notebook kernels, summed) every 0.2 s. Prints the peak against the 8 GiB budget, and the wall time
of each stage from the manifest. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def tree_rss(proc: psutil.Process, by: dict | None = None) -> int:
    """Memory of the whole process tree. Each process's proportional set size (PSS: a page shared by n
    processes counts 1/n in each) where the kernel reports it, else its resident set: summed RSS counts
    shared pages once per process, so a short-lived forked child (a fork of a 1.5 GiB parent, before it
    execs) reads as 1.5 GiB more (seen: one 4.07 GiB sample in a run whose processes otherwise summed to
    at most 2.87 GiB). With `by`, each process's share is put there under a short name."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            try:
                m = p.memory_full_info().pss
            except (AttributeError, psutil.AccessDenied):
                m = p.memory_info().rss
            total += m
            if by is not None:
                by[f"{p.pid} {role(p)}"] = m
        except psutil.Error:
            pass
    return total


def role(p: psutil.Process) -> str:
    """What a process of a run is, from its command line: the CLI, a Dask scheduler/worker, a kernel ..."""
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return "?"
    for key, name in (("ipykernel", "kernel"), ("spawn_main", "worker"), ("forkserver", "forkserver"),
                      ("segreport", "cli"), ("resource_tracker", "resource tracker")):
        if key in cmd:
            return name
    return cmd[:40]


def run_sampled(cmd: list[str], cwd: Path, every: float = 0.2, at_peak: dict | None = None):
    """Run `cmd`, sampling the resident memory of its whole process tree every `every` seconds.
    Returns (the finished Popen, stdout, stderr, wall seconds, peak bytes). With `at_peak`, it is filled
    with the peak sample's time ("seconds") and each process's share then ("processes"), and every
    sample as (seconds, bytes, the processes' shares) under "series"."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = [0]

    def sample():
        while proc.poll() is None:
            by: dict = {}
            m = tree_rss(ps, by)
            if at_peak is not None:
                at_peak.setdefault("series", []).append((time.perf_counter() - t, m, by))
            if m > peak[0]:
                peak[0] = m
                if at_peak is not None:
                    at_peak.update(seconds=round(time.perf_counter() - t, 1), processes=by)
            time.sleep(every)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    th.join()
    return proc, out, err, time.perf_counter() - t, peak[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--methods", default="kmeans,kprototypes")
    ap.add_argument("--k", default="3-4")
    ap.add_argument("--budget-gib", type=float, default=8.0)
    ns = ap.parse_args()
    from segreport.lib.demo import write_demo

    wd = Path(tempfile.mkdtemp(prefix="segreport-mem-"))
    (wd / "templates").symlink_to(ROOT / "templates")
    shutil.copy(ROOT / "_quarto.yml", wd / "_quarto.yml")
    t = time.perf_counter()
    write_demo(wd / "big.csv", rows=ns.rows, seed=11)
    print(f"generated {ns.rows:,} rows in {time.perf_counter() - t:.1f} s "
          f"({(wd / 'big.csv').stat().st_size / 1e6:.0f} MB)", flush=True)
    cmd = [str(ROOT / ".venv" / "bin" / "segreport"), "run", "-q", "--no-render", "--data", "big.csv",
           "--methods", ns.methods, "--k", ns.k]
    proc, out, err, wall, peak = run_sampled(cmd, wd, every=0.2)
    if proc.returncode != 0:
        print(err[-3000:])
        raise SystemExit(f"run failed ({proc.returncode})")
    manifest = json.loads((wd / "results" / "big" / "manifest.json").read_text())
    gib = peak / 1024 ** 3
    print(out.strip())
    print(f"rows {ns.rows:,}  methods {ns.methods}  k {ns.k}  wall {wall:.0f} s")
    print(f"peak resident memory of the process tree: {gib:.2f} GiB  (budget {ns.budget_gib} GiB: "
          f"{'within' if gib <= ns.budget_gib else 'OVER'}, ratio {gib / ns.budget_gib:.2f})")
    print("stage timings:", json.dumps(manifest["timings"]))
    print("cells:", json.dumps({n: c["wall_seconds"] for n, c in manifest["cells"].items()}))
    shutil.rmtree(wd, ignore_errors=True)


if __name__ == "__main__":
    main()
