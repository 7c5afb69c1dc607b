"""Benchmark: ONNX and AOTInductor bundles of existing run directories, built, run and measured.

For each RUN_DIR given: `latprune.export` (ONNX, then AOTI) into RUN_DIR/bundle-onnx
and RUN_DIR/bundle-aoti (replacing earlier bundles), then `Bundle.measure` on each;
prints one JSON object with parity, the latency measured at export and again, and
the budget (BENCHMARKS.md, deployment bundles). Run it when the machine is quiet:
the numbers are timings.

Run directories for the Done-when models, data-free (random init where a model
has no weights; nothing is downloaded):

    for m in default torchvision:resnet18 torchvision:mobilenet_v2 torchvision:efficientnet_b0; do
        n=$(echo $m | tr ':' '_')
        latprune profile $m -o runs/check/$n.lut --threads 1
        latprune prune $m --lut runs/check/$n.lut --budget 0.5x --epochs 0 --method halp --importance l1 \\
            --threads 1 -o runs/check/$n
    done
    python benchmarks/bundles.py runs/check/* --threads 1 > benchmarks/results/bundles.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def check(run_dir: Path, formats: list[str], threads: int | None, repeat: int) -> dict[str, Any]:
    """Bundles of one run directory, each built, checked, measured and run."""
    import latprune

    run = latprune.load(run_dir)  # runs of models latprune builds by name (the commands above)
    result: dict[str, Any] = {}
    for fmt in formats:
        t0 = time.time()
        bundle = latprune.export(run, fmt, run_dir / f"bundle-{fmt}", overwrite=True, threads=threads)
        build_s = time.time() - t0
        meta = bundle.meta
        ran = bundle.measure(repeat=repeat)
        result[fmt] = {
            "bundle": str(bundle.path),
            "export": meta["export"],
            "parity_max_abs_diff": meta["parity"]["max_abs_diff"],
            "parity_passed": meta["parity"]["passed"],
            "budget_ms": meta["budget"]["ms"],
            "predicted_ms": meta["prediction"]["predicted_ms"],
            "prune_measured_ms": meta["prediction"]["prune_measured_ms"],
            "export_latency_ms": meta["measured"]["latency_ms"],
            "run_latency_ms": ran["latency_ms"],
            "budget_met_at_export": meta["measured"]["budget_met"],
            "budget_met_at_run": ran["budget_met"],
            "threads": ran["threads"],
            "build_s": round(build_s, 1),
            "fingerprint": meta["fingerprint"],
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories from `latprune prune`")
    parser.add_argument("--formats", default="onnx,aoti", help="comma-separated formats (default onnx,aoti)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: each run's)")
    parser.add_argument("--repeat", type=int, default=300, help="timed runs of the second measurement (default 300)")
    args = parser.parse_args(argv)
    from latprune import LatpruneError

    out: dict[str, Any] = {}
    for run_dir in args.run_dirs:
        print(f"bundles: {run_dir}", file=sys.stderr)
        try:
            out[str(run_dir)] = check(run_dir, args.formats.split(","), args.threads, args.repeat)
        except LatpruneError as exc:
            out[str(run_dir)] = {"error": str(exc)}
    print(json.dumps(out, indent=2))
    return 1 if any("error" in v for v in out.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
