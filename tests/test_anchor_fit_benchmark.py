"""benchmarks/anchor_fit.py: a calibration refitted through the full model's point."""

from __future__ import annotations

import pytest

from tests.conftest import load_benchmark


def test_the_line_through_the_full_model_recovers_its_offset_and_scores_both_ways() -> None:
    """Points on ``measured = 2 · Σunits − 0.4`` give k = −0.2 through the full-width point; a
    row whose stored fit is off at full width scores worse anchored than the refitted one."""
    bench = load_benchmark("anchor_fit")
    raw = [3.0, 2.0, 1.5, 1.0, 0.8]
    points = [{"raw_ms": x, "measured_ms": 2 * x - 0.4, "removed_units": 0} for x in raw]
    assert bench.fit_through_base(points, 0.0) == pytest.approx(-0.2, abs=5e-3)
    stored = {"points": points, "scale": 1.8, "offset_ms": -0.1, "removed_unit_ms": 0.0}
    base_predicted = 1.8 * 3.0 - 0.1
    row = {"drift": (2 * 3.0 - 0.4) / base_predicted, "repeat": {"median_abs_pct": 1.0, "within_10_pct": 1.0},
           "points": [{"raw_ms": x, "removed_units": 0, "measured_ms": 2 * x - 0.4, "predicted_ms": 1.8 * x - 0.1,
                       "anchored_ms": (1.8 * x - 0.1) * (2 * 3.0 - 0.4) / base_predicted} for x in (2.5, 1.2)]}
    scored = bench.score_row(row, stored)
    assert scored["anchored_through_base"]["median_abs_pct"] < 0.5 < scored["anchored"]["median_abs_pct"]
    assert scored["full_width_error_pct"] == pytest.approx((base_predicted / 5.6 - 1) * 100, abs=0.01)
