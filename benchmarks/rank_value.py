"""Benchmark: which knapsack value of a rank option predicts the loss it costs (issue 34, item 3).

    python benchmarks/rank_value.py [--eval-batches 20] [--taylor-batches 16] [--batch-size 64]
                                    [--models resnet20,resnet56] [--table]

For each trained model (the embedded ResNet-20 on Fashion-MNIST; the ResNet-56 base
that benchmarks/accuracy_vs_latency.py caches, where one is cached), every layer
offered a rank (``rank_options(graph.units, graph.model, align=1)``) is truncated
alone to each of its ranks below full (``project_``: the weight replaced by its
truncated SVD, then restored), and the increase of the mean cross-entropy over
fixed training batches is measured. Each point is set beside what the knapsack
would see, ``-option_values(scores, options)``, for three values:

- ``energy``: :func:`energy_rank_scores` over L1 channel scores (the pairing
  ``importance="l1"`` uses: data-free);
- ``taylor``: :func:`taylor_rank_scores` normalised by :func:`taylor_importance`
  (the pairing of ``importance="taylor"``), both on batches other than the
  measured ones;
- ``energy_taylor_worth``: the energy split over Taylor channel scores, which
  separates the singular-value split (energy vs Taylor) from the channel worth
  (L1 vs Taylor).

Reports per model and value: Spearman over all (layer, rank) points, within each
layer (mean), across layers (concordance of the pairs of points from different
layers: the comparison the knapsack makes; and Spearman across layers at the
same fraction of the break-even rank), and a calibration view (Pearson and slope
of log10 measured on log10 predicted, over points where both are positive).
Writes benchmarks/results/rank_value.json and rank_value.png (measured vs each
prediction); ``--table`` prints the markdown summary of the JSON.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_atomically, write_json  # noqa: E402

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "rank_value.json"
PLOT = HERE / "results" / "rank_value.png"
RESNET56_WORK = HERE / "work" / "accuracy_vs_latency" / "resnet56"  # accuracy_vs_latency.py's arch_work("resnet56")
INPUT = (1, 1, 28, 28)
VALUES = ("energy", "taylor", "energy_taylor_worth")
Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


# -- measurement -----------------------------------------------------------------------------------
def stages(model: nn.Module) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """``model``'s forward as a chain of (layer-name prefix, function): a CIFAR ResNet's stem,
    each block and its head, so a truncated layer's loss is computed from its block's cached
    input; any other model is one stage."""
    if isinstance(getattr(model, "blocks", None), nn.Sequential) and all(hasattr(model, a)
                                                                         for a in ("stem", "pool", "fc")):
        def head(x: torch.Tensor) -> torch.Tensor:
            return model.fc(torch.flatten(model.pool(x), 1))  # (B, classes)

        return [("stem", model.stem), *((f"blocks.{i}", b) for i, b in enumerate(model.blocks)), ("fc", head)]
    return [("", model)]


def _stage_of(name: str, chain: list[tuple[str, Any]]) -> int:
    for i in range(len(chain) - 1, -1, -1):
        prefix = chain[i][0]
        if prefix == "" or name == prefix or name.startswith(prefix + "."):
            return i
    raise ValueError(f"layer {name!r} is in no stage of the model")


def _batch_losses(chain: list[tuple[str, Any]], start: int, inputs: list[torch.Tensor], held: Batches) -> np.ndarray:
    """Mean cross-entropy of each batch of ``held``, the forward started at stage ``start`` from ``inputs``."""
    losses = []
    with torch.no_grad():
        for h, (_, y) in zip(inputs, held):
            for _, fn in chain[start:]:
                h = fn(h)
            losses.append(float(F.cross_entropy(h, y)))
    return np.array(losses)


def _mean(losses: np.ndarray, held: Batches) -> float:
    return float(np.average(losses, weights=[len(y) for _, y in held]))


def measured_increases(graph: Any, options: dict[int, list[int]], held: Batches,
                       progress: bool = False) -> tuple[float, dict[int, list[tuple[float, float | None]]], bool]:
    """The mean loss over ``held``; its increase for every rank axis and rank in ``options``
    below the last (the layer whole), that layer alone truncated to it in place and restored,
    with the standard error of that increase over the batches (the paired per-batch
    differences); and whether the forward ran in :func:`stages` (else whole, every time)."""
    from latprune.graph.lowrank import project_, unit_index

    model = graph.model.eval()
    chain = stages(model)
    inputs = [x for x, _ in held]
    base = _batch_losses(chain, 0, inputs, held)
    if len(chain) > 1:
        full = _batch_losses([("", model)], 0, inputs, held)
        if not np.allclose(base, full, rtol=1e-5, atol=1e-6):
            chain, base = [("", model)], full  # the stages do not reproduce this model's forward: run it whole
    by_stage: dict[int, list[int]] = {}
    for axis in options:
        by_stage.setdefault(_stage_of(graph.units[unit_index(axis)].name, chain), []).append(axis)
    increases: dict[int, list[tuple[float, float | None]]] = {}
    done, todo = 0, sum(len(o) - 1 for o in options.values())
    for s in range(len(chain)):
        for axis in by_stage.get(s, []):
            name = graph.units[unit_index(axis)].name
            module = graph.module(name)
            saved = module.weight.detach().clone()
            increases[axis] = []
            for rank in options[axis][:-1]:
                try:
                    project_(module, rank)
                    diff = _batch_losses(chain, s, inputs, held) - base
                    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else None
                    increases[axis].append((_mean(diff, held), se))
                finally:
                    with torch.no_grad():
                        module.weight.copy_(saved)
                done += 1
                if progress:
                    print(f"\r  measured {done}/{todo} (layer {name}, rank {rank})", end="", file=sys.stderr,
                          flush=True)
        with torch.no_grad():
            inputs = [chain[s][1](h) for h in inputs]  # the next stage's input, from the untouched model
    if progress:
        print(file=sys.stderr)
    return _mean(base, held), increases, len(chain) > 1


def predictions(graph: Any, options: dict[int, list[int]],
                taylor_batches: Batches) -> dict[str, dict[int, list[float]]]:
    """What the knapsack sees of each rank option under each value: ``-option_values``, the
    normalised importance the option drops."""
    from latprune.pruner.importance import energy_rank_scores, l1_importance, taylor_importance, taylor_rank_scores
    from latprune.pruner.knapsack import option_values

    axes = list(options)
    l1 = l1_importance(graph)
    l1.ranks = energy_rank_scores(graph, axes, l1)
    taylor = taylor_importance(graph, taylor_batches, len(taylor_batches), progress=False)
    energy_taylor = copy.copy(taylor)
    energy_taylor.ranks = energy_rank_scores(graph, axes, taylor)
    taylor.ranks = taylor_rank_scores(graph, axes, taylor_batches, len(taylor_batches), progress=False)
    out = {}
    for value, scores in (("energy", l1), ("taylor", taylor), ("energy_taylor_worth", energy_taylor)):
        out[value] = {a: [-v for v in vs] for a, vs in option_values(scores, options).items()}
    return out


# -- agreement -------------------------------------------------------------------------------------
def _spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    from latprune.latency_lut.fidelity import spearman

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None  # undefined: a constant side has no ordering
    return spearman(np.asarray(a, float), np.asarray(b, float))


def _concordance(pred: np.ndarray, meas: np.ndarray, pairs: np.ndarray) -> float | None:
    """Fraction of the ``pairs`` (i, j) that ``pred`` orders as ``meas`` does (a tie in ``pred``
    counts half; pairs tied in ``meas`` are left out)."""
    i, j = pairs[:, 0], pairs[:, 1]
    dm = np.sign(meas[i] - meas[j])
    keep = dm != 0
    if not keep.any():
        return None
    dp = np.sign(pred[i] - pred[j])[keep]
    return float(np.mean(np.where(dp == 0, 0.5, (dp == dm[keep]).astype(float))))


def agreement(points: list[dict[str, Any]], value: str) -> dict[str, Any]:
    """How well ``value``'s prediction orders and scales the measured loss increases of ``points``."""
    pred = np.array([p["predicted"][value] for p in points])
    meas = np.array([p["measured"] for p in points])
    layer = np.array([p["layer"] for p in points])
    frac = np.array([p["fraction_index"] for p in points])
    n = len(points)
    ii, jj = np.triu_indices(n, 1)
    pairs = np.stack([ii, jj], 1)
    cross = pairs[layer[ii] != layer[jj]]
    within_pairs = pairs[layer[ii] == layer[jj]]
    within = [_spearman(pred[layer == name], meas[layer == name]) for name in dict.fromkeys(layer)]
    within = [w for w in within if w is not None]
    at_fraction = [_spearman(pred[frac == f], meas[frac == f]) for f in sorted(set(frac))]
    at_fraction = [s for s in at_fraction if s is not None]
    positive = (pred > 0) & (meas > 0)
    log = {"points": int(positive.sum()), "left_out": int(n - positive.sum()),
           "left_out_zero_prediction": int((pred <= 0).sum())}
    if positive.sum() >= 3:
        lp, lm = np.log10(pred[positive]), np.log10(meas[positive])
        slope, intercept = np.polyfit(lp, lm, 1)
        residual = lm - (slope * lp + intercept)
        log.update(pearson=float(np.corrcoef(lp, lm)[0, 1]), slope=float(slope), intercept=float(intercept),
                   median_abs_residual_decades=float(np.median(np.abs(residual))))
    # the points whose increase stands out of its batch-to-batch noise (|increase| > 2 standard errors)
    sure = np.array([abs(p["measured"]) > 2 * (p.get("measured_se") or 0.0) for p in points])
    resolved = {"points": int(sure.sum()),
                "spearman_all": _spearman(pred[sure], meas[sure]) if sure.sum() > 1 else None,
                "cross_layer_concordance": _concordance(pred, meas, cross[sure[cross[:, 0]] & sure[cross[:, 1]]])}
    # per layer: how far its points' ranks among all points move, prediction vs measurement
    rank_p = np.argsort(np.argsort(pred, kind="stable"), kind="stable") / max(n - 1, 1)
    rank_m = np.argsort(np.argsort(meas, kind="stable"), kind="stable") / max(n - 1, 1)
    misranked = {name: float(np.mean(rank_p[layer == name] - rank_m[layer == name])) for name in dict.fromkeys(layer)}
    return {
        "spearman_all": _spearman(pred, meas),
        "within_layer_spearman_mean": float(np.mean(within)) if within else None,
        "within_layer_spearman_min": float(np.min(within)) if within else None,
        "within_layer_concordance": _concordance(pred, meas, within_pairs),
        "cross_layer_concordance": _concordance(pred, meas, cross),
        "cross_layer_spearman_at_fraction": [None if s is None else float(s) for s in at_fraction],
        "cross_layer_spearman_at_fraction_mean": float(np.mean(at_fraction)) if at_fraction else None,
        "log": log,
        # mean percentile shift of a layer's points (prediction minus measurement): + over-, - under-predicted
        "layer_percentile_shift": misranked,
        "resolved": resolved,
    }


