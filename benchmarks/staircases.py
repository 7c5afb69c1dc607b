"""Benchmark: what adaptive staircase sampling (``profile --refine``) finds and what it buys (issue #3).

    python benchmarks/staircases.py [--model torchvision:resnet18] [--input 1x3x224x224] [--threads 2]
                                    [--budgets 0.4,0.5,0.6,0.7]

1. The coarse LUT of the fidelity benchmark (``benchmarks/luts/<name>-ort-cpu-<t>t.lut``,
   profiled if missing) is copied and profiled again with ``--refine``
   (``...-refined.lut``; resumable: measured keys are kept);
2. the same model is pruned data-free (``--method halp --importance l1 --epochs 0``,
   random init) to each budget once per LUT, interleaved: every candidate of the
   closed loop is measured, and the export is measured at the end;
3. ``benchmarks/results/staircases.json``: the refinement (widths added, steps,
   keys, seconds) and, per budget and LUT, the measured latency, the MACs and
   parameters kept and the widths chosen. The staircase plot goes beside it.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "staircases.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="torchvision:resnet18")
    parser.add_argument("--input", default="1x3x224x224")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budgets", default="0.4,0.5,0.6,0.7")
    args = parser.parse_args()

    from latprune._io import atomic_write_json
    from latprune.latency_lut.backends import get_backend
    from latprune.latency_lut.plots import plot_staircases
    from latprune.latency_lut.profile import build_lut
    from latprune.latency_lut.store import Lut
    from latprune.models import load_model
    from latprune.pruner.graph import ChannelGraph
    from latprune.pruner.loop import PruneConfig, prune

    backend = get_backend("ort-cpu", args.threads)
    spec = load_model(args.model, args.input)
    graph = ChannelGraph.build(spec.model, spec.input_shape)
    name = args.model.split(":")[-1]
    coarse = HERE / "luts" / f"{name}-ort-cpu-{args.threads}t.lut"
    refined = coarse.with_name(f"{coarse.stem}-refined.lut")
    coarse.parent.mkdir(exist_ok=True)
    t = time.time()
    coarse_report = build_lut(graph, coarse, backend, model_name=spec.name)
    coarse_s = time.time() - t
    if not refined.exists():
        shutil.copyfile(coarse, refined)
    t = time.time()
    report = build_lut(graph, refined, backend, model_name=spec.name, refine=True)
    refine_s = time.time() - t
    with Lut.open(refined) as lut:
        stairs = lut.calibration(graph.signature())["staircases"]
    plot = plot_staircases({graph.signature(): stairs}, str(RESULTS.with_suffix(".png")), f"{name}, {report.fingerprint['device']}")

    runs: dict[str, dict[str, Any]] = {}
    work = Path(tempfile.mkdtemp(prefix="latprune-stairs-"))
    try:
        for budget in args.budgets.split(","):
            for label, lut in (("coarse", coarse), ("refined", refined)):
                m = prune(PruneConfig(model=args.model, lut=str(lut), budget=f"{budget}x", out=str(work / label),
                                      input=args.input, threads=args.threads, method="halp", importance="l1",
                                      epochs=0, force=True, progress=False))
                fitting = [h for h in m["closed_loop"] if h["fits"]]  # the loop keeps the most valuable fit
                widths = max(fitting, key=lambda h: h["kept_importance"])["widths"] if fitting else {}
                runs[f"{label}@{budget}x"] = {
                    "lut": label, "budget_ratio": float(budget), "budget_ms": m["budget"]["ms"],
                    "base_ms": m["base"]["latency_ms"]["median_ms"], "measured": m["pruned"]["latency_ms"],
                    "predicted_ms": m["pruned"]["predicted_ms"], "held": m["budget_met"],
                    "macs_ratio": m["macs_ratio"], "params_ratio": m["pruned"]["params"] / m["base"]["params"],
                    "removed_blocks": m["pruned"]["removed_blocks"], "closed_loop_iterations": len(m["closed_loop"]),
                    "widths": widths,
                    "refined_widths_chosen": {r: w for r, w in widths.items() if w in stairs.get(r, {}).get("added", [])},
                }
                r = runs[f"{label}@{budget}x"]
                print(f"{label:>7} @ {budget}x: budget {r['budget_ms']:.3f} ms, measured {r['measured']['median_ms']:.3f} ms, "
                      f"MACs kept {r['macs_ratio']:.3f}, params kept {r['params_ratio']:.3f}, "
                      f"refined widths chosen {r['refined_widths_chosen']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    atomic_write_json(RESULTS, {
        "benchmark": "staircases", "model": args.model, "input": args.input, "fingerprint": backend.fingerprint(),
        "refinement": {"keys_coarse": coarse_report.keys, "keys_refined": report.keys,
                       "measured_now": report.measured, "seconds": round(refine_s, 1),
                       "coarse_profile_seconds_now": round(coarse_s, 1), "calibration": report.calibration,
                       "staircases": stairs},
        "runs": runs, "plot": plot,
    })
    print(f"wrote {RESULTS} and {plot}")


if __name__ == "__main__":
    main()
