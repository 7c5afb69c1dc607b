"""Width vectors on the LUT grid under a predicted-latency target: what both searches move in.

A width vector gives every group one of its options (:meth:`Context.options`: the grid's widths,
and 0 for a removable block's inner group where blocks may go). A vector is projected onto the
target by the knapsack's :func:`~latprune.pruner.knapsack.descend` (the group that loses the least
importance per millisecond saved narrows first, one step at a time) and then
:func:`~latprune.pruner.knapsack.fill` (the budget left is spent the same way).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from latprune.errors import BudgetError
from latprune.latency_lut.predict import Predictor
from latprune.pruner.knapsack import descend, fill

Widths = dict[int, int]


def key_of(widths: Widths) -> tuple[tuple[int, int], ...]:
    """A width vector as a hashable key."""
    return tuple(sorted(widths.items()))


@dataclass
class Space:
    """The options of every group, the predictor and the target (ms); ``values``: each option's
    kept importance (:func:`~latprune.pruner.knapsack.option_values`), what projection keeps."""

    predictor: Predictor
    options: dict[int, list[int]]
    values: dict[int, list[float]]
    target_ms: float

    def __post_init__(self) -> None:
        floor_ms = self.predictor.predict(self.narrowest())
        if floor_ms > self.target_ms:
            raise BudgetError(f"the target {self.target_ms:.3f} ms is below the smallest reachable latency "
                              f"{floor_ms:.3f} ms; ask for more")

    def narrowest(self) -> Widths:
        return {g: opts[0] for g, opts in self.options.items()}

    def widest(self) -> Widths:
        return {g: opts[-1] for g, opts in self.options.items()}

    def fits(self, widths: Widths) -> bool:
        return self.predictor.predict(widths) <= self.target_ms

    def project(self, widths: Widths) -> Widths:
        """``widths`` moved onto the target: narrowed while over it, then widened while the budget
        holds (the group that gains the most importance per millisecond first): a candidate
        leaving budget unused would lose to the same candidate using it for nothing but that."""
        narrowed = descend(self.predictor, self.options, self.values, widths, self.target_ms)
        return fill(self.predictor, self.options, self.values, narrowed, self.target_ms)

    def sample(self, gen: torch.Generator) -> Widths:
        """A width vector around a random overall share ``s ~ U(0, 1)`` (not projected): group g
        takes its option ``s · (K_g − 1)`` moved by a normal jitter of one option. Drawing each
        group's option uniformly and alone would give vectors whose overall width is almost always
        near the middle; these range from the narrowest to the widest."""
        share = float(torch.rand((), generator=gen))
        widths = {}
        for g, opts in self.options.items():
            i = round(share * (len(opts) - 1) + float(torch.randn((), generator=gen)))
            widths[g] = opts[min(len(opts) - 1, max(0, i))]
        return widths

    def mutate(self, widths: Widths, rate: float, gen: torch.Generator) -> Widths:
        """Each group moved to a uniformly drawn option with probability ``rate`` (not projected)."""
        out = dict(widths)
        for g, opts in self.options.items():
            if float(torch.rand((), generator=gen)) < rate:
                out[g] = opts[int(torch.randint(len(opts), (), generator=gen))]
        return out


@dataclass
class SearchResult:
    """Every candidate a search scored, in order: (score, widths)."""

    scored: list[tuple[float, Widths]] = field(default_factory=list)
    trace: list[dict[str, float]] = field(default_factory=list)  # per episode or generation: what the bar showed

    def add(self, score: float, widths: Widths) -> None:
        self.scored.append((score, dict(widths)))

    @property
    def best(self) -> tuple[float, Widths]:
        return max(self.scored, key=lambda sw: sw[0])

    def ranked(self) -> list[tuple[float, Widths]]:
        """Distinct candidates, best score first (the first scoring of a repeated candidate)."""
        seen: set[tuple[tuple[int, int], ...]] = set()
        out = []
        for score, widths in sorted(self.scored, key=lambda sw: -sw[0]):
            if key_of(widths) not in seen:
                seen.add(key_of(widths))
                out.append((score, widths))
        return out
