"""Benchmark: how well the LUT predicts measured latency (issue #3's targets).

    python benchmarks/lut_fidelity.py [--models resnet18,mobilenet_v2,efficientnet-lite0]
                                      [--backend ort-cpu] [--threads 2] [--samples 50] [--force]
                                      [--tag NAME] [--beside] [--recalibrate] [--guard-percentile P]

For each model at 1x3x224x224: profile from an empty LUT on the backend (timed),
then `lut fidelity` with N random width configurations. Writes
benchmarks/results/lut_fidelity.json (ort-cpu, 2 threads; other thread
counts: lut_fidelity_<n>t.json; other backends: lut_fidelity_<backend>.json;
``--tag NAME`` appends _NAME, e.g. for another machine), one entry per model with the device fingerprint,
and benchmarks/results/fidelity_[<backend>_][<n>t_][<tag>_]<model>.png. Resumable: a model
whose result is already in the JSON is skipped (unless --force), and a killed
profile resumes from its LUT in benchmarks/luts/. ``--beside`` measures the
full model right before each configuration and adds the ``beside`` score (the
prediction re-anchored on that measurement: how ``prune`` uses the LUT).
``--max-passes N`` lets a whole model whose two fastest passes disagree be
measured up to N times (profile's ``MODEL_MAX_PASSES``, 6 since session 25), in the calibration
and the fidelity run alike. ``--guard-percentile P`` sets the SpeedGuard's usual speed to the P-quantile
of its probes (0.2 by default since session 23; 0.02 before), for experiments with the guard.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from latprune._io import atomic_write_json
from latprune.latency_lut.backends import get_backend
from latprune.latency_lut.fidelity import fidelity
from latprune.latency_lut.plots import plot_fidelity
from latprune.latency_lut import profile as profile_module
from latprune.latency_lut.profile import build_lut, open_for_backend
from latprune.models import load_model
from latprune.graph.channels import ChannelGraph

HERE = Path(__file__).parent
DEFAULT_BACKEND = "ort-cpu"
DEFAULT_THREADS = 2  # issue #3's setting; other thread counts write lut_fidelity_<n>t.json
SPECS = {"resnet18": "torchvision:resnet18", "mobilenet_v2": "torchvision:mobilenet_v2",
         "efficientnet-lite0": "efficientnet-lite0"}


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
    parser.add_argument("--max-passes", type=int, default=None,
                        help="passes of a whole model whose two fastest disagree, at most (default: "
                             "MODEL_MAX_PASSES); for experiments with the measurement rule")
    parser.add_argument("--guard-percentile", type=float, default=None,
                        help="the SpeedGuard's usual speed as this percentile of its probes (default: the guard's)")
    args = parser.parse_args()
    backend = get_backend(args.backend, args.threads)
    guard = backend.speed_guard()
    if args.guard_percentile is not None:
        if guard is None:
            parser.error(f"--guard-percentile: {args.backend} on {backend.threads} thread(s) has no SpeedGuard; "
                         "ort-cpu guards its measurements on 2 or more threads (--threads 2)")
        guard.percentile = args.guard_percentile
    if args.max_passes is not None:
        if args.max_passes < 2:
            parser.error(f"--max-passes must be at least 2 (the rule's two passes), got {args.max_passes}")
        profile_module.MODEL_MAX_PASSES = args.max_passes  # read at each call: calibration and fidelity both
    suffix = "" if args.backend == DEFAULT_BACKEND else f"_{args.backend}"
    if args.backend == DEFAULT_BACKEND and backend.threads != DEFAULT_THREADS:
        suffix += f"_{backend.threads}t"
    if args.tag:
        suffix += f"_{args.tag}"
    results_path = HERE / "results" / f"lut_fidelity{suffix}.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in args.models.split(","):
        if name in results and not args.force:
            print(f"{name}: already in {results_path}, skipped (--force re-runs)")
            continue
        spec = load_model(SPECS[name], "1x3x224x224")
        graph = ChannelGraph.build(spec.model, spec.input_shape)
        lut_path = HERE / "luts" / f"{name}-{args.backend}-{backend.threads}t.lut"
        start = time.time()
        profile = build_lut(graph, lut_path, backend, levels=args.levels, model_name=spec.name,
                            passes=args.passes, recalibrate=args.recalibrate)
        profile_s = time.time() - start
        with open_for_backend(lut_path, backend, writable=False) as lut:
            report = fidelity(graph, lut, backend, args.samples, spec.name, beside=args.beside).to_dict()
        png = HERE / "results" / f"fidelity{suffix}_{name}.png"
        plot_fidelity(report, str(png))
        results[name] = {
            "model": spec.name, "input": list(spec.input_shape), "units": len(graph.units),
            "groups": len(graph.groups), "lut_keys": profile.keys, "levels": args.levels, "passes": profile.passes,
            "profile_seconds": round(profile_s, 1), "profile_measured": profile.measured,
            "calibration": profile.calibration, "samples": args.samples,
            "stored": report["stored"], "anchored": report["anchored"], "beside": report["beside"],
            "refit": report["refit"],
            "refit_folds": report["refit_folds"], "drift": report["drift"],
            "fidelity_seconds": report["seconds"], "slow_probes": report["slow_probes"],
            "probes": len(report["probe_trace"]), "probe_trace": report["probe_trace"],
            "points": report["points"], "plot": str(png.relative_to(HERE)),
            "fingerprint": report["fingerprint"], "spread_pct": report["spread_pct"], "repeat": report["repeat"],
            "profile_warnings": profile.warnings,
            "guard_percentile": guard.percentile if guard is not None else None,
            "max_passes": profile_module.MODEL_MAX_PASSES,
        }
        atomic_write_json(results_path, results)
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
