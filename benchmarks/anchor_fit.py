"""Benchmark: would a calibration fitted through the full model predict re-anchored configurations better?

    python benchmarks/anchor_fit.py [--results lut_fidelity_zoo_ort-cpu_1t_s48.json,...]

``prune`` measures the base model and re-anchors every prediction on it: a configuration is
predicted at ``measured_base · (Σunits + k) / (Σunits_base + k)``, where ``k = offset / scale``
of the stored calibration. The calibration is fitted over all its configurations alike (full
width, uniform levels, removals, random ones), so the full model, the one point every anchored
prediction hangs on, lies off its own fit where the model's time is not affine in the unit
sum. This refits each fidelity row's calibration through its full-width point (``k`` alone,
chosen to minimise the median relative error of the others, the removed-unit term as stored)
and scores the row's measured configurations both ways:

- ``anchored``: on the row's measured base (``lut_fidelity.py``'s anchored column), stored
  ``k`` against the refitted one;
- ``stored``: the calibration as stored against the refitted line through the calibration's
  own full-width measurement.

Beside them, the full-width point's error under the stored fit, and the row's repeat score.
Reads each row's LUT under ``benchmarks/`` (rows whose LUT is gone, or whose calibration scales
the units with the configuration's weights and so is no line, are left out). It times
nothing. Writes ``benchmarks/results/anchor_fit.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import score_cell, write_json  # noqa: E402

HERE = Path(__file__).parent
DEFAULT_RESULTS = ("lut_fidelity_zoo_ort-cpu_1t.json", "lut_fidelity_zoo_ort-cpu_1t_s48.json",
                   "lut_fidelity_zoo_ort-cpu_1t_s48half.json", "lut_fidelity_zoo_ort-cpu_1t_scale.json")


def fit_through_base(points: list[dict[str, float]], removed_unit_ms: float) -> float:
    """``k`` of the line through the first (full-width) point that minimises the median
    relative error of the others: ``measured_i ≈ measured_0 · (x_i + k) / (x_0 + k)``, ``x`` the
    unit sum with ``removed_unit_ms`` per removed unit."""
    x = np.array([p["raw_ms"] + removed_unit_ms * p.get("removed_units", 0) for p in points])
    m = np.array([p["measured_ms"] for p in points])
    candidates = np.linspace(-0.95 * x.min(), 5 * x[0], 4000)
    cost = [np.median(np.abs(m[0] * (x[1:] + k) / (x[0] + k) / m[1:] - 1)) for k in candidates]
    return float(candidates[int(np.argmin(cost))])


def score(predicted: list[float], measured: list[float]) -> dict[str, float]:
    err = np.abs(np.asarray(predicted) / np.asarray(measured) - 1) * 100
    return {"median_abs_pct": round(float(np.median(err)), 2), "within_10_pct": round(float(np.mean(err <= 10)), 2)}


def stored_calibration(row: dict[str, Any]) -> dict[str, Any] | None:
    """The calibration the row was scored with, with its points, from the row's LUT (None if gone)."""
    from latprune.errors import LutError
    from latprune.latency_lut.store import Lut

    try:
        lut = Lut.open(HERE / row["lut"])
    except LutError:
        return None
    scale = row["calibration"]["scale"]
    with lut:
        return next((c for c in lut.calibrations().values() if c.get("points")
                     and abs(c["scale"] - scale) <= 1e-6 * abs(scale)), None)


def score_row(row: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """The row's configurations scored with the stored calibration and with one through its full model."""
    points, r = stored["points"], stored.get("removed_unit_ms", 0.0)
    scale, offset = stored["scale"], stored["offset_ms"]
    x_base, m_base_cal = points[0]["raw_ms"], points[0]["measured_ms"]
    k = fit_through_base(points, r)
    base_measured = row["drift"] * (scale * x_base + offset)  # the row's anchor: its base measured
    configs = row["points"]
    x = [p["raw_ms"] + r * p["removed_units"] for p in configs]
    measured = [p["measured_ms"] for p in configs]
    return {
        "k_stored": round(offset / scale, 4), "k_through_base": round(k, 4),
        "full_width_error_pct": round(((scale * x_base + offset) / m_base_cal - 1) * 100, 2),
        "anchored": score([p["anchored_ms"] for p in configs], measured),
        "anchored_through_base": score([base_measured * (xi + k) / (x_base + k) for xi in x], measured),
        "stored": score([p["predicted_ms"] for p in configs], measured),
        "stored_through_base": score([m_base_cal * (xi + k) / (x_base + k) for xi in x], measured),
        "repeat": row["repeat"],
    }


def table(result: dict[str, Any]) -> str:
    lines = ["| row | full width, stored fit | anchored | anchored, through base | stored | stored, through base "
             "| repeat |", "|---|--:|--:|--:|--:|--:|--:|"]
    for name, r in result["rows"].items():
        cells = [score_cell(r[k]) for k in ("anchored", "anchored_through_base", "stored", "stored_through_base",
                                             "repeat")]
        lines.append(f"| {name} | {r['full_width_error_pct']:+.1f}% | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=",".join(DEFAULT_RESULTS),
                        help="comma-separated fidelity zoo result files under benchmarks/results/")
    args = parser.parse_args()
    rows = {}
    for name in args.results.split(","):
        tag = name.removeprefix("lut_fidelity_zoo_ort-cpu_1t").removesuffix(".json").lstrip("_") or "first"
        for key, row in json.loads((HERE / "results" / name).read_text()).items():
            stored = None if row.get("failed") or not row.get("points") else stored_calibration(row)
            if stored is not None and not stored.get("per_weight_mib"):
                rows[f"{key} ({tag})"] = score_row(row, stored)
    medians = {col: round(float(np.median([r[col]["median_abs_pct"] for r in rows.values()])), 2)
               for col in ("anchored", "anchored_through_base", "stored", "stored_through_base")}
    result = {"results": args.results.split(","), "rows": rows, "median_over_rows": medians,
              "anchored_better": sum(r["anchored_through_base"]["median_abs_pct"] < r["anchored"]["median_abs_pct"]
                                     for r in rows.values()),
              "stored_better": sum(r["stored_through_base"]["median_abs_pct"] < r["stored"]["median_abs_pct"]
                                   for r in rows.values())}
    write_json(HERE / "results" / "anchor_fit.json", result)
    print(table(result))
    print(json.dumps({k: result[k] for k in ("median_over_rows", "anchored_better", "stored_better")}), len(rows))


if __name__ == "__main__":
    main()
