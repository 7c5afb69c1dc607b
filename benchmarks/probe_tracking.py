"""Benchmark: does the SpeedGuard's probe track a whole model's slow drift?

    python benchmarks/probe_tracking.py [--models resnet18,mobilenet_v2] [--minutes 10]
                                        [--threads 2] [--tag NAME]

A stored calibration is one snapshot of the machine's speed. On the shared
VMs of this project the machine's speed drifts by 5-17% over minutes
(``drift`` in BENCHMARKS.md's fidelity tables: 0.82-1.13), so a LUT
predicts 10% high or low for a while even where each measurement is quiet
(session 24: ResNet-18, spread 8.8%, drift 1.11, 58% within ±10% as
stored, 98% re-anchored). If the guard's probe (a 0.3 ms convolution on the
same threads) slows down with the model, a prediction scaled by the
probe's speed now against its speed at calibration would follow the drift
without measuring the model.

This measures that, without the guard: for ``--minutes``, round after
round, the probe, then each model (full width, 1x3x224x224, onnxruntime on
``--threads``), then the probe again. Per model it reports the CV of the
model's medians over the run, the CV of the medians divided by the mean of
the probes around them (rescaled to the model's mean), their Pearson
correlation, and the same two CVs over one-minute bins (the slow drift, the
part a stored calibration cannot see). Writes
benchmarks/results/probe_tracking[_<tag>].json and a plot beside it.
Measures; changes nothing in the LUT code.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from lut_fidelity import SPECS  # noqa: E402  (the fidelity benchmark's models)

from latprune._io import atomic_write_json  # noqa: E402
from latprune._progress import bar  # noqa: E402
from latprune.exporters.onnx import to_onnx_bytes  # noqa: E402
from latprune.latency_lut.backends import get_backend  # noqa: E402
from latprune.latency_lut.backends.ort_cpu import make_session, random_feeds  # noqa: E402
from latprune.latency_lut.timing import time_callable  # noqa: E402
from latprune.models import load_model  # noqa: E402

HERE = Path(__file__).parent


def add_run_args(parser: argparse.ArgumentParser, models: str, minutes: float) -> None:
    """The options this benchmark shares with ``thread_scaling.py``."""
    parser.add_argument("--models", default=models, help=f"comma-separated, of: {', '.join(SPECS)}")
    parser.add_argument("--minutes", type=float, default=minutes)
    parser.add_argument("--tag", default=None, help="suffix of the result and plot, e.g. the machine's name")


def checked_models(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """``--models`` as a list; a parser error (exit 2) for an unknown name or a non-positive ``--minutes``."""
    names = args.models.split(",")
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; known: {', '.join(SPECS)}")
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    return names


def label(ax: Any, title: str, ylabel: str) -> None:
    """Title, axes and legend of a panel whose x axis is minutes into the run."""
    ax.set_title(title)
    ax.set_xlabel("minutes")
    ax.set_ylabel(ylabel)
    ax.legend()


def save(fig: Any, path: Path) -> None:
    """Lay out, write and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cv_pct(xs: list[float]) -> float:
    """Coefficient of variation in percent (population standard deviation / mean)."""
    return float(100 * np.std(xs) / np.mean(xs)) if len(xs) > 1 else 0.0


def analyse(rounds: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The model's variation over the run, raw and divided by the probe, overall and per minute."""
    t = [r["t_s"] for r in rounds]
    model = [r[name] for r in rounds]
    probe = [(r["probe_before"] + r["probe_after"]) / 2 for r in rounds]
    mean_probe = statistics.fmean(probe)
    normalised = [m * mean_probe / p for m, p in zip(model, probe)]
    minutes: dict[int, list[int]] = {}
    for i, ts in enumerate(t):
        minutes.setdefault(int(ts // 60), []).append(i)
    bins = [idx for idx in minutes.values() if len(idx) >= 3]
    raw_bins = [statistics.median(model[i] for i in idx) for idx in bins]
    norm_bins = [statistics.median(normalised[i] for i in idx) for idx in bins]
    return {
        "rounds": len(rounds), "mean_ms": statistics.fmean(model),
        "cv_pct": cv_pct(model), "cv_normalised_pct": cv_pct(normalised),
        "pearson": float(np.corrcoef(model, probe)[0, 1]) if len(rounds) > 2 else float("nan"),
        "minute_bins": len(bins), "minute_cv_pct": cv_pct(raw_bins), "minute_cv_normalised_pct": cv_pct(norm_bins),
        "minute_range_pct": 100 * (max(raw_bins) / min(raw_bins) - 1) if bins else float("nan"),
        "minute_range_normalised_pct": 100 * (max(norm_bins) / min(norm_bins) - 1) if bins else float("nan"),
    }


def plot(rounds: list[dict[str, Any]], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t_s"] / 60 for r in rounds]
    probe = np.array([(r["probe_before"] + r["probe_after"]) / 2 for r in rounds])
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(t, 100 * probe / probe.mean(), ".", ms=3, color="black", label="probe (0.3 ms conv)")
    for name in names:
        ms = np.array([r[name] for r in rounds])
        ax.plot(t, 100 * ms / ms.mean(), ".", ms=3, label=name)
    label(ax, "SpeedGuard probe vs whole models, no guard", "latency, % of its mean over the run")
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser, "resnet18,mobilenet_v2", 10.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    names = checked_models(parser, args)
    backend = get_backend("ort-cpu", args.threads)
    guard = backend.speed_guard()
    if guard is None:
        parser.error("the SpeedGuard's probe runs on 2 or more threads: use --threads 2")
    sessions = {}
    for name in names:
        spec = load_model(SPECS[name], "1x3x224x224")
        session = make_session(to_onnx_bytes(spec.model, spec.input_shape), args.threads)
        sessions[name] = (session, random_feeds(session))
    rounds: list[dict[str, Any]] = []
    start = time.perf_counter()
    end = start + 60 * args.minutes
    with bar(total=int(60 * args.minutes), desc="tracking", unit="s") as progress:
        while time.perf_counter() < end:
            row: dict[str, Any] = {"t_s": round(time.perf_counter() - start, 3), "probe_before": guard.probe_ms()}
            for name, (session, feeds) in sessions.items():
                row[name] = time_callable(lambda: session.run(None, feeds), backend.model_timing).median_ms
            row["probe_after"] = guard.probe_ms()
            rounds.append(row)
            progress.update(min(progress.total, int(time.perf_counter() - start)) - progress.n)
    suffix = f"_{args.tag}" if args.tag else ""
    png = HERE / "results" / f"probe_tracking{suffix}.png"
    plot(rounds, names, png)
    result = {"threads": args.threads, "minutes": args.minutes, "fingerprint": backend.fingerprint(),
              "models": {name: analyse(rounds, name) for name in names}, "rounds": rounds,
              "plot": str(png.relative_to(HERE))}
    atomic_write_json(HERE / "results" / f"probe_tracking{suffix}.json", result)
    print("| model | rounds | CV | CV / probe | Pearson | minute bins: CV | CV / probe | max/min − 1 | / probe |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, a in result["models"].items():
        print(f"| {name} | {a['rounds']} | {a['cv_pct']:.1f}% | {a['cv_normalised_pct']:.1f}% | {a['pearson']:.2f} "
              f"| {a['minute_cv_pct']:.1f}% | {a['minute_cv_normalised_pct']:.1f}% | {a['minute_range_pct']:.1f}% "
              f"| {a['minute_range_normalised_pct']:.1f}% |")


if __name__ == "__main__":
    main()
