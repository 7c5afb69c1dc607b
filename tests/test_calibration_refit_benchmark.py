"""benchmarks/calibration_refit.py: both calibration forms refitted on a LUT's own points."""

from __future__ import annotations

from pathlib import Path

from latprune.graph.channels import ChannelGraph
from latprune.latency_lut.backends import get_backend
from latprune.latency_lut.calibrate import random_configs
from latprune.latency_lut.profile import build_lut, load_calibration
from latprune.latency_lut.store import Lut
from tests.conftest import load_benchmark


def test_a_device_linear_in_its_units_keeps_the_line_and_a_changed_lut_is_told(tmp_path: Path) -> None:
    """The fake device times a model at exactly 1.1 · Σunits + 0.02 ms: refitted on the LUT's 12
    calibration points, the weights term stays out and both forms predict the row's configurations
    exactly, and its calibration points sit on the row's own fit (no shift) or, the row measured 10%
    slower, all 9.1% under it; a LUT whose units changed since its calibration is left out, saying so."""
    bench = load_benchmark("calibration_refit")
    spec, _, _ = bench.fitted_model("mobilenet_v3_small", 32)
    backend = get_backend("fake", threads=1)
    graph = ChannelGraph.build(spec.model, spec.input_shape)
    build_lut(graph, tmp_path / "luts" / "m.lut", backend, levels=4, progress=False)
    with Lut.open(tmp_path / "luts" / "m.lut") as lut:
        grid = load_calibration(lut, graph.signature())[1]
    ids = sorted(g.id for g in graph.groups)
    configs = random_configs(graph.options(grid), 4, seed=3)
    points = [{"widths": [w[g] for g in ids],
               "measured_ms": backend.measure_model(graph.slim_to_widths(w), spec.input_shape).median_ms}
              for w in configs]
    row = {"model": "mobilenet_v3_small", "input": list(spec.input_shape), "lut": "luts/m.lut", "backend": "fake",
           "drift": 1.0, "points": points, "repeat": {"median_abs_pct": 0.0, "within_10_pct": 1.0}}
    out = bench.refit_row(row, tmp_path)
    assert out["points"] == 12 and out["weights"]["per_weight_mib"] == 0.0
    for form in ("linear", "weights"):
        assert out[form]["stored"]["median_abs_pct"] < 0.01 and out[form]["anchored"]["within_10_pct"] == 1.0
    assert max(map(abs, out["shift_pct"])) < 0.1
    slower = {**row, "points": [{**p, "measured_ms": p["measured_ms"] * 1.1} for p in points]}
    shift = bench.refit_row(slower, tmp_path)["shift_pct"]  # the machine 10% slower than while it calibrated
    assert all(abs(v - (1 / 1.1 - 1) * 100) < 0.1 for v in shift)
    with Lut.open(tmp_path / "luts" / "m.lut", writable=True) as lut:
        stored = lut.calibration(graph.signature())
        stored["points"][3]["raw_ms"] *= 1.01
        lut.set_calibration(graph.signature(), stored)
    assert "changed" in bench.refit_row(row, tmp_path)["skipped"]
