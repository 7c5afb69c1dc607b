"""Experiment: do calibration points that remove blocks predict block-removing configurations better? (session 20)

    python benchmarks/removal_calibration.py [--arch resnet56|resnet20] [--threads 1]
        [--cal-samples 8] [--samples 40] [--tag zen5]

A LUT's calibration (``latprune.latency_lut.calibrate``) fits
``measured ≈ scale · (Σunits + removed_unit_ms · removed units) + offset``.
Its per-removed-unit term needs three points that remove blocks; the random
calibration configurations remove blocks only at their narrowest levels, so
on ResNet-56 (8 points, the accuracy benchmark's setting) the term was rarely
fitted, and the pruner's candidates at 0.3x, which remove 20–36 units at
moderate widths, came out up to 22% slower than predicted.

This script profiles the architecture's LUT (untrained weights: latency
depends on the shapes, not the values; ``benchmarks/luts/``, resumable), then
measures, each right after the full model (``measure_widths_beside``):

- ``random``: the calibration configurations as before session 20
  (full width, three uniform levels, random ones; ``removals=0``);
- ``removals``: today's (the same, with three configurations that remove a
  quarter, a half and three quarters of the removable blocks);
- a test set like the pruner's solutions: a global keep level in [0.15, 1],
  every group within ±2 levels of it, and each removable block removed with
  a probability drawn in [0, 0.7] per configuration.

Both calibrations are fitted by the same :func:`~latprune.latency_lut.calibrate.fit`
on the same number of points and score the test set twice: absolute (as a
stored LUT predicts) and re-anchored on the full model measured just before
each configuration (as ``prune`` uses the LUT). Writes
``benchmarks/results/removal_calibration_<arch>[_<tag>].json`` and a PNG of
the error against the number of removed units.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ARCHS = {"resnet20": ((32, 64, 128), 3), "resnet56": ((16, 32, 64), 9)}


def pruner_like_configs(options: dict[int, list[int]], n: int, seed: int = 1234) -> list[dict[int, int]]:
    """Width configurations like a pruner's solution: a global keep level, every group
    within ±2 levels of it, and the removable blocks removed independently of the widths."""
    rng = random.Random(seed)
    configs = []
    for _ in range(n):
        level, p_remove = rng.uniform(0.15, 1.0), rng.uniform(0.0, 0.7)
        widths = {}
        for g, opts in options.items():
            kept = [w for w in opts if w > 0]
            i = int(round(level * (len(kept) - 1) + rng.uniform(-2, 2)))
            removable = opts[0] == 0
            widths[g] = 0 if removable and rng.random() < p_remove else kept[min(max(i, 0), len(kept) - 1)]
        configs.append(widths)
    return configs


def config_key(widths: dict[int, int]) -> tuple[int, ...]:
    """A width configuration as a hashable key (widths in group order)."""
    return tuple(widths[g] for g in sorted(widths))


def score(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    err = (predicted / measured - 1) * 100
    return {"median_abs_pct": float(np.median(np.abs(err))), "mean_pct": float(np.mean(err)),
            "within_5_pct": float(np.mean(np.abs(err) <= 5)), "within_10_pct": float(np.mean(np.abs(err) <= 10)),
            "worst_pct": float(err[np.argmax(np.abs(err))])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(ARCHS), default="resnet56")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cal-samples", type=int, default=8, help="calibration points per calibration (8: "
                        "the accuracy benchmark's setting; `latprune profile` defaults to 12)")
    parser.add_argument("--samples", type=int, default=40, help="test configurations")
    parser.add_argument("--tag", default="", help="suffix for the result names")
    args = parser.parse_args()

    from latprune._io import atomic_write_json
    from latprune.latency_lut.backends import get_backend
    from latprune.latency_lut.calibrate import FIT_METHOD, calibration_configs, fit
    from latprune.latency_lut.predict import Predictor
    from latprune.latency_lut.profile import build_lut, load_calibration, measure_widths_beside
    from latprune.latency_lut.store import Lut
    from latprune.models import ResNetCifar
    from latprune.pruner.graph import ChannelGraph

    widths, blocks = ARCHS[args.arch]
    model = ResNetCifar(widths, blocks).eval()
    graph = ChannelGraph.build(model, (1, 1, 28, 28))
    backend = get_backend("ort-cpu", args.threads)
    lut_path = HERE / "luts" / f"{args.arch}-ort-cpu-{args.threads}t.lut"
    lut_path.parent.mkdir(exist_ok=True)
    start = time.time()
    report = build_lut(graph, lut_path, backend, 8, args.cal_samples, args.arch, progress=True)
    profile_s = time.time() - start
    with Lut.open(lut_path) as lut:
        loaded = load_calibration(lut, graph.signature())
        assert loaded is not None
        grid = loaded[1]
        predictor = Predictor(lut, graph)
        options = graph.options(grid, blocks=True)
        sets = {"random": calibration_configs(options, args.cal_samples, removals=0),
                "removals": calibration_configs(options, args.cal_samples),
                "test": pruner_like_configs(options, args.samples)}
        unique: dict[tuple[int, ...], dict[int, int]] = {}  # configurations shared by the sets are measured once
        for configs in sets.values():
            for w in configs:
                unique.setdefault(config_key(w), w)
        keys = list(unique)
        start = time.time()
        pairs = measure_widths_beside(graph, backend, [unique[k] for k in keys], graph.full_widths(),
                                      desc="measure", progress=True)
        measure_s = time.time() - start
        by_key = {k: (lat.median_ms, ref.median_ms) for k, (lat, ref) in zip(keys, pairs)}
        raw = {k: predictor.unit_sum(unique[k]) for k in keys}
        removed = {k: len(graph.removed_units(unique[k])) for k in keys}
        raw_full = predictor.unit_sum(graph.full_widths())

    def points(name: str) -> list[dict[str, Any]]:
        out = []
        for w in sets[name]:
            k = config_key(w)
            out.append({"raw_ms": raw[k], "removed_units": removed[k], "measured_ms": by_key[k][0],
                        "full_beside_ms": by_key[k][1], "removed_blocks": len(graph.removed_blocks(w))})
        return out

    test = points("test")
    measured = np.array([p["measured_ms"] for p in test])
    test_raw = np.array([p["raw_ms"] for p in test])
    test_removed = np.array([p["removed_units"] for p in test], dtype=float)
    full_beside = np.array([p["full_beside_ms"] for p in test])
    results: dict[str, Any] = {"arch": args.arch, "threads": args.threads, "cal_samples": args.cal_samples,
                               "fit": FIT_METHOD,
                               "fingerprint": backend.fingerprint(), "lut": str(lut_path.relative_to(HERE.parent)),
                               "lut_keys_measured": report.measured, "profile_s": round(profile_s, 1),
                               "measure_s": round(measure_s, 1), "test": test, "calibrations": {}}
    for name in ("random", "removals"):
        pts = points(name)
        cal = fit([p["raw_ms"] for p in pts], [p["measured_ms"] for p in pts], [p["removed_units"] for p in pts])
        predicted = cal.from_units(test_raw, test_removed)
        full = float(cal.from_units(np.array([raw_full]), np.array([0.0]))[0])
        anchored = predicted * full_beside / full
        results["calibrations"][name] = {
            "points": pts, "scale": cal.scale, "offset_ms": cal.offset_ms, "removed_unit_ms": cal.removed_unit_ms,
            "residual_pct": cal.residual_pct, "points_removing_blocks": sum(p["removed_units"] > 0 for p in pts),
            "absolute": score(predicted, measured), "beside": score(anchored, measured),
            "beside_errors_pct": [float(e) for e in (anchored / measured - 1) * 100]}
    stem = f"removal_calibration_{args.arch}" + (f"_{args.tag}" if args.tag else "")
    out = HERE / "results" / f"{stem}.json"
    atomic_write_json(out, results)
    plot(results, out.with_suffix(".png"))
    for name, c in results["calibrations"].items():
        print(f"{name:9s} scale {c['scale']:.3f} offset {c['offset_ms']:+.4f} ms removed-unit "
              f"{c['removed_unit_ms']:+.5f} ms ({c['points_removing_blocks']} points remove blocks)")
        for how in ("absolute", "beside"):
            s = c[how]
            print(f"  {how:8s} median |err| {s['median_abs_pct']:.2f}%  mean {s['mean_pct']:+.2f}%  "
                  f"±5% {s['within_5_pct']:.0%}  ±10% {s['within_10_pct']:.0%}  worst {s['worst_pct']:+.1f}%")
    print(f"profile {profile_s:.0f} s, measurements {measure_s:.0f} s; wrote {out}")


def plot(results: dict[str, Any], path: Path) -> None:
    """Each calibration's re-anchored error against the number of removed units."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    removed = [p["removed_units"] for p in results["test"]]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for (name, c), marker in zip(results["calibrations"].items(), ("o", "^")):
        ax.scatter(removed, c["beside_errors_pct"], marker=marker, alpha=0.7,
                   label=f"{name}: median |err| {c['beside']['median_abs_pct']:.1f}%")
    ax.axhspan(-10, 10, color="0.9", zorder=0)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xlabel("units removed with their blocks")
    ax.set_ylabel("prediction error, re-anchored (%)")
    ax.set_title(f"{results['arch']}, ort-cpu, {results['threads']} thread(s): calibration with/without removals")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
