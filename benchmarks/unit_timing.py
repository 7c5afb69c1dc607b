"""Benchmark: which unit timing predicts whole-model latency better on ort-cpu.

    python benchmarks/unit_timing.py [--models mobilenet_v2,efficientnet-lite0,resnet18]
                                     [--threads 2] [--passes 2] [--samples 50] [--force]

Two ways to fill a LUT entry, measured side by side so that the machine's
drift lands on both alike:

- ``session``: the wall time of the unit's one-unit ONNX Runtime session
  (latprune before session 7), the residual fed as a second input;
- ``kernel``: the unit's kernel time from ONNX Runtime's profiler, without
  the NCHWc layout conversions that a unit pays alone and not inside a whole
  model, the residual produced by an auxiliary convolution so that the add
  fuses as it does in the whole model (latprune's ort-cpu backend now).

For each key of the model's 8-level, 8-aligned grid, each pass times it both
ways back to back (passes in alternating order, fastest median kept). Then
the whole model is measured once per configuration, for both: the 12
calibration configurations of ``latprune profile`` and ``--samples`` random
ones (seed 1234, as ``lut fidelity``), each in 3 rounds beside the full
model (see :func:`measure_paired`). Each way gets its own calibration fit
on the same 12 measurements and is scored on the same random ones, once on
the measured latencies and once on the latencies normalised by the full
model timed beside them (on a VM whose speed changes by 2x from one minute
to the next, as on 2026-11-30, only the second compares the two ways).
Unit entries go to benchmarks/luts/unit-timing-<model>-<mode>-<t>t.lut as
they are measured (a killed run resumes); results to
benchmarks/results/unit_timing.json (resumable per model).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from latprune._io import atomic_write_json
from latprune._progress import bar
from latprune.latency_lut.backends import get_backend
from latprune.latency_lut.backends.ort_cpu import kernel_latency, make_session, unit_onnx
from latprune.latency_lut.calibrate import calibration_configs, fit, random_configs
from latprune.latency_lut.fidelity import ErrorStats
from latprune.latency_lut.predict import Predictor
from latprune.latency_lut.profile import grid_keys, keep_faster
from latprune.latency_lut.store import Lut
from latprune.models import load_model
from latprune.pruner.graph import ChannelGraph, Grid

HERE = Path(__file__).parent
SPECS = {"resnet18": "torchvision:resnet18", "mobilenet_v2": "torchvision:mobilenet_v2",
         "efficientnet-lite0": "efficientnet-lite0"}
MODES = ("session", "kernel")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mobilenet_v2,efficientnet-lite0,resnet18")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    results_path = HERE / "results" / "unit_timing.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    backend = get_backend("ort-cpu", args.threads)
    for name in args.models.split(","):
        if name in results and not args.force:
            print(f"{name}: already in {results_path}, skipped (--force re-runs)")
            continue
        results[name] = compare(name, backend, args.passes, args.samples)
        atomic_write_json(results_path, results)
        for mode in MODES:
            for series, r in results[name][mode].items():
                s = r["stats"]
                print(f"{name} {mode:7s} {series:13s}: median |err| {s['median_abs_pct']:.2f}%, within 5% "
                      f"{100 * s['within_5_pct']:.0f}%, within 10% {100 * s['within_10_pct']:.0f}%, "
                      f"Spearman {s['spearman']:.3f}; calibration {r['calibration']}")


def compare(name: str, backend, passes: int, samples: int) -> dict:  # type: ignore[no-untyped-def]
    spec = load_model(SPECS[name], "1x3x224x224")
    graph = ChannelGraph.build(spec.model, spec.input_shape)
    grid = Grid(8, backend.preferred_align)
    keys = grid_keys(graph, grid)
    luts = {m: open_or_create(HERE / "luts" / f"unit-timing-{name}-{m}-{backend.threads}t.lut", backend, m)
            for m in MODES}
    start = time.time()
    for p in range(1, passes + 1):
        order = keys if p % 2 else list(reversed(keys))
        todo = [k for k in order if min(luts[m].passes(k) for m in MODES) < p]
        for key in bar(todo, desc=f"{name} units pass {p}/{passes}", unit="unit"):
            lats = {"session": backend.measure_session(make_session(unit_onnx(key), backend.threads)),
                    "kernel": kernel_latency(unit_onnx(key, aux_residual=True), backend.threads, backend.timing)}
            for mode, lat in lats.items():  # commit as measured: a killed run resumes
                keep_faster(luts[mode], key, lat, passes=p)
    units_s = time.time() - start
    # removals=0: the configurations of its documented run (session 7), before the removing ones of session 20
    cal_configs = calibration_configs(graph.options(grid, blocks=bool(graph.blocks)), 12, removals=0)
    test_configs = random_configs(graph.options(grid), samples, 1234)
    start = time.time()
    paired = measure_paired(graph, backend, cal_configs + test_configs, desc=f"{name} models")
    models_s = time.time() - start
    out: dict = {"model": spec.name, "keys": len(keys), "passes": passes, "units_seconds": round(units_s, 1),
                 "models_seconds": round(models_s, 1), "fingerprint": backend.fingerprint(), **paired}
    n_cal = len(cal_configs)
    for mode in MODES:
        out[mode] = {}
        for series in ("measured_ms", "normalised_ms"):
            cal_ms, test_ms = paired[series][:n_cal], paired[series][n_cal:]
            raw = Predictor(luts[mode], graph)
            cal = fit([raw.raw(w) for w in cal_configs], cal_ms, [len(graph.removed_units(w)) for w in cal_configs])
            predicted = [Predictor(luts[mode], graph, cal).predict(w) for w in test_configs]
            out[mode][series] = {"calibration": {"scale": round(cal.scale, 4), "offset_ms": round(cal.offset_ms, 4),
                                                 "residual_pct": round(cal.residual_pct, 2)},
                                 "stats": asdict(ErrorStats.of(predicted, test_ms)), "predicted_ms": predicted}
    for lut in luts.values():
        lut.close()
    return out


def open_or_create(path: Path, backend, mode: str) -> Lut:  # type: ignore[no-untyped-def]
    path.parent.mkdir(parents=True, exist_ok=True)
    fingerprint = {**backend.fingerprint(), "unit_timing": mode}
    return Lut.open(path, writable=True) if path.exists() else Lut.create(path, fingerprint)


def measure_paired(graph: ChannelGraph, backend, configs: list[dict[int, int]], desc: str,  # type: ignore[no-untyped-def]
                   rounds: int = 3) -> dict[str, list[float]]:
    """Each configuration timed in ``rounds`` rounds, each round the full model then the
    configuration, back to back; ``measured_ms`` is the configuration's fastest median,
    ``normalised_ms`` its median ratio to the full model timed beside it, times the full
    model's median over the whole run: the machine's speed at that moment cancels."""
    full = graph.slim_to_widths(graph.full_widths())
    fastest, ratios, refs = [], [], []
    for widths in bar(configs, desc=desc, unit="model"):
        model = graph.slim_to_widths(widths)
        pairs = [(backend.measure_model(full, graph.input_shape).median_ms,
                  backend.measure_model(model, graph.input_shape).median_ms) for _ in range(rounds)]
        fastest.append(min(c for _, c in pairs))
        ratios.append(float(np.median([c / r for r, c in pairs])))
        refs += [r for r, _ in pairs]
    ref = float(np.median(refs))
    return {"measured_ms": fastest, "normalised_ms": [q * ref for q in ratios], "full_model_ms": refs}


if __name__ == "__main__":
    main()
