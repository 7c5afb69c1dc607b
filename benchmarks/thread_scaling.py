"""Benchmark: is the second thread's speedup what moves a model's latency on a VM?

    python benchmarks/thread_scaling.py [--models mobilenet_v2,resnet18] [--minutes 8] [--tag NAME]

On the project's 2-vCPU VMs a model on two threads drifts by up to x1.74
within minutes (``probe_tracking.py``, session 24), while the same model on
one thread stays steady (sessions 9 and 16: CV 2-7%). If the host moves the
two vCPUs between separate cores and the two hyperthreads of one core, the
second thread's speedup changes and the two-thread latency with it, with no
steal time for the guest to see.

This times each model, round after round, on ONNX Runtime with 1 thread,
2 threads, and 2 threads without spinning (``session.intra_op.allow_spinning``
0), and 2 threads pinned (the caller on the first CPU, ONNX Runtime's
worker on the second: ``session.intra_op_thread_affinities``, so the guest
cannot move them), all in the same minutes. Per setting: median, fastest, slowest round
and the CV of the rounds' medians; per model: the speedup of two threads
over one in each round (its 10th, 50th and 90th percentile). Writes
benchmarks/results/thread_scaling[_<tag>].json and a plot beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from probe_tracking import SPECS, add_run_args, checked_models, cv_pct, label, save  # noqa: E402

from latprune._io import atomic_write_json  # noqa: E402
from latprune._progress import bar  # noqa: E402
from latprune.exporters.onnx import to_onnx_bytes  # noqa: E402
from latprune.latency_lut.backends import get_backend  # noqa: E402
from latprune.latency_lut.backends.ort_cpu import make_session, random_feeds  # noqa: E402
from latprune.latency_lut.timing import time_callable  # noqa: E402
from latprune.models import load_model  # noqa: E402

HERE = Path(__file__).parent
# setting: (threads, spinning, pinned)
SETTINGS = {"1 thread": (1, True, False), "2 threads": (2, True, False), "2 threads, no spinning": (2, False, False),
            "2 threads, pinned": (2, True, True)}


def pct(xs: list[float], q: float) -> float:
    return float(np.quantile(xs, q))


def plot(t_min: list[float], series: dict[str, dict[str, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(6 * len(series), 4), squeeze=False)
    for ax, (model, by_setting) in zip(axes[0], series.items()):
        for setting, ms in by_setting.items():
            ax.plot(t_min, ms, ".", ms=3, label=setting)
        label(ax, model, "median latency of the round, ms")
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser, "mobilenet_v2,resnet18", 8.0)
    args = parser.parse_args()
    names = checked_models(parser, args)
    backend = get_backend("ort-cpu", 2)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        parser.error(f"this process may run on {len(cpus)} CPU; the 2-thread settings need two: run it "
                     "without a CPU restriction (taskset, a container's cpuset) on a machine with two or more")
    runs = {}
    for name in names:
        spec = load_model(SPECS[name], "1x3x224x224")
        onnx = to_onnx_bytes(spec.model, spec.input_shape)
        for setting, (threads, spin, pinned) in SETTINGS.items():
            s = make_session(onnx, threads, spinning=spin, affinities=f"{cpus[1] + 1}" if pinned else None)
            runs[(name, setting)] = (s, random_feeds(s), pinned)
    t_s: list[float] = []
    ms: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    start = time.perf_counter()
    with bar(total=int(60 * args.minutes), desc="rounds", unit="s") as progress:
        while time.perf_counter() - start < 60 * args.minutes:
            t_s.append(round(time.perf_counter() - start, 3))
            for key, (s, feeds, pinned) in runs.items():
                os.sched_setaffinity(0, cpus[:1] if pinned else cpus)  # the calling thread: ONNX Runtime's first
                ms[key].append(time_callable(lambda: s.run(None, feeds), backend.model_timing).median_ms)
            os.sched_setaffinity(0, cpus)
            progress.update(min(progress.total, int(time.perf_counter() - start)) - progress.n)
    models: dict[str, Any] = {}
    for name in names:
        one, two = ms[(name, "1 thread")], ms[(name, "2 threads")]
        speedup = [a / b for a, b in zip(one, two)]
        rounds = {setting: ms[(name, setting)] for setting in SETTINGS}
        models[name] = {
            "settings": {setting: {"median_ms": statistics.median(xs), "min_ms": min(xs), "max_ms": max(xs),
                                   "cv_pct": cv_pct(xs)}
                         for setting, xs in rounds.items()},
            "speedup_p10": pct(speedup, 0.1), "speedup_p50": pct(speedup, 0.5), "speedup_p90": pct(speedup, 0.9),
            "corr_1_2": float(np.corrcoef(one, two)[0, 1]) if len(one) > 2 else float("nan"),
        }
    suffix = f"_{args.tag}" if args.tag else ""
    png = HERE / "results" / f"thread_scaling{suffix}.png"
    plot([t / 60 for t in t_s], {n: {s: ms[(n, s)] for s in SETTINGS} for n in names}, png)
    atomic_write_json(HERE / "results" / f"thread_scaling{suffix}.json", {
        "minutes": args.minutes, "rounds": len(t_s), "fingerprint": backend.fingerprint(),
        "models": models, "t_s": t_s, "ms": {f"{n} / {s}": v for (n, s), v in ms.items()},
        "plot": str(png.relative_to(HERE))})
    print(f"{len(t_s)} rounds")
    print("| model | setting | median ms | fastest | slowest | CV of rounds |")
    print("|---|---|---|---|---|---|")
    for name, m in models.items():
        for setting, v in m["settings"].items():
            print(f"| {name} | {setting} | {v['median_ms']:.3f} | {v['min_ms']:.3f} | {v['max_ms']:.3f} "
                  f"| {v['cv_pct']:.1f}% |")
    for name, m in models.items():
        print(f"{name}: 2-thread speedup p10 {m['speedup_p10']:.2f}, p50 {m['speedup_p50']:.2f}, "
              f"p90 {m['speedup_p90']:.2f}; correlation of 1- and 2-thread rounds {m['corr_1_2']:.2f}")


if __name__ == "__main__":
    main()