def rank_value(model: nn.Module, input_shape: tuple[int, ...], held: Batches, taylor_batches: Batches,
               progress: bool = False) -> dict[str, Any]:
    """Measured loss increase and every value's prediction of it for each (layer, rank below
    full) of ``model``; and their agreement per value. ``held`` and ``taylor_batches`` are
    lists of (inputs, labels) batches; the model is taken over (its weights come back as they were)."""
    from latprune.graph.channels import ChannelGraph
    from latprune.graph.lowrank import max_rank, rank_options, unit_index

    graph = ChannelGraph.build(model, input_shape)
    options = rank_options(graph.units, graph.model, align=1)
    if not options:
        raise ValueError("the model has no layer that a rank below break-even makes cheaper")
    start = time.time()
    predicted = predictions(graph, options, taylor_batches)
    predict_s = time.time() - start
    start = time.time()
    base, increases, staged = measured_increases(graph, options, held, progress)
    measure_s = time.time() - start
    points = []
    for axis, ranks in options.items():
        unit = graph.units[unit_index(axis)]
        for i, rank in enumerate(ranks[:-1]):
            points.append({"layer": unit.name, "rank": rank, "max_rank": max_rank(graph.module(unit.name)),
                           "fraction_index": i, "out_group": unit.out_group, "measured": increases[axis][i][0],
                           "measured_se": increases[axis][i][1],
                           "predicted": {v: predicted[v][axis][i] for v in VALUES}})
    return {"base_loss": base, "layers": len(options), "staged": staged, "points": points,
            "agreement": {v: agreement(points, v) for v in VALUES},
            "measured_not_monotone": sum(1 for a in increases.values() for x, y in zip(a, a[1:]) if y[0] > x[0]),
            "seconds": {"predict": round(predict_s, 1), "measure": round(measure_s, 1)}}


