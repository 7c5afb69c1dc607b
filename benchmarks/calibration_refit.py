"""Benchmark: the calibration with its weights term against the linear one, on the zoo's fidelity rows.

    python benchmarks/calibration_refit.py RESULTS.json [RESULTS.json ...] [--tag NAME]

For every row of the fidelity zoo's result files (``lut_fidelity.py --zoo``) whose LUT is on
disk, the calibration is fitted again on the LUT's own calibration points (the whole-model
measurements ``profile`` made; their width configurations drawn again by the same seeded rule,
and checked against the unit sums stored with them) in two forms, each by
:func:`latprune.latency_lut.calibrate.fit`:

- ``linear``: ``scale · Σunits + offset`` (and the per-removed-unit term): ``fit`` without
  the configurations' weights;
- ``weights``: ``scale · Σunits · (1 + per_weight_mib · W) + offset``, W the configuration's
  weights in MiB: the rule ``profile`` fits.

Each is scored on the row's random configurations, measured minutes later by ``lut fidelity``:
as stored (median |error|, share within ±10%) and re-anchored on the full model measured at the
start of that run, as ``prune`` uses a LUT; beside them, the row's repeat score (the machine's
floor). Beside them, ``shift``: the calibration's own points against the rule fitted on the
row's random configurations (the machine as ``lut fidelity`` found it), as measured / predicted
- 1, median and p10-p90 over the points: a shift of every point alike is the machine running at
another speed while it calibrated, which the repeat score (two passes of one run) cannot show.
A row whose LUT's units changed since its calibration, or whose calibration is gone, says so
and is left out. Writes ``benchmarks/results/calibration_refit[_NAME].json``. It times
nothing: it runs anywhere, in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import score_cell, write_json  # noqa: E402
from zoo import fitted_model  # noqa: E402

HERE = Path(__file__).resolve().parent
RAW_TOLERANCE = 1e-6  # relative: a calibration point's stored unit sum against the LUT's now


def scores(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    err = np.abs(predicted / measured - 1) * 100
    return {"median_abs_pct": round(float(np.median(err)), 2), "within_10_pct": round(float((err <= 10).mean()), 2)}


def refit_row(row: dict[str, Any], benchmarks: Path) -> dict[str, Any]:
    """Both forms' scores on one fidelity row (see the module docstring), or why it is left out."""
    from latprune.graph.check import checked_graph
    from latprune.latency_lut.backends import get_backend
    from latprune.latency_lut.calibrate import calibration_configs, fit
    from latprune.latency_lut.predict import Predictor
    from latprune.latency_lut.profile import load_calibration
    from latprune.latency_lut.store import Lut

    path = benchmarks / row["lut"]
    if not path.is_file():
        return {"skipped": f"no LUT at {path}"}
    spec, _, _ = fitted_model(row["model"], row["input"][-1])
    graph = get_backend(row.get("backend", "ort-cpu"), 1).keyed(checked_graph(spec.model, tuple(row["input"])))
    with Lut.open(path) as lut:
        stored, loaded = lut.calibration(graph.signature()), load_calibration(lut, graph.signature())
        if stored is None or loaded is None:
            return {"skipped": "the LUT holds no calibration for this model as latprune keys it now"}
        predictor = Predictor(lut, graph)
        points = stored["points"]
        configs = calibration_configs(graph.options(loaded[1], blocks=bool(graph.blocks)), len(points))
        raw = np.array([predictor.unit_sum(w) for w in configs])
        if np.max(np.abs(raw / np.array([p["raw_ms"] for p in points]) - 1)) > RAW_TOLERANCE:
            return {"skipped": "the LUT's units changed since its calibration was measured"}
        measured = np.array([p["measured_ms"] for p in points])
        removed = np.array([p["removed_units"] for p in points], dtype=float)
        weights = np.array([predictor.weights_mib(w) for w in configs])
        forms = {"linear": fit(list(raw), list(measured), list(removed)),
                 "weights": fit(list(raw), list(measured), list(removed), list(weights))}
        ids = sorted(g.id for g in graph.groups)
        tests = [dict(zip(ids, p["widths"])) for p in row["points"]]
        t_raw = np.array([predictor.unit_sum(w) for w in tests])
        t_removed = np.array([len(graph.removed_units(w)) for w in tests], dtype=float)
        t_weights = np.array([predictor.weights_mib(w) for w in tests])
        full = graph.full_widths()
        full_raw, full_weights = predictor.unit_sum(full), predictor.weights_mib(full)
    t_measured = np.array([p["measured_ms"] for p in row["points"]])
    # the full model as the fidelity run measured it first: its drift over the stored prediction
    full_measured = row["drift"] * loaded[0].from_units(full_raw, 0, full_weights)
    now = fit(list(t_raw), list(t_measured), list(t_removed), list(t_weights))
    shift = (measured / now.from_units(raw, removed, weights) - 1) * 100
    out: dict[str, Any] = {"model": row["model"], "input": row["input"], "points": len(points),
                           "shift_pct": [round(float(np.percentile(shift, q)), 1) for q in (50, 10, 90)],
                           "weights_mib": [round(float(weights.min()), 1), round(float(weights.max()), 1)],
                           "repeat": {k: round(row["repeat"][k], 2) for k in ("median_abs_pct", "within_10_pct")}}
    for name, cal in forms.items():
        predicted = cal.from_units(t_raw, t_removed, t_weights)
        anchored = predicted * full_measured / cal.from_units(full_raw, 0, full_weights)
        out[name] = {"stored": scores(predicted, t_measured), "anchored": scores(anchored, t_measured),
                     "scale": round(cal.scale, 4), "offset_ms": round(cal.offset_ms, 4),
                     "per_weight_mib": round(cal.per_weight_mib, 5)}
    return out


