"""The knapsack keeps predicted latency within the budget and spends it well."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from latprune.errors import BudgetError
from latprune.graph.channels import ChannelGraph, Grid
from latprune.latency_lut.backends import get_backend
from latprune.latency_lut.predict import Predictor
from latprune.latency_lut.profile import build_lut, load_calibration
from latprune.latency_lut.store import Lut
from latprune.pruner.importance import Scores
from latprune.pruner.knapsack import _mck, option_values, solve
from tests.conftest import MODELS, TINY_INPUT, dense_block_predictor

LEVELS = 4


@pytest.fixture(scope="module", params=sorted(MODELS))
def predictor(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    graph = ChannelGraph.build(MODELS[request.param](), TINY_INPUT)
    path = tmp_path_factory.mktemp("knapsack") / "k.lut"
    build_lut(graph, path, get_backend("fake", threads=1), levels=LEVELS, progress=False)
    lut = Lut.open(path)
    cal, _ = load_calibration(lut, graph.signature())
    return Predictor(lut, graph, cal)


def _scores(graph: ChannelGraph, seed: int = 0) -> Scores:
    rng = np.random.default_rng(seed)
    return Scores({g.id: rng.exponential(size=g.size) for g in graph.groups},
                  {b.group: float(rng.exponential()) for b in graph.blocks})


@pytest.mark.parametrize("per_weight_mib", [0.0, 40.0, -4.0])
@pytest.mark.parametrize("blocks", [False, True])
@pytest.mark.parametrize("fraction", [0.35, 0.5, 0.7, 0.9])
def test_solution_meets_budget(predictor: Predictor, fraction: float, blocks: bool, per_weight_mib: float) -> None:
    """Whatever the calibration's weights term (a unit's time growing, or shrinking, with the
    configuration's weights: the tiny models hold a few kilobytes), the budget holds exactly."""
    predictor = predictor.rescaled(1.0)
    predictor.calibration = replace(predictor.calibration, per_weight_mib=per_weight_mib)
    graph = predictor.graph
    full_ms = predictor.predict(graph.full_widths())
    options = graph.options(Grid(LEVELS), blocks=blocks)
    floor_ms = predictor.predict({g: o[0] for g, o in options.items()})
    budget = max(fraction * full_ms, floor_ms * 1.01)
    sol = solve(predictor, options, _scores(graph), budget)
    assert sol.predicted_ms <= budget
    assert sol.predicted_ms == pytest.approx(predictor.predict(sol.widths))
    assert all(w in options[g] for g, w in sol.widths.items())
    # nothing left to spend: no single group can widen without breaking the budget
    for g, w in sol.widths.items():
        i = options[g].index(w)
        if i + 1 < len(options[g]):
            assert predictor.predict({**sol.widths, g: options[g][i + 1]}) > budget


def test_more_budget_keeps_more_importance(predictor: Predictor) -> None:
    graph = predictor.graph
    full_ms = predictor.predict(graph.full_widths())
    options = graph.options(Grid(LEVELS))
    floor_ms = predictor.predict({g: o[0] for g, o in options.items()})
    scores = _scores(graph, 1)
    values = [solve(predictor, options, scores, floor_ms + f * (full_ms - floor_ms)).value for f in (0.3, 0.6, 1.0)]
    assert values[0] <= values[1] <= values[2] == pytest.approx(1.0)


def test_budget_below_reach_names_the_floor(predictor: Predictor) -> None:
    graph = predictor.graph
    with pytest.raises(BudgetError, match=r"smallest reachable latency [0-9.]+ ms"):
        solve(predictor, graph.options(Grid(LEVELS)), _scores(graph), 1e-6)


def test_option_values_are_normalised_and_monotone() -> None:
    scores = Scores({0: np.array([3.0, 1.0, 0.0, 2.0]), 1: np.array([4.0])}, {0: 1.5})
    values = option_values(scores, {0: [0, 1, 2, 4], 1: [1]})
    # width 0 removes the block: its full value minus the block's own score
    assert values[0] == pytest.approx([0.45, 0.3, 0.5, 0.6])
    assert values[1] == pytest.approx([0.4])


def test_removed_block_costs_nothing(predictor: Predictor) -> None:
    graph = predictor.graph
    assert graph.blocks, "both tiny models have removable residual blocks"
    full = graph.full_widths()
    block = graph.blocks[0]
    inside = sum(predictor.unit_ms(u, full) for u in graph.units if u.name in block.units)
    raw_without = predictor.raw({**full, block.group: 0})
    assert raw_without == pytest.approx(predictor.raw(full) - inside)
    assert inside > 0



