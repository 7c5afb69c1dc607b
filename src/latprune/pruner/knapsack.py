"""Pick one width per group: the most importance kept with predicted latency ≤ budget.

A multiple-choice knapsack (HALP, Shen et al. 2022): each group offers its
width options (the LUT's grid), each option has a value (the summed
importance of the channels it keeps) and a latency cost. A unit's latency
depends on two groups (its input and output widths), so costs are
linearised around the current solution — half of a unit's latency is charged
to its input group, half to its output group, and the groups a concatenation
joins into its input what their width changes of that half — the knapsack is solved by
dynamic programming over discretised latency, and the linearisation is
redone at the new solution until it stops changing (the calibration, where
it scales the units with the configuration's weights, linearised there too). Finally the exact
(coupled, calibrated) prediction is enforced: a greedy pass removes the
cheapest importance per millisecond until the budget holds, and another
spends any slack left on the most valuable widenings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from latprune.errors import BudgetError
from latprune.graph.lowrank import is_rank_axis, rank_axis
from latprune.graph.units import Unit
from latprune.latency_lut.predict import Predictor
from latprune.pruner.importance import Scores


@dataclass(frozen=True)
class Solution:
    widths: dict[int, int]
    predicted_ms: float
    value: float          # kept importance, as a fraction of the total
    iterations: int


def option_values(scores: Scores, options: dict[int, list[int]]) -> dict[int, list[float]]:
    """value[g][i] = importance kept by the best ``options[g][i]`` channels of group g, normalised
    so that keeping everything is worth 1 in total. Width 0 (a removed block) keeps the group's
    full value minus the block's own score: the loss change when its whole branch goes. A rank
    axis's option r is worth minus the scores of the singular values it drops (its last option,
    the layer whole, drops none)."""
    total = sum(float(s.sum()) for s in scores.channels.values()) or 1.0
    values = {}
    for g, opts in options.items():
        if is_rank_axis(g):
            dropped = np.concatenate([np.cumsum(scores.ranks[g][::-1])[::-1], [0.0]])
            values[g] = [-float(dropped[min(r, len(dropped) - 1)]) / total for r in opts]
            continue
        ranked = np.sort(scores.channels[g])[::-1]
        cum = np.concatenate([[0.0], np.cumsum(ranked)])
        values[g] = [float(cum[w]) / total for w in opts]
        if opts and opts[0] == 0 and g in scores.blocks:
            values[g][0] = (float(cum[-1]) - scores.blocks[g]) / total
    return values


def _linearised_costs(predictor: Predictor, options: dict[int, list[int]], current: dict[int, int],
                      ms_per_mib: float = 0.0, removed_ms: float | None = None
                      ) -> tuple[dict[int, list[float]], float]:
    """cost[g][i] (raw ms) of giving axis g its i-th option, the other axes at ``current``; and the
    fixed part. A unit's latency is shared evenly among the axes that set it: its input and
    output groups and, where it is offered one, its rank (:mod:`~latprune.graph.lowrank`). The
    other groups a concatenation joins into its input are charged what their width changes of
    it, at the same share: a DenseNet layer's growth channels cost every later layer they feed.
    Each MiB of a unit's weights costs ``ms_per_mib`` raw ms more and a unit a removed block takes
    away ``removed_ms`` (the calibration's own by default), as :func:`_linearisation` gives them."""
    removed_ms = predictor.calibration.removed_unit_ms if removed_ms is None else removed_ms

    def cost(unit: Unit, widths: dict[int, int]) -> float:
        if unit.name in predictor.graph.removed_units(widths):
            return removed_ms
        ms = predictor.unit_ms(unit, widths)
        return ms + ms_per_mib * predictor.unit_weights_mib(unit, widths) if ms_per_mib else ms

    costs = {g: [0.0] * len(opts) for g, opts in options.items()}
    fixed = 0.0
    for i, unit in enumerate(predictor.graph.units):
        axes = {None if unit.depthwise else unit.in_group, unit.out_group, rank_axis(i)} & options.keys()
        joined = {g for g, _ in unit.in_others} & options.keys() - axes
        now = cost(unit, current) if joined or not axes else 0.0
        if not axes:
            fixed += now
        for g in axes:
            for j, w in enumerate(options[g]):
                costs[g][j] += cost(unit, {**current, g: w}) / len(axes)
        for g in joined:
            for j, w in enumerate(options[g]):
                costs[g][j] += (cost(unit, {**current, g: w}) - now) / max(1, len(axes))
    return costs, fixed


def _linearisation(predictor: Predictor, current: dict[int, int]) -> tuple[float, float, float, float]:
    """The prediction ``s · (K·(1 + γ·W) + r·R) + offset`` (K the kept units' sum, W their weights,
    R the units removed) linearised at ``current`` (K₀, W₀) in raw ms of the local scale
    ``L = s·(1 + γ·W₀)``: ``L · (K + a·W + b·R) + c``. Returns L, a = γ·K₀ / (1 + γ·W₀) (raw ms per
    MiB of weights), b = r / (1 + γ·W₀) (raw ms per removed unit) and c = offset − L·a·W₀; without
    the weights term, s, 0, r and the offset."""
    cal = predictor.calibration
    if not cal.per_weight_mib:
        return cal.scale, 0.0, cal.removed_unit_ms, cal.offset_ms
    weights = predictor.weights_mib(current)
    factor = 1 + cal.per_weight_mib * weights
    local = cal.scale * factor
    ms_per_mib = cal.per_weight_mib * predictor.unit_sum(current) / factor
    return local, ms_per_mib, cal.removed_unit_ms / factor, cal.offset_ms - local * ms_per_mib * weights


def _mck(costs: dict[int, list[float]], values: dict[int, list[float]], capacity: float,
         bins: int) -> dict[int, int] | None:
    """Multiple-choice knapsack by DP over ``bins`` latency bins; option index per group, or None.

    Each group's costs are taken relative to its cheapest option (and the capacity
    lowered by their sum): one option per group is picked, so the problem is the
    same, and an option cheaper than nothing — a removed block whose calibrated
    cost per removed unit came out negative — needs no negative bin."""
    floor = {g: min(c, default=0.0) for g, c in costs.items()}
    capacity -= sum(floor.values())
    costs = {g: [c - floor[g] for c in cs] for g, cs in costs.items()}
    if capacity <= 0:
        return None
    unit = capacity / bins
    groups = list(costs)
    neg = -math.inf
    dp = np.full(bins + 1, neg)
    dp[0] = 0.0
    back = np.zeros((len(groups), bins + 1), dtype=np.int64)
    for gi, g in enumerate(groups):
        new = np.full(bins + 1, neg)
        choice = np.zeros(bins + 1, dtype=np.int64)
        for i, (c, v) in enumerate(zip(costs[g], values[g])):
            w = int(math.ceil(c / unit - 1e-9))
            if w > bins:
                continue
            shifted = np.full(bins + 1, neg)
            shifted[w:] = dp[: bins + 1 - w] + v
            better = shifted > new
            new[better] = shifted[better]
            choice[better] = i
        dp = new
        back[gi] = choice
    end = int(np.argmax(dp))
    if dp[end] == neg:
        return None
    picks: dict[int, int] = {}
    b = end
    for gi in range(len(groups) - 1, -1, -1):
        g = groups[gi]
        i = int(back[gi, b])
        picks[g] = i
        b -= int(math.ceil(costs[g][i] / unit - 1e-9))
    return picks


def solve(predictor: Predictor, options: dict[int, list[int]], scores: Scores,
          budget_ms: float, bins: int = 400, max_iters: int = 10,
          values: dict[int, list[float]] | None = None) -> Solution:
    """Widths for every group with ``predictor.predict(widths) <= budget_ms``.

    ``values`` (per group and option) replaces the values derived from ``scores``
    (e.g. measured loss changes, see :func:`~latprune.pruner.importance.option_losses`).
    Raises :class:`BudgetError` (naming the smallest reachable latency) when
    even the narrowest configuration misses the budget."""
    values = option_values(scores, options) if values is None else values
    narrowest = cheapest(predictor, options)
    floor_ms = predictor.predict(narrowest)
    if floor_ms > budget_ms:
        raise BudgetError(
            f"budget {budget_ms:.3f} ms is below the smallest reachable latency {floor_ms:.3f} ms "
            f"(every group at its narrowest width); ask for at least {floor_ms:.3f} ms"
        )
    current = {g: opts[-1] for g, opts in options.items()}
    iterations = 0
    for iterations in range(1, max_iters + 1):
        local, ms_per_mib, removed_ms, constant = _linearisation(predictor, current)
        costs, fixed = _linearised_costs(predictor, options, current, ms_per_mib, removed_ms)
        picks = _mck(costs, values, (budget_ms - constant) / local - fixed, bins)
        if picks is None:
            current = dict(narrowest)
            break
        new = {g: options[g][i] for g, i in picks.items()}
        if new == current:
            break
        current = new
    current = descend(predictor, options, values, current, budget_ms)
    current = fill(predictor, options, values, current, budget_ms)
    return Solution(current, predictor.predict(current), kept_value(values, options, current), iterations)


def cheapest(predictor: Predictor, options: dict[int, list[int]]) -> dict[int, int]:
    """The configuration the prediction prices lowest: every group at its narrowest width,
    and every rank axis at its cheapest option there (its lowest rank need not be: the pair
    is two kernels)."""
    widths = {g: opts[0] if not is_rank_axis(g) else opts[-1] for g, opts in options.items()}
    for g, opts in options.items():
        if is_rank_axis(g):
            widths[g] = min(opts, key=lambda r: predictor.predict({**widths, g: r}))
    return widths


def kept_value(values: dict[int, list[float]], options: dict[int, list[int]], widths: dict[int, int]) -> float:
    return sum(values[g][options[g].index(w)] for g, w in widths.items())


def descend(predictor: Predictor, options: dict[int, list[int]], values: dict[int, list[float]],
            widths: dict[int, int], budget_ms: float, max_steps: int | None = None) -> dict[int, int]:
    """Narrow one group at a time (least importance lost per ms saved) until the budget
    holds, or for at most ``max_steps`` steps."""
    widths = dict(widths)
    now = predictor.predict(widths)
    steps = 0
    while now > budget_ms and (max_steps is None or steps < max_steps):
        steps += 1
        best: tuple[float, int, float] | None = None
        for g, opts in options.items():
            i = opts.index(widths[g])
            if i == 0:
                continue
            trial = {**widths, g: opts[i - 1]}
            saved = now - predictor.predict(trial)
            lost = values[g][i] - values[g][i - 1]
            ratio = lost / saved if saved > 1e-12 else math.inf
            if best is None or ratio < best[0]:
                best = (ratio, g, now - saved)
        if best is None:  # every group at its narrowest (solve() checked the budget is reachable)
            break
        _, g, now = best
        widths[g] = options[g][options[g].index(widths[g]) - 1]
    return widths


def fill(predictor: Predictor, options: dict[int, list[int]], values: dict[int, list[float]],
          widths: dict[int, int], budget_ms: float) -> dict[int, int]:
    """Widen one group at a time (most importance per ms spent) while the budget still holds."""
    widths = dict(widths)
    now = predictor.predict(widths)
    while True:
        best: tuple[float, int, float] | None = None
        for g, opts in options.items():
            i = opts.index(widths[g])
            if i == len(opts) - 1:
                continue
            trial = {**widths, g: opts[i + 1]}
            after = predictor.predict(trial)
            if after > budget_ms:
                continue
            gained = values[g][i + 1] - values[g][i]
            spent = after - now
            ratio = math.inf if spent <= 1e-12 else gained / spent
            if best is None or ratio > best[0]:
                best = (ratio, g, after)
        if best is None:
            return widths
        _, g, now = best
        widths[g] = options[g][options[g].index(widths[g]) + 1]
