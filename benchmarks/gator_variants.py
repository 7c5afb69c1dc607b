"""Experiment: why ``gator`` started open misses issue #4's +1 point at 0.3x on ResNet-56.

    python benchmarks/gator_variants.py VARIANT [options of accuracy_vs_latency.py]
    # session 14: VARIANT --arch resnet56 --base train --base-epochs 5 --epochs 1 --budgets 0.3 --seeds 0
    #             --methods VARIANT

Each variant is ``--method gator --gate-signal straight-through`` (gates
started open; ``gator`` until session 15) with one change to its gate
training, run by ``accuracy_vs_latency.py``'s own loop (same base, LUT,
budgets, fine-tuning, final passes) into
``results/gator_variants_resnet56.json`` (no plot). The first three stay out
of the package (none beat it, BENCHMARKS.md, session 14); the fourth became
``--gate-signal taylor``, ``gator``'s default since session 15.

``gator-t1i2``       gates started at logit 2 instead of 3, at temperature 1
                     instead of 0.5: 12% of them sampled closed at each step at
                     the start instead of 5% (a gate is sampled closed with
                     probability sigmoid(-logit), whatever the temperature), and
                     a softer straight-through gradient;
``gator-t1i3``       temperature 1 only (the same 5% sampled closed; only the
                     straight-through gradient's sigmoid is softer);
``gator-openscore``  the knapsack's Taylor scores taken with every gate *open*
                     on the gate-trained model, so channels the gates closed
                     score as they are instead of 0;
``gator-fisher``     the gates' task signal is not the straight-through gradient
                     (the mean of dL/dgate, ~0 for every gate of a trained
                     model) but each gate's share of the Taylor importance the
                     knapsack uses: an EMA of its squared per-batch dL/dgate,
                     normalised to a fraction of the total; kappa puts the mean
                     channel's importance share at parity with its latency
                     share at lambda = 1 (:class:`latprune.pruner.gates.TaylorSignal`:
                     ``gator`` since session 15).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import accuracy_vs_latency as bench  # noqa: E402

import latprune.pruner.methods as methods  # noqa: E402
from latprune.pruner.gates import GateConfig  # noqa: E402


VARIANTS: dict[str, dict[str, Any]] = {  # GateConfig overrides
    "gator-t1i2": {"temperature": 1.0, "init": 2.0},
    "gator-t1i3": {"temperature": 1.0, "init": 3.0},
    "gator-openscore": {},
    "gator-fisher": {},
}
# PruneConfig fields: the first three changed gator as it was then, with the straight-through signal
OPTIONS: dict[str, dict[str, Any]] = {v: {"gate_signal": "taylor" if v == "gator-fisher" else "straight-through"}
                                      for v in VARIANTS}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in VARIANTS:
        raise SystemExit(f"usage: gator_variants.py VARIANT [options]; VARIANT one of {', '.join(VARIANTS)}")
    name = sys.argv.pop(1)
    methods.GateConfig = functools.partial(GateConfig, **VARIANTS[name])  # type: ignore[misc]
    if name == "gator-openscore":
        scores = methods.Context.scores

        def open_scores(self: methods.Context, gates: Any = None, mode: str = "open", batches: int | None = None,
                        seed_offset: int = 0) -> Any:
            return scores(self, gates, "open" if mode == "hard" else mode, batches, seed_offset)

        methods.Context.scores = open_scores  # type: ignore[method-assign]
    bench.METHODS = bench.METHODS + tuple(VARIANTS)
    bench.VARIANTS.update({v: ("gator", OPTIONS[v]) for v in VARIANTS})
    bench.plot = lambda *a, **k: None  # the plot's markers cover the benchmark's own methods only
    if "--results" not in sys.argv:
        sys.argv += ["--results", str(bench.HERE / "results" / "gator_variants_resnet56.json")]
    bench.main()


if __name__ == "__main__":
    main()
