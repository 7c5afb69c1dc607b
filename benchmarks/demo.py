"""Benchmark: the demo's end-to-end result (embedded ResNet-20, Fashion-MNIST, ort-cpu).

    python benchmarks/demo.py [--threads N] [--budget 0.5x] [--epochs 0.3] [--out runs/demo]
                              [--results PATH]

Runs ``latprune.demo.run_demo`` (profile → prune → save the run with its ONNX
export → bench, through the public API) from a fresh LUT, prints what
``latprune demo`` prints (the README's demo block), and writes
benchmarks/results/demo.json (or ``--results``): measured latencies (median,
p10, p90), the LUT prediction, accuracies, parameters, MACs, wall time of each
phase, and the device fingerprint.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from results_io import write_json

from latprune.demo import run_demo
from latprune.report import demo_text

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--budget", default="0.5x")
    parser.add_argument("--epochs", type=float, default=0.3)
    parser.add_argument("--out", type=Path, default=None,
                        help="keep the LUT and run directory here, as `latprune demo --out` does "
                             "(default: a temporary directory, removed; an existing LUT there is reused)")
    parser.add_argument("--results", type=Path, default=RESULTS / "demo.json", help="the result JSON to write")
    args = parser.parse_args()
    work = args.out if args.out is not None else Path(tempfile.mkdtemp(prefix="latprune-demo-"))
    try:
        start = time.time()
        r = run_demo(work, args.budget, args.epochs, args.threads)
        print(demo_text(r))
        m = r["prune"]
        summary = {
            "benchmark": "demo", "model": m["model"], "data": m["data"], "budget": m["budget"],
            "base": m["base"], "pruned": m["pruned"], "budget_met": m["budget_met"],
            "speedup_measured": m["speedup_measured"], "macs_ratio": m["macs_ratio"],
            "bench": {k: r["bench"][k] for k in ("latency_ms", "predicted_ms", "error_pct")},
            "profile": {k: r["profile"][k] for k in ("keys", "seconds", "calibration")},
            "closed_loop": m["closed_loop"], "timings_s": {**m["timings_s"], "demo_total_s": time.time() - start},
            "fingerprint": m["fingerprint"],
        }
        write_json(args.results, summary)
        print(f"wrote {args.results}: base {m['base']['latency_ms']['median_ms']:.3f} ms -> "
              f"pruned {m['pruned']['latency_ms']['median_ms']:.3f} ms (budget {m['budget']['ms']:.3f} ms), "
              f"acc {m['base']['accuracy']:.4f} -> {m['pruned']['accuracy']:.4f}, {time.time() - start:.0f} s")
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