# -- models and data -------------------------------------------------------------------------------
def models(names: list[str]) -> tuple[dict[str, tuple[nn.Module, dict[str, Any]]], dict[str, str]]:
    """The trained models asked for that exist, name -> (module, where it came from); and
    those that do not, name -> why."""
    from latprune.models import EMBEDDED_WEIGHTS, ResNetCifar, registered_model

    out, skipped = {}, {}
    if "resnet20" in names:
        spec = registered_model("default")
        assert spec is not None  # the embedded default is always registered
        out["resnet20"] = (spec.model.eval(), {"source": "embedded weights",
                                               **json.loads(EMBEDDED_WEIGHTS.with_suffix(".json").read_text())})
    if "resnet56" in names:
        cached = sorted(RESNET56_WORK.glob("base-*/base.pt"))
        if not cached:
            skipped["resnet56"] = (f"no cached base under {RESNET56_WORK.relative_to(HERE.parent)} "
                                   "(benchmarks/accuracy_vs_latency.py --arch resnet56 trains one)")
            print(f"resnet56: skipped, {skipped['resnet56']}", file=sys.stderr)
        else:
            model = ResNetCifar((16, 32, 64), 9)
            model.load_state_dict(torch.load(cached[-1], map_location="cpu", weights_only=True))
            meta = cached[-1].with_name("base.json")
            info = json.loads(meta.read_text()) if meta.is_file() else {}
            out["resnet56"] = (model.eval(), {"source": str(cached[-1].relative_to(HERE)), **info})
    return out, skipped


