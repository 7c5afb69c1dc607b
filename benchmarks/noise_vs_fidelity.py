"""Benchmark analysis: is a fidelity miss the LUT's, or the machine's noise?

    python benchmarks/noise_vs_fidelity.py

Reads every stored ``benchmarks/results/lut_fidelity*.json`` run (each point
keeps its measured median, p10 and p90) and tabulates, per model and run, two
noise figures against the score: the measurements' median p10-p90 spread in
% of their medians (``spread``, what ``lut fidelity`` now reports) and the
stored calibration's median residual (what ``profile`` now warns on). A last
column refits each run's unit sums to its configurations' p10s instead of
their medians (cross-validated, as ``lut fidelity``'s ``refit``): the share
within ±10% there, against the medians' refit, tells whether the LUT
predicts the runs that the machine's slow spells spared (session 23). It
measures nothing itself: it is how the thresholds ``NOISY_SPREAD_PCT`` and
``NOISY_RESIDUAL_PCT`` (``latency_lut/timing.py``) were chosen, rerun when
a new fidelity run lands.

A second table replays the rule of passes on the runs that keep every pass
(``pass_ms``, since session 25): the rule is adaptive but each pass decides
only on the ones before it, so the first k passes of a configuration are what
a run allowed at most k passes would have measured. Per run and k, the share
within ±10% of the unit sums refitted to the faster of those k passes; how
``MODEL_MAX_PASSES`` (``latency_lut/profile.py``) was chosen. Writes
``benchmarks/results/noise_vs_fidelity.json`` and prints both tables for
BENCHMARKS.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from latprune._io import atomic_write_json
from latprune.latency_lut.fidelity import ErrorStats, refit_predictions
from latprune.latency_lut.timing import NOISY_RESIDUAL_PCT, NOISY_SPREAD_PCT, points_spread_pct

RESULTS = Path(__file__).parent / "results"


Run = tuple[str, str, dict[str, Any], list[dict[str, Any]]]  # file, model, entry, its points


def stored_runs() -> list[Run]:
    """Every model entry with points of every stored fidelity result file, each file read once."""
    out = []
    for path in sorted(RESULTS.glob("lut_fidelity*.json")):
        for name, entry in json.loads(path.read_text()).items():
            points = entry.get("points") if isinstance(entry, dict) else None
            if points:
                out.append((path.name, name, entry, points))
    return out


def rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per run whose points carry their percentiles."""
    out = []
    for file, name, entry, points in runs:
        if "p10_ms" not in points[0] or "stored" not in entry:
            continue
        fp = entry.get("fingerprint", {})
        refit = entry.get("refit") or {}
        out.append({
            "file": file, "model": name, "backend": fp.get("backend"), "threads": fp.get("threads"),
            "device": fp.get("device"), "samples": len(points),
            "spread_pct": points_spread_pct(points),
            "residual_pct": (entry.get("calibration") or {}).get("residual_pct"),
            "median_abs_pct": entry["stored"]["median_abs_pct"],
            "within_10_pct": entry["stored"]["within_10_pct"],
            "refit_within_10_pct": refit.get("within_10_pct"),
            "refit_p10_within_10_pct": refit_p10_within_10(points),
        })
    return out


def refit_p10_within_10(points: list[dict[str, Any]]) -> float | None:
    """The share of ``points`` within ±10% of their p10 when the unit sums are refitted to
    the p10s (K-fold, as ``lut fidelity``'s refit); None for points stored without unit sums."""
    if len(points) < 4 or any("raw_ms" not in p for p in points):
        return None
    p10 = [p["p10_ms"] for p in points]
    refitted = refit_predictions([p["raw_ms"] for p in points], p10, [p.get("removed_units", 0) for p in points])
    return ErrorStats.of(refitted, p10).within_10_pct


def pass_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """Per run whose points keep every pass: the passes it used, and per cap k on the
    passes the refit's median |error| and share within ±10% of the faster of the first
    k passes."""
    out = []
    for file, name, entry, points in runs:
        if len(points) < 4 or any("pass_ms" not in p or "raw_ms" not in p for p in points):
            continue
        used = [len(p["pass_ms"]) for p in points]
        by_cap: dict[int, dict[str, float]] = {}
        for k in range(2, max(used) + 1):
            kept = [min(p["pass_ms"][:k]) for p in points]
            refit = ErrorStats.of(refit_predictions([p["raw_ms"] for p in points], kept,
                                                    [p.get("removed_units", 0) for p in points]), kept)
            by_cap[k] = {"median_abs_pct": refit.median_abs_pct, "within_10_pct": refit.within_10_pct}
        # runs written before lut_fidelity.py recorded max_passes (session 25's first) had the cap of 4
        out.append({"file": file, "model": name, "max_passes": entry.get("max_passes") or 4,
                    "mean_passes": sum(used) / len(used), "by_cap": by_cap})
    return out


def main() -> None:
    runs = stored_runs()
    table = sorted(rows(runs), key=lambda r: r["spread_pct"])
    passes = pass_rows(runs)
    atomic_write_json(RESULTS / "noise_vs_fidelity.json",
                      {"noisy_spread_pct": NOISY_SPREAD_PCT, "noisy_residual_pct": NOISY_RESIDUAL_PCT, "runs": table,
                       "passes": passes})
    print("| result file | model | threads | spread (p10–p90) | calibration residual | median \\|error\\| "
          "| within ±10% | refit ±10% | p10 refit ±10% |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in table:
        res = "—" if r["residual_pct"] is None else f"{r['residual_pct']:.2f}%"
        refit, p10 = ("—" if v is None else f"{100 * v:.0f}%"
                      for v in (r["refit_within_10_pct"], r["refit_p10_within_10_pct"]))
        print(f"| {r['file']} | {r['model']} | {r['threads']} | {r['spread_pct']:.1f}% | {res} | "
              f"{r['median_abs_pct']:.2f}% | {100 * r['within_10_pct']:.0f}% | {refit} | {p10} |")
    caps = sorted({k for r in passes for k in r["by_cap"]})
    print("\n| result file | model | passes allowed | passes used (mean) | "
          + " | ".join(f"refit ±10%, at most {k}" for k in caps) + " |")
    print("|---|---|---|---|" + "---|" * len(caps))
    for r in passes:
        cells = [f"{100 * r['by_cap'][k]['within_10_pct']:.0f}%" if k in r["by_cap"] else "—" for k in caps]
        print(f"| {r['file']} | {r['model']} | {r['max_passes']} | {r['mean_passes']:.2f} | "
              + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
