"""Experiment: does fine-tuning change a pruned network's latency? (issue #4, session 19)

    python benchmarks/export_gap.py RUN_DIR [RUN_DIR ...] [--threads 1] [--rounds 6] [--json OUT]

`prune` accepts a candidate in its closed loop (the slimmed network with the
weights it had then), fine-tunes it, exports it and measures the export beside
the base. On 2026-12-02 the export of two ResNet-56 prunes measured 6.7% and
9.3% above their candidates, and missed. Same architecture, same exporter:
either the device's noise, or the weights themselves (subnormal numbers, for
example, run slowly on x86 unless the runtime flushes them).

For each run directory this measures, interleaved over ``--rounds`` rounds on
ort-cpu (each round: every variant once, in rotating order; each variant's
median over its rounds is reported):

- ``replayed``: the run's plan applied to a fresh base model (the base's
  weights: the candidate's architecture, before fine-tuning);
- ``fine_tuned``: the run's ``model.pt`` on the same architecture;
- ``export``: the run's ``model.onnx`` file as `prune` measured it;
- ``export_daz``: the same file with ONNX Runtime's ``session.set_denormal_as_zero``;
- ``base``: the unpruned base model.

and counts the subnormal values in the fine-tuned weights and in one forward
pass's activations. Prints a table and (``--json``) writes every timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from latprune.latency_lut.timing import Latency


def _cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else 0.0


def subnormal_count(tensors: list[torch.Tensor]) -> tuple[int, int]:
    """(subnormal values, all values) over float32 tensors."""
    tiny = torch.finfo(torch.float32).tiny
    sub = sum(int(((t != 0) & (t.abs() < tiny)).sum()) for t in tensors)
    return sub, sum(t.numel() for t in tensors)


def activation_subnormals(model: torch.nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    acts: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: acts.append(out.detach()))
             for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ReLU, torch.nn.BatchNorm2d))]
    try:
        with torch.no_grad():
            model(torch.randn(*shape, generator=torch.Generator().manual_seed(0)))
    finally:
        for h in hooks:
            h.remove()
    return subnormal_count(acts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import onnxruntime as ort

    from latprune._io import atomic_write_json
    from latprune.exporters.onnx import to_onnx_bytes
    from latprune.latency_lut.backends import get_backend
    from latprune.latency_lut.backends.ort_cpu import make_session
    from latprune.models import load_model
    from latprune.pruner.plan import PruningPlan, load_run_model

    backend = get_backend("ort-cpu", args.threads)

    def daz_session(path: Path) -> Any:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.set_denormal_as_zero", "1")
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    results: dict[str, Any] = {"fingerprint": backend.fingerprint(), "threads": args.threads,
                               "rounds": args.rounds, "runs": {}}
    for run_dir in args.runs:
        plan = PruningPlan.load(run_dir / "plan.json")
        base = load_model(plan.model, plan.input_shape).model.eval()
        replayed = plan.apply_(load_model(plan.model, plan.input_shape).model).eval()
        tuned = load_run_model(run_dir).model
        sessions = {"replayed": make_session(to_onnx_bytes(replayed, plan.input_shape), args.threads),
                    "fine_tuned": make_session(to_onnx_bytes(tuned, plan.input_shape), args.threads),
                    "export": make_session(run_dir / "model.onnx", args.threads),
                    "export_daz": daz_session(run_dir / "model.onnx"),
                    "base": make_session(to_onnx_bytes(base, plan.input_shape), args.threads)}
        measure: dict[str, Callable[[], Latency]] = {
            name: (lambda s=s: backend.measure_session(s)) for name, s in sessions.items()}
        names = list(measure)
        lats: dict[str, list[Latency]] = {n: [] for n in names}
        t = time.time()
        for r in range(args.rounds):
            for n in names[r % len(names):] + names[:r % len(names)]:
                lats[n].append(measure[n]())
        timings = {n: [lat.median_ms for lat in v] for n, v in lats.items()}
        med = {n: statistics.median(v) for n, v in timings.items()}
        # how steady is a variant's ratio to the base measured in the same round, by the median of its runs
        # and by their 10th percentile (interference only adds time: the fast end may be the steadier)
        steadiness = {stat: {n: _cv([getattr(a, stat) / getattr(b, stat) for a, b in zip(lats[n], lats["base"])])
                             for n in names if n != "base"} for stat in ("median_ms", "p10_ms")}
        w_sub = subnormal_count([p.detach() for p in tuned.state_dict().values() if p.is_floating_point()])
        a_sub = activation_subnormals(tuned, plan.input_shape)
        a_sub_replayed = activation_subnormals(replayed, plan.input_shape)
        results["runs"][run_dir.name] = {
            "timings_ms": timings, "p10_ms": {n: [lat.p10_ms for lat in v] for n, v in lats.items()},
            "median_ms": med, "ratio_to_base_cv": steadiness,
            "fine_tuned_over_replayed": med["fine_tuned"] / med["replayed"],
            "export_over_replayed": med["export"] / med["replayed"],
            "export_daz_over_export": med["export_daz"] / med["export"],
            "weight_subnormals": w_sub, "activation_subnormals": a_sub,
            "activation_subnormals_replayed": a_sub_replayed, "seconds": round(time.time() - t, 1)}
        print(f"{run_dir.name}: replayed {med['replayed']:.4f} ms, fine-tuned {med['fine_tuned']:.4f} "
              f"({100 * (med['fine_tuned'] / med['replayed'] - 1):+.1f}%), export {med['export']:.4f} "
              f"({100 * (med['export'] / med['replayed'] - 1):+.1f}%), export with DAZ {med['export_daz']:.4f}, "
              f"base {med['base']:.4f}; subnormal weights {w_sub[0]}/{w_sub[1]}, activations "
              f"{a_sub[0]}/{a_sub[1]} (replayed {a_sub_replayed[0]})", flush=True)
        spread = {n: (min(v), max(v)) for n, v in timings.items()}
        print("   range per variant: " + ", ".join(f"{n} {lo:.4f}–{hi:.4f}" for n, (lo, hi) in spread.items()))
        print("   CV of the ratio to the base, by median / by p10: " + ", ".join(
            f"{n} {100 * steadiness['median_ms'][n]:.1f}% / {100 * steadiness['p10_ms'][n]:.1f}%"
            for n in names if n != "base"))
    if args.json:
        atomic_write_json(args.json, results)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