def batches(eval_batches: int, taylor_batches: int, batch_size: int, seed: int = 0) -> tuple[Batches, Batches]:
    """Disjoint fixed batches of the Fashion-MNIST training set: the measured ones, then the Taylor ones."""
    from latprune.data import fashion_mnist

    train = fashion_mnist().train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    chunks = [train[order[i * batch_size:(i + 1) * batch_size]] for i in range(eval_batches + taylor_batches)]
    return [tuple(c) for c in chunks[:eval_batches]], [tuple(c) for c in chunks[eval_batches:]]


# -- output ----------------------------------------------------------------------------------------
def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(results["models"].items())
    fig, axes = plt.subplots(len(rows), len(VALUES), figsize=(5 * len(VALUES), 4.2 * len(rows)), squeeze=False)
    for (name, r), row in zip(rows, axes):
        pts = r["points"]
        layers = list(dict.fromkeys(p["layer"] for p in pts))
        colours = plt.get_cmap("viridis")(np.linspace(0, 1, len(layers)))
        meas = np.array([p["measured"] for p in pts])
        for value, ax in zip(VALUES, row):
            pred = np.array([p["predicted"][value] for p in pts])
            floor = pred[pred > 0].min() / 10 if (pred > 0).any() else 1e-9
            for k, layer in enumerate(layers):
                m = np.array([p["layer"] == layer for p in pts])
                zero = m & (pred <= 0)
                ax.plot(pred[m & (pred > 0)], meas[m & (pred > 0)], "-o", ms=3, lw=0.6, color=colours[k])
                ax.scatter(np.full(zero.sum(), floor), meas[zero], marker="x", color=colours[k])
            ax.set_xscale("log")
            ax.set_yscale("symlog", linthresh=1e-3)
            a = r["agreement"][value]
            ax.set_title(f"{name}: {value}\nSpearman {_fmt(a['spearman_all'])}, cross-layer concordance "
                         f"{_fmt(a['cross_layer_concordance'])}", fontsize=9)
            ax.set_xlabel("predicted loss increase (-option value; x at left: predicted 0)")
            ax.set_ylabel("measured loss increase (symlog)")
            ax.grid(alpha=0.3)
    fig.suptitle("rank options: measured loss increase vs knapsack value (a line per layer, stem dark → fc light)",
                 fontsize=10)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def table(results: dict[str, Any]) -> str:
    """The markdown summary of a result file."""
    lines = [f"`{results['command']}` — {results['device']['cpu']}, 1 thread, {results['date']}; "
             f"{results['eval_batches']}×{results['batch_size']} measured training images, Taylor on "
             f"{results['taylor_batches']}×{results['batch_size']} others.", "",
             "| model | value | points | Spearman (all) | within layer (mean / min) | cross-layer concordance "
             "| cross-layer Spearman at equal rank fraction | log-log Pearson | log-log slope | median log residual "
             "(decades) | resolved points: Spearman / cross-layer concordance |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        for value in VALUES:
            a = r["agreement"][value]
            log = a["log"]
            left = f" ({log['left_out']} left out)" if log["left_out"] else ""
            lines.append(f"| {name} | {value} | {len(r['points'])} | {_fmt(a['spearman_all'])} | "
                         f"{_fmt(a['within_layer_spearman_mean'])} / {_fmt(a['within_layer_spearman_min'])} | "
                         f"{_fmt(a['cross_layer_concordance'])} | {_fmt(a['cross_layer_spearman_at_fraction_mean'])} | "
                         f"{_fmt(log.get('pearson'))}{left} | {_fmt(log.get('slope'), 2)} | "
                         f"{_fmt(log.get('median_abs_residual_decades'), 2)} | {a['resolved']['points']}: "
                         f"{_fmt(a['resolved']['spearman_all'])} / {_fmt(a['resolved']['cross_layer_concordance'])} |")
    lines += [f"\n{name}: not measured, {why}." for name, why in results.get("skipped", {}).items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet20,resnet56",
                        help="resnet20 (embedded), resnet56 (the cached accuracy-benchmark base, when there is one)")
    parser.add_argument("--eval-batches", type=int, default=20, help="training batches the loss is measured on")
    parser.add_argument("--taylor-batches", type=int, default=16,
                        help="other training batches the Taylor scores average over (ImportanceConfig's default)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=PLOT)
    parser.add_argument("--table", action="store_true", help="print the markdown summary of the result file")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.results.read_text())))
        return
    names = args.models.split(",")
    unknown = [n for n in names if n not in ("resnet20", "resnet56")]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: resnet20, resnet56")
    if min(args.eval_batches, args.taylor_batches, args.batch_size, args.threads) < 1:
        parser.error("--eval-batches, --taylor-batches, --batch-size and --threads must be at least 1")
    from latprune.runtime.fingerprint import host_fingerprint

    torch.set_num_threads(args.threads)
    start = time.time()
    held, taylor = batches(args.eval_batches, args.taylor_batches, args.batch_size)
    results: dict[str, Any] = {
        "benchmark": "rank_value", "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(), "device": host_fingerprint(), "threads": args.threads,
        "torch": torch.__version__, "data": "fashion-mnist train", "eval_batches": args.eval_batches,
        "taylor_batches": args.taylor_batches, "batch_size": args.batch_size, "values": list(VALUES), "models": {}}
    found, results["skipped"] = models(names)
    for name, (model, source) in found.items():
        t0 = time.time()
        r = rank_value(model, INPUT, held, taylor, progress=True)
        results["models"][name] = {"source": source, **r, "seconds_total": round(time.time() - t0, 1)}
        for value in VALUES:
            a = r["agreement"][value]
            print(f"{name} {value}: Spearman {_fmt(a['spearman_all'])}, cross-layer concordance "
                  f"{_fmt(a['cross_layer_concordance'])}, log-log Pearson {_fmt(a['log'].get('pearson'))}")
    results["seconds"] = round(time.time() - start, 1)
    write_json(args.results, results)
    plot(results, args.plot)
    print(table(results))
    print(f"wrote {args.results} and {args.plot} in {results['seconds']:.0f} s")


if __name__ == "__main__":
    main()