def table(rows: dict[str, dict[str, Any]]) -> str:
    """The BENCHMARKS.md table: each row's scores in both forms beside its floor."""
    lines = ["| model@size | weights (MiB) | per MiB | linear: stored | weights: stored | linear: anchored "
             "| weights: anchored | repeat (the floor) | shift (p10–p90) |", "|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for key, r in rows.items():
        if "skipped" in r:
            lines.append(f"| {key} | {r['skipped']} |" + " |" * 7)
            continue
        lin, wt = r["linear"], r["weights"]
        shift = f"{r['shift_pct'][0]:+.1f}% ({r['shift_pct'][1]:+.1f}…{r['shift_pct'][2]:+.1f})" \
            if "shift_pct" in r else "–"
        lines.append(f"| {key} | {r['weights_mib'][0]}–{r['weights_mib'][1]} | {wt['per_weight_mib']:+.4f} | "
                     f"{score_cell(lin['stored'])} | {score_cell(wt['stored'])} | {score_cell(lin['anchored'])} | "
                     f"{score_cell(wt['anchored'])} | {score_cell(r['repeat'])} | {shift} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="fidelity zoo result files (rows keyed model@size)")
    parser.add_argument("--tag", help="suffix of the result file")
    args = parser.parse_args()
    rows: dict[str, dict[str, Any]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in args.results:
            benchmarks = path.resolve().parent.parent  # the rows' LUT paths are relative to it
            for key, row in json.loads(path.read_text()).items():
                if row.get("points") and row.get("repeat") and row.get("lut"):
                    rows[f"{key} ({path.stem.removeprefix('lut_fidelity_zoo_')})"] = refit_row(row, benchmarks)
                    print(key, rows[next(reversed(rows))].get("weights", {}).get("stored"), flush=True)
    out = HERE / "results" / f"calibration_refit{'_' + args.tag if args.tag else ''}.json"
    write_json(out, {"sources": [str(p) for p in args.results], "rows": rows})
    print(table(rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
