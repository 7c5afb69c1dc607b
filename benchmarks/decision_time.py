"""Benchmark: wall time of a data-free prune, per phase, after profiling.

Runs `latprune prune MODEL --lut LUT --budget 0.6x --method halp --importance l1 --epochs 0`
once per model and run, in a subprocess on the latprune source at ``--src`` (default: this
checkout's), and reads each run's `metrics.json`: the set-up (calibration lookup and the base
measured), the method (the decision: knapsack rounds and the closed loop, each candidate
measured beside the base), the export measured, and the whole command's wall time. Pointing
``--src`` at an older tree (`git archive REV src | tar -x -C DIR`) times it on the same LUTs
(BENCHMARKS.md, decision time on a data-free prune). Profile each model first, e.g.

    latprune profile torchvision:googlenet --input 1x3x64x64 --backend ort-cpu --threads 1 -o g.lut
    python benchmarks/decision_time.py torchvision:googlenet=g.lut --input 1x3x64x64 --label after \\
        -o benchmarks/results/decision_time.json

Run it on a quiet machine, one at a time: the numbers are timings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def prune_once(model: str, lut: str, input_shape: str, src: Path, threads: int, budget: str) -> dict[str, Any]:
    """One data-free prune of ``model`` on the source tree ``src``: its phases (s) and outcome."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "latprune", "prune", model, "--lut", lut, "--input", input_shape,
               "--budget", budget, "--method", "halp", "--importance", "l1", "--epochs", "0",
               "--backend", "ort-cpu", "--threads", str(threads), "-o", str(out)]
        env = {**os.environ, "PYTHONPATH": str(src)}
        t0 = time.time()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall_s = time.time() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        metrics = json.loads((out / "metrics.json").read_text())
    return {"wall_s": round(wall_s, 1), "timings_s": metrics["timings_s"],
            "closed_loop_candidates": len(metrics["closed_loop"]),
            "closed_loop": [{k: round(c[k], 4) if isinstance(c[k], float) else c[k]
                             for k in ("predicted_ms", "measured_ms", "target_ms", "fits") if k in c}
                            for c in metrics["closed_loop"]],
            "base_ms": metrics["base_ms"], "budget_ms": metrics["budget_ms"], "measured_ms": metrics["measured_ms"],
            "budget_met": metrics["budget_met"], "macs_ratio": round(metrics["macs_ratio"], 4),
            "fingerprint": metrics["fingerprint"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="MODEL=LUT, e.g. torchvision:googlenet=g.lut")
    parser.add_argument("--input", default="1x3x64x64")
    parser.add_argument("--budget", default="0.6x")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=1, help="prunes per model")
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the latprune source tree to time")
    parser.add_argument("--label", default="this checkout", help="the key the runs are stored under")
    parser.add_argument("-o", "--output", type=Path, help="JSON file to add the runs to (else stdout)")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {}
    for spec in args.models:
        model, lut = spec.split("=", 1)
        for _ in range(args.runs):
            runs.setdefault(model, []).append(prune_once(model, lut, args.input, args.src, args.threads,
                                                         args.budget))
            print(model, json.dumps(runs[model][-1]["timings_s"]), file=sys.stderr, flush=True)
    record = {"input": args.input, "budget": args.budget, "threads": args.threads, "src": str(args.src),
              "date": time.strftime("%Y-%m-%d"), "runs": runs}
    if args.output is None:
        print(json.dumps(record, indent=2))
        return
    results = json.loads(args.output.read_text()) if args.output.is_file() else {}
    results[args.label] = record
    write_json(args.output, results)


if __name__ == "__main__":
    main()
