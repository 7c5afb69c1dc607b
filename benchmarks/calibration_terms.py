"""Experiment: how well does a LUT's stored calibration predict the candidates a pruner measures? (session 19)

    python benchmarks/calibration_terms.py MODEL LUT RUN_DIR [RUN_DIR ...] [--input 1x1x28x28] [--json OUT]

Every closed-loop candidate of the given run directories (from `metrics.json`:
its widths and its measured latency, on the scale of the base measured at the
start of that prune) is predicted from the LUT with two calibrations, each
re-anchored on the full model as `prune` does (prediction × base measured /
prediction of the full model):

- ``stored``: the calibration stored in the LUT (as the profile fitted it);
- ``refit``: :func:`latprune.latency_lut.calibrate.fit` as it is now, on the
  same stored calibration points.

Prints each one's median |error|, mean error, and every candidate's error with
the number of blocks it removes; ``--json`` writes them. Candidates without
widths in their history (``uniform-l1``, ``flops``) are skipped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("lut", type=Path)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--input", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from latprune._io import atomic_write_json
    from latprune.latency_lut.calibrate import fit
    from latprune.latency_lut.predict import Calibration, Predictor
    from latprune.latency_lut.store import Lut
    from latprune.models import load_model
    from latprune.pruner.graph import ChannelGraph

    spec = load_model(args.model, args.input)
    graph = ChannelGraph.build(spec.model, spec.input_shape)
    group_of = {g.root: g.id for g in graph.groups}
    with Lut.open(args.lut) as lut:
        stored = lut.calibration(graph.signature())
        if stored is None:
            raise SystemExit(f"{args.lut} holds no calibration for this model; run `latprune profile` first")
        predictor = Predictor(lut, graph)
        raw_full = predictor.unit_sum(graph.full_widths())
        candidates: list[dict[str, Any]] = []
        for run in args.runs:
            m = json.loads((run / "metrics.json").read_text())
            base_ms = m["base"]["latency_ms"]["median_ms"]
            for h in m["closed_loop"]:
                if "widths" not in h:
                    continue
                widths = {group_of[root]: w for root, w in h["widths"].items()}
                candidates.append({"run": run.name, "method": m["method"], "raw_ms": predictor.unit_sum(widths),
                                   "removed_units": len(graph.removed_units(widths)),
                                   "removed_blocks": len(h["removed_blocks"]), "measured_ms": h["measured_ms"],
                                   "base_ms": base_ms})
    points = stored["points"]
    calibrations = {
        "stored": Calibration(stored["scale"], stored["offset_ms"], stored["residual_pct"], len(points),
                              stored.get("removed_unit_ms", 0.0)),
        "refit": fit([p["raw_ms"] for p in points], [p["measured_ms"] for p in points],
                     [p["removed_units"] for p in points]),
    }
    out: dict[str, Any] = {"model": args.model, "lut": str(args.lut), "fit": stored.get("fit"),
                           "calibration_points": points, "candidates": candidates, "calibrations": {}}
    for name, cal in calibrations.items():
        full = float(cal.from_units(np.array([raw_full]), np.array([0]))[0])
        errors = []
        for c in candidates:
            predicted = float(cal.from_units(np.array([c["raw_ms"]]), np.array([c["removed_units"]]))[0])
            errors.append(100 * (predicted * c["base_ms"] / full / c["measured_ms"] - 1))
        e = np.array(errors)
        out["calibrations"][name] = {"calibration": vars(cal), "errors_pct": errors,
                                     "median_abs_pct": float(np.median(np.abs(e))), "mean_pct": float(e.mean())}
        print(f"{name}: scale {cal.scale:.3f}, offset {cal.offset_ms:+.4f} ms, per removed unit "
              f"{cal.removed_unit_ms:+.5f} ms; {len(e)} candidates: median |error| {np.median(np.abs(e)):.1f}%, "
              f"mean {e.mean():+.1f}%")
        print("   (method, blocks removed, error %): " + ", ".join(
            f"({c['method']}, {c['removed_blocks']}, {v:+.1f})" for c, v in zip(candidates, errors)))
    if args.json:
        atomic_write_json(args.json, out)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
