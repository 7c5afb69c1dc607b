"""Experiment: why ``gator`` started open misses issue #4's +1 point at 0.3x on ResNet-56.

    python benchmarks/gator_variants.py VARIANT [options of accuracy_vs_latency.py]
    # session 14: VARIANT --arch resnet56 --base train --base-epochs 5 --epochs 1 --budgets 0.3 --seeds 0
    #             --methods VARIANT

Each variant is ``--method gator`` (gates started open) with one change to
its gate training, run by ``accuracy_vs_latency.py``'s own loop (same base,
LUT, budgets, fine-tuning, final passes) into
``results/gator_variants_resnet56.json`` (no plot). The variants stay out of
the package: none of them beat ``gator`` (BENCHMARKS.md, session 14).

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
                     share at lambda = 1 (:class:`TaylorSignal`).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
import accuracy_vs_latency as bench  # noqa: E402

import latprune.pruner.methods as methods  # noqa: E402
from latprune.pruner.gates import GateConfig, LatencyPenalty  # noqa: E402


class TaylorSignal(LatencyPenalty):
    """``gator-fisher``: the latency term as in ``gator``, and instead of the straight-through
    task gradient, ``-kappa · Σ sigmoid(logit) · share`` where ``share`` is each gate's EMA of
    squared per-batch ``dL/dgate`` over the total (the gates' hard 0/1 samples are leaves, so
    the task loss trains the weights under the sampled masks but does not reach the logits)."""

    beta = 0.9   # EMA of the squared gradients
    warmup = 5   # steps before the importance term (and kappa) start

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h: list[torch.Tensor] | None = None
        self.hb: torch.Tensor | None = None
        self.ema: list[torch.Tensor] | None = None
        self.ema_b: torch.Tensor | None = None
        self.kappa: float | None = None
        self.steps = 0

    def before_forward(self) -> None:
        g = self.gates
        if self.h is not None and self.hb is not None:  # the previous step's gradients
            sq = [t.grad.detach() ** 2 if t.grad is not None else torch.zeros_like(t) for t in self.h]
            sqb = self.hb.grad.detach() ** 2 if self.hb.grad is not None else torch.zeros_like(self.hb)
            if self.ema is None or self.ema_b is None:
                self.ema, self.ema_b = sq, sqb
            else:
                b = self.beta
                self.ema = [b * e + (1 - b) * s for e, s in zip(self.ema, sq)]
                self.ema_b = b * self.ema_b + (1 - b) * sqb
        g.mode = "sample"

        def draw(lg: torch.Tensor) -> torch.Tensor:
            u = torch.rand_like(lg).clamp(1e-6, 1 - 1e-6)
            return ((lg.detach() + torch.log(u) - torch.log1p(-u)) > 0).float().requires_grad_(True)

        self.h = [draw(lg) for lg in g.logits]
        self.hb = draw(g.block_logits)
        g.current = self.h
        g.block_current = self.hb

    def loss(self) -> tuple[torch.Tensor, dict[str, str]]:
        term, fields = super().loss()
        self.steps += 1
        if self.ema is None or self.ema_b is None or self.steps < self.warmup:
            return term, fields
        total = sum(float(e.sum()) for e in self.ema) or 1.0
        if self.kappa is None:
            widths = {gid: t.detach().requires_grad_(True) for gid, t in self.gates.expected_widths().items()}
            keep = {k: v.detach() for k, v in self.gates.block_keep().items()}
            grads = torch.autograd.grad(self.soft(widths, keep), list(widths.values()), allow_unused=True)
            lat = torch.cat([(gr if gr is not None else torch.zeros(())).reshape(1).expand(len(self.ema[gid]))
                             for gid, gr in zip(widths, grads)])
            self.kappa = float(lat.mean() / self.budget_ms) * len(lat)
        kept = sum((torch.sigmoid(lg) * (e / total)).sum() for lg, e in zip(self.gates.logits, self.ema))
        kept = kept + (torch.sigmoid(self.gates.block_logits) * (self.ema_b / total)).sum()
        return term - self.kappa * kept, fields


VARIANTS: dict[str, dict[str, Any]] = {  # GateConfig overrides
    "gator-t1i2": {"temperature": 1.0, "init": 2.0},
    "gator-t1i3": {"temperature": 1.0, "init": 3.0},
    "gator-openscore": {},
    "gator-fisher": {},
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in VARIANTS:
        raise SystemExit(f"usage: gator_variants.py VARIANT [options]; VARIANT one of {', '.join(VARIANTS)}")
    name = sys.argv.pop(1)
    methods.GateConfig = functools.partial(GateConfig, **VARIANTS[name])  # type: ignore[misc]
    if name == "gator-fisher":
        methods.LatencyPenalty = TaylorSignal  # type: ignore[misc]
    if name == "gator-openscore":
        scores = methods.Context.scores

        def open_scores(self: methods.Context, gates: Any = None, mode: str = "open", batches: int | None = None,
                        seed_offset: int = 0) -> Any:
            return scores(self, gates, "open" if mode == "hard" else mode, batches, seed_offset)

        methods.Context.scores = open_scores  # type: ignore[method-assign]
    bench.METHODS = bench.METHODS + tuple(VARIANTS)
    bench.VARIANTS.update({v: ("gator", {}) for v in VARIANTS})
    bench.plot = lambda *a, **k: None  # the plot's markers cover the benchmark's own methods only
    if "--results" not in sys.argv:
        sys.argv += ["--results", str(bench.HERE / "results" / "gator_variants_resnet56.json")]
    bench.main()


if __name__ == "__main__":
    main()