def test_unit_sum_leaves_out_the_calibrations_removed_unit_term(predictor: Predictor,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # unit_sum is what a calibration is fitted on: the kept units only, whatever the calibration says
    graph = predictor.graph
    without = {**graph.full_widths(), graph.blocks[0].group: 0}
    removed = len(graph.removed_units(without))
    before = predictor.unit_sum(without)
    monkeypatch.setattr(predictor, "calibration", replace(predictor.calibration, removed_unit_ms=0.002))
    assert predictor.unit_sum(without) == pytest.approx(before)
    assert predictor.raw(without) == pytest.approx(before + 0.002 * removed) and removed > 0

def test_knapsack_drops_a_block_that_does_not_matter(predictor: Predictor) -> None:
    graph = predictor.graph
    options = graph.options(Grid(LEVELS), blocks=True)
    scores = _scores(graph, 2)
    block = graph.blocks[-1]
    scores.blocks[block.group] = 0.0  # the branch can go without any loss
    full_ms = predictor.predict(graph.full_widths())
    sol = solve(predictor, options, scores, 0.9 * full_ms)
    assert sol.widths[block.group] == 0


def test_a_removed_block_cheaper_than_nothing(predictor: Predictor, monkeypatch: pytest.MonkeyPatch) -> None:
    """A calibration fitted on a noisy machine can give a removed unit a negative cost
    (the Zen 4 VM, 2026-12-02: -0.017 ms per removed unit of ResNet-20), so a block's
    removal option costs less than nothing; the knapsack still solves and holds the budget."""
    graph = predictor.graph
    monkeypatch.setattr(predictor, "calibration", replace(predictor.calibration, removed_unit_ms=-0.05))
    options = graph.options(Grid(LEVELS), blocks=True)
    assert predictor.unit_ms(graph.units[0], graph.full_widths()) > 0
    budget = 0.6 * predictor.predict(graph.full_widths())
    sol = solve(predictor, options, _scores(graph), budget)
    assert sol.predicted_ms <= budget and sol.predicted_ms == pytest.approx(predictor.predict(sol.widths))


def test_multiple_choice_knapsack_with_negative_costs() -> None:
    # group 0: a negative-cost option worth little, a costly one worth much; group 1: two options
    costs = {0: [-2.0, 3.0], 1: [1.0, 2.0]}
    values = {0: [0.1, 0.9], 1: [0.2, 0.3]}
    assert _mck(costs, values, capacity=4.0, bins=100) == {0: 1, 1: 0}     # 3 + 1 <= 4
    assert _mck(costs, values, capacity=3.5, bins=100) == {0: 0, 1: 1}     # -2 + 2 <= 3.5; 3 + 1 does not fit
    assert _mck(costs, values, capacity=-1.5, bins=100) is None            # even -2 + 1 = -1 misses


class _Scaled:
    """A predictor that is one scale: what the closed loop rescales."""

    scheme = "channel"

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def rescaled(self, ratio: float) -> _Scaled:
        return _Scaled(self.scale * ratio)


@pytest.mark.parametrize("over", [0.0, 0.02, 0.04])
def test_the_closed_loop_converges_when_every_candidate_measures_over_its_prediction(over: float) -> None:
    """The knapsack leans on the LUT's errors: each candidate it picks measures ``over`` above
    its prediction, corrected or not. The loop still finds one that holds the target."""
    import contextlib

    from latprune.pruner.configs import HalpConfig
    from latprune.pruner.knapsack import Solution
    from latprune.pruner.methods import Context, closed_loop
    from tests.conftest import tiny_resnet

    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    full = {g.id: list(range(g.size)) for g in graph.groups}
    per_unit = 1.0 / 1000  # a configuration is w/1000 of the base: fine steps, as a deep model's knapsack has

    class Biased(Context):
        def measure_checked(self, model, target_ms, on_pass=None):  # type: ignore[no-untyped-def]
            return measured[-1], None, [measured[-1]]

        def meter(self, desc: str):  # type: ignore[no-untyped-def]
            return contextlib.nullcontext(type("Meter", (), {"set_postfix": lambda *a, **k: None,
                                                             "update": lambda *a: None})())

    measured: list[float] = []

    def solver(pred: _Scaled, target: float) -> Solution:
        w = int(target / (pred.scale * per_unit * 10.0))  # the widest configuration predicted under the target
        predicted = pred.scale * w * per_unit * 10.0
        measured.append(predicted * (1 + over))
        return Solution({graph.groups[0].id: w}, predicted, w / 1000, 1)

    ctx = Biased(graph, _Scaled(), None, None, 6.0, 10.0, HalpConfig())  # type: ignore[arg-type]
    solution, _, measured_ms, history, _ = closed_loop(ctx, solver, lambda widths: full)
    assert measured_ms <= ctx.target_ms and history[-1]["fits"]
    assert len(history) <= 4 and measured_ms >= ctx.target_ms * (1 - 0.05)  # and it uses the budget


def test_a_group_a_concatenation_joins_is_charged_what_it_costs_the_layers_it_feeds(tmp_path) -> None:
    """A DenseNet layer's growth channels are read by every later layer of its block through
    concatenations: narrowing them saves in each, and the knapsack's linearised cost of the
    group holds at least the share rule's half of what the prediction saves."""
    from latprune.pruner.knapsack import _linearised_costs

    with dense_block_predictor(tmp_path / "d.lut", LEVELS) as predictor:
        graph = predictor.graph
        options, full = graph.options(Grid(levels=LEVELS)), graph.full_widths()
        growth = next(g.id for g in graph.groups if g.root == "features.denseblock1.denselayer1.conv2")
        joined = [u for u in graph.units if growth in dict(u.in_others)]
        assert len(joined) >= 6  # three later layers, the block's output: their concatenations and readers
        costs, _ = _linearised_costs(predictor, options, full)
        narrow = {**full, growth: options[growth][0]}
        saved = predictor.raw(full) - predictor.raw(narrow)
        assert costs[growth][-1] - costs[growth][0] >= 0.5 * saved > 0
