"""Experiment: which knapsack value function gives the best accuracy at equal predicted latency?

    python benchmarks/knapsack_values.py [--ratio 0.3] [--epochs 0.25]

A quick proxy for issue #4's question "why does the knapsack lose to a uniform
cut at 0.3x?". On the embedded ResNet-20 / Fashion-MNIST base and the
benchmark's ort-cpu LUT (``benchmarks/luts/resnet20-embedded-ort-cpu-1t.lut``,
made by ``accuracy_vs_latency.py``), every value function picks widths for
the same *predicted* budget (``ratio`` × the base's prediction); each pick is slimmed from the base (Taylor ranking inside
groups), fine-tuned ``--epochs`` and scored on the 10k test images:

``uniform``   half of every group: what ``uniform-l1`` picked at 0.3x in
              ``accuracy_vs_latency.py`` (it measured under that budget; its
              prediction here may exceed the proxy's target);
``taylor``    kept Taylor score (the default values of gator and halp);
``norm``      Taylor scores normalised to sum 1 in every group;
``log``       log of each group's normalised kept Taylor score (a concave value);
``measured``  minus the loss increase measured with one group cut at a time
              (``--importance measured``).

Each with and without whole-block removal (``+blk``). One seed, short
fine-tuning: differences under about a point are noise. Results:
``benchmarks/results/knapsack_values.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
LUT = HERE / "luts" / "resnet20-embedded-ort-cpu-1t.lut"
RESULTS = HERE / "results" / "knapsack_values.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--epochs", type=float, default=0.25)
    args = parser.parse_args()
    if not LUT.is_file():
        raise SystemExit(f"{LUT} is missing: run benchmarks/accuracy_vs_latency.py --base embedded first")

    import torch

    from latprune._io import atomic_write_json
    from latprune.data import fashion_mnist, loader
    from latprune.latency_lut.predict import Predictor
    from latprune.latency_lut.profile import load_calibration
    from latprune.latency_lut.store import Lut
    from latprune.models import load_model
    from latprune.pruner.gates import Gates
    from latprune.pruner.graph import ChannelGraph
    from latprune.pruner.importance import Scores, option_losses, taylor_importance
    from latprune.pruner.knapsack import option_values, solve
    from latprune.pruner.methods import keep_top
    from latprune.train import TrainConfig, evaluate, train

    start = time.time()
    spec = load_model("default", "1x1x28x28")
    data = fashion_mnist()
    graph = ChannelGraph.build(spec.model, spec.input_shape)
    with Lut.open(LUT) as lut:
        stored = load_calibration(lut, graph.signature())
        if stored is None:
            raise SystemExit(f"{LUT} has no calibration for this model: re-run accuracy_vs_latency.py")
        predictor = Predictor(lut, graph)
        predictor.calibration, grid = stored
        target = predictor.predict(graph.full_widths()) * args.ratio
        scores = taylor_importance(graph, loader(data.train, 64, shuffle=True, seed=1), 16, progress=False)
        runs: dict[str, dict[str, Any]] = {}

        def run(name: str, widths: dict[int, int]) -> None:
            slim = graph.slim(keep_top(scores, widths))
            torch.manual_seed(0)
            train(slim, data.train, TrainConfig(epochs=args.epochs, lr=0.01, batch_size=64, seed=0), desc=name)
            runs[name] = {"accuracy": evaluate(slim, data.test), "predicted_ms": predictor.predict(widths),
                          "widths": {graph.groups[g].root: w for g, w in sorted(widths.items())}}
            RESULTS.parent.mkdir(exist_ok=True)  # saved after every run: a killed experiment keeps its results
            atomic_write_json(RESULTS, {"ratio": args.ratio, "epochs": args.epochs, "target_predicted_ms": target,
                                        "seconds": round(time.time() - start, 1), "runs": runs})
            print(f"{name:13s} acc {runs[name]['accuracy']:.2%}  predicted {runs[name]['predicted_ms']:.3f} ms  "
                  f"widths {list(runs[name]['widths'].values())}", flush=True)

        for blocks in (False, True):
            options = graph.options(grid, blocks=blocks)
            sfx = "+blk" if blocks else ""
            if not blocks:  # the widths uniform-l1 picked at 0.3x in accuracy_vs_latency (measured 0.80 ms)
                widths = {g: graph.groups[g].size // 2 for g in options}
                run("uniform", widths)
            run("taylor" + sfx, solve(predictor, options, scores, target).widths)
            norm = Scores({g: s / s.sum() for g, s in scores.channels.items()},
                          {g: v / scores.channels[g].sum() for g, v in scores.blocks.items()})
            run("norm" + sfx, solve(predictor, options, norm, target).widths)
            log_values = {g: [math.log(max(v * len(options), 1e-3)) for v in vals]
                          for g, vals in option_values(norm, options).items()}
            run("log" + sfx, solve(predictor, options, scores, target, values=log_values).widths)
            increases = option_losses(graph, Gates(graph, init=10.0, blocks=blocks), options, scores,
                                      loader(data.train, 64, shuffle=True, seed=7), 16, progress=False)
            run("measured" + sfx, solve(predictor, options, scores, target,
                                        values={g: [-v for v in increases[g]] for g in options}).widths)
    print(f"wrote {RESULTS} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
