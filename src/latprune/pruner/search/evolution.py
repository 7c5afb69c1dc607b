"""The ``evolution`` search: the baseline the ``graph-rl`` agent must beat, on the same PruningNet.

A population of width vectors drawn around random overall shares and projected onto the target;
then, generation by generation, children of the best ``parents`` candidates scored so far
(uniform crossover of two, each group mutated with probability ``mutation``), projected onto the
target, scored. Stops once ``candidates`` distinct vectors are scored.
"""

from __future__ import annotations

from typing import Callable

import torch

from latprune.pruner.search.space import SearchResult, Space, Widths, key_of


def crossover(a: Widths, b: Widths, gen: torch.Generator) -> Widths:
    """Each group's width from ``a`` or ``b`` with equal probability."""
    return {g: (a[g] if float(torch.rand((), generator=gen)) < 0.5 else b[g]) for g in a}


def evolve(space: Space, fitness: Callable[[Widths], float], candidates: int, population: int = 16,
           parents: int = 4, mutation: float = 0.1, seed: int = 0,
           on_candidate: Callable[[float, float], object] | None = None) -> SearchResult:
    """Every candidate scored, in order (at most ``candidates``, all within the target);
    ``on_candidate(score, best)`` after each (a progress bar's tick)."""
    gen = torch.Generator().manual_seed(seed)
    result = SearchResult()
    seen: set[tuple[tuple[int, int], ...]] = set()

    def score(widths: Widths) -> None:
        seen.add(key_of(widths))
        result.add(fitness(widths), widths)
        if on_candidate is not None:
            on_candidate(result.scored[-1][0], result.best[0])

    def fresh(make: Callable[[], Widths]) -> Widths | None:
        for _ in range(50):  # a small space runs out of new vectors: then the search ends
            widths = space.project(make())
            if key_of(widths) not in seen:
                return widths
        return None

    for _ in range(min(population, candidates)):
        widths = fresh(lambda: space.sample(gen))
        if widths is None:
            return result
        score(widths)
    while len(result.scored) < candidates:
        elite = [w for _, w in result.ranked()[:parents]]
        scores = []
        for _ in range(min(population, candidates - len(result.scored))):
            def child() -> Widths:
                i, j = (int(k) for k in torch.randint(len(elite), (2,), generator=gen))
                return space.mutate(crossover(elite[i], elite[j], gen), mutation, gen)

            widths = fresh(child)
            if widths is None:
                return result
            score(widths)
            scores.append(result.scored[-1][0])
        result.trace.append({"mean": sum(scores) / len(scores), "best": result.best[0]})
    return result
