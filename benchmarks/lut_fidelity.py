"""Benchmark: how well the LUT predicts measured latency (issue #3's targets).

    python benchmarks/lut_fidelity.py [--models resnet18,mobilenet_v2,efficientnet-lite0]
                                      [--backend ort-cpu] [--threads 2] [--samples 50] [--force]
                                      [--tag NAME] [--beside] [--recalibrate]

For each model at 1x3x224x224: ``latprune.profile`` from an empty LUT on the
backend (timed), then ``latprune.fidelity`` with N random width configurations.
Writes benchmarks/results/lut_fidelity.json (ort-cpu, 2 threads; other thread
counts: lut_fidelity_<n>t.json; other backends: lut_fidelity_<backend>.json;
``--tag NAME`` appends _NAME, e.g. for another machine), one entry per model with
the device fingerprint, and
benchmarks/results/fidelity_[<backend>_][<n>t_][<tag>_]<model>.png. Resumable: a
model whose result is already in the JSON is skipped (unless --force), and a
killed profile resumes from its LUT in benchmarks/luts/. ``--beside`` measures
the full model right before each configuration and adds the ``beside`` score
(the prediction re-anchored on that measurement: how ``prune`` uses the LUT).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from results_io import write_json

HERE = Path(__file__).parent
DEFAULT_BACKEND = "ort-cpu"
DEFAULT_THREADS = 2  # issue #3's setting; other thread counts write lut_fidelity_<n>t.json
INPUT = (1, 3, 224, 224)
SPECS = {"resnet18": "torchvision:resnet18", "mobilenet_v2": "torchvision:mobilenet_v2",
         "efficientnet-lite0": "efficientnet-lite0"}


def score_model(model: Any, input_shape: tuple[int, ...], model_name: str, lut_path: Path, png: Path,
                args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], Any, float]:
    """Profile ``model`` into ``lut_path`` and score the LUT on it: the result row, the
    fidelity report (a dict), the profile report, and the profile's wall time in seconds."""
    import latprune
    from latprune.latency_lut.plots import plot_fidelity

    start = time.time()
    lut = latprune.profile(model, input_shape, args.backend, args.threads, path=lut_path, levels=args.levels,
                           passes=args.passes, recalibrate=args.recalibrate, name=model_name)
    profile_s = time.time() - start
    profile = lut.report
    assert profile is not None  # profile() always reports what it measured
    report = latprune.fidelity(model, input_shape, lut, args.samples, beside=args.beside, name=model_name).to_dict()
    plot_fidelity(report, str(png))
    points = report["points"]
    row = {
        "model": model_name, "input": list(input_shape), "units": profile.units,
        # each point lists one width per channel group
        "groups": len(points[0]["widths"]) if points else None,
        "lut_keys": profile.keys, "levels": args.levels, "passes": profile.passes,
        "profile_seconds": round(profile_s, 1), "profile_measured": profile.measured,
        "calibration": profile.calibration, "samples": args.samples,
        "stored": report["stored"], "anchored": report["anchored"], "beside": report["beside"],
        "refit": report["refit"],
        "refit_folds": report["refit_folds"], "drift": report["drift"],
        "fidelity_seconds": report["seconds"], "slow_probes": report["slow_probes"],
        "probes": len(report["probe_trace"]), "probe_trace": report["probe_trace"],
        "points": points, "plot": str(png.relative_to(HERE)) if png.is_relative_to(HERE) else str(png),
        "fingerprint": report["fingerprint"], "spread_pct": report["spread_pct"], "repeat": report["repeat"],
        "profile_warnings": profile.warnings,
    }
    return row, report, profile, profile_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(SPECS))
    parser.add_argument("--backend", default=DEFAULT_BACKEND)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="CPU threads (GPU backends use 1)")
    parser.add_argument("--passes", type=int, default=2, help="measurements of each unit, fastest kept")
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--levels", type=int, default=8)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--recalibrate", action="store_true", help="re-measure the LUT's calibration")
    parser.add_argument("--tag", default=None, help="suffix of the results and plots, e.g. the machine's name")
    parser.add_argument("--beside", action="store_true", help="also score the prediction re-anchored on the "
                                                              "full model measured right before each configuration")
    args = parser.parse_args()
    unknown = [m for m in args.models.split(",") if m not in SPECS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(SPECS)}")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")

    from latprune.models import registered_model

    suffix = "" if args.backend == DEFAULT_BACKEND else f"_{args.backend}"
    if args.backend == DEFAULT_BACKEND and args.threads != DEFAULT_THREADS:
        suffix += f"_{args.threads}t"
    if args.tag:
        suffix += f"_{args.tag}"
    results_path = HERE / "results" / f"lut_fidelity{suffix}.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in args.models.split(","):
        if name in results and not args.force:
            print(f"{name}: already in {results_path}, skipped (--force re-runs)")
            continue
        spec = registered_model(SPECS[name], INPUT)
        assert spec is not None  # every SPECS entry is a name latprune builds
        lut_path = HERE / "luts" / f"{name}-{args.backend}-{args.threads}t.lut"
        lut_path.parent.mkdir(exist_ok=True)
        png = HERE / "results" / f"fidelity{suffix}_{name}.png"
        results[name], report, profile, profile_s = score_model(spec.model, spec.input_shape, spec.name, lut_path,
                                                                png, args)
        write_json(results_path, results)
        s, a, r = report["stored"], report["anchored"], report["refit"]
        b = report["beside"]
        refit = f"refit {r['median_abs_pct']:.2f}% / {100 * r['within_10_pct']:.0f}%; " if r is not None else ""
        beside = f"beside {b['median_abs_pct']:.2f}% / {100 * b['within_10_pct']:.0f}%; " if b is not None else ""
        rep = report["repeat"]
        print(f"{name}: profile {profile_s:.0f} s ({profile.keys} keys); stored median |err| "
              f"{s['median_abs_pct']:.2f}%, within 10% {100 * s['within_10_pct']:.0f}%, Spearman {s['spearman']:.3f}; "
              f"anchored {a['median_abs_pct']:.2f}% / {100 * a['within_10_pct']:.0f}%; {refit}{beside}"
              f"slow-machine probes {report['slow_probes']} of {len(report['probe_trace'])}; "
              f"measurements' p10-p90 spread {report['spread_pct']:.1f}%; measured again (pass 1 vs 2) "
              f"{rep['median_abs_pct']:.2f}% / {100 * rep['within_10_pct']:.0f}%")


if __name__ == "__main__":
    main()
