"""Gates, block removal and the differentiable latency: the invariants of issue #4."""

from __future__ import annotations

import copy
import random
from dataclasses import replace

import pytest
import torch
from torch import nn

from latprune.graph.channels import ChannelGraph, Grid
from latprune.latency_lut.backends import get_backend
from latprune.latency_lut.predict import Predictor, SoftLatency
from latprune.latency_lut.profile import build_lut, load_calibration
from latprune.latency_lut.store import Lut
from latprune.pruner.configs import GATE_SIGNALS
from latprune.pruner.gates import (
    SIGNALS,
    GateConfig,
    Gates,
    LatencyPenalty,
    TaylorSignal,
    latency_penalty,
)
from latprune.pruner.plan import GroupPlan, PruningPlan
from tests.conftest import MODELS, TINY_INPUT, dense_block_predictor, randomise_bn_

LEVELS = 4


def _random_hard_gates(graph: ChannelGraph, seed: int, drop_block: bool) -> tuple[Gates, dict[int, list[int]]]:
    """Gates closed at random (every group keeps at least one channel), maybe one block closed;
    and the equivalent keep lists (an empty list for the closed block's inner group)."""
    rng = random.Random(seed)
    gates = Gates(graph, init=5.0)
    keep: dict[int, list[int]] = {}
    with torch.no_grad():
        for g in graph.groups:
            kept = sorted(rng.sample(range(g.size), rng.randint(1, g.size)))
            closed = [i for i in range(g.size) if i not in kept]
            gates.logits[g.id][closed] = -5.0
            keep[g.id] = kept
        if drop_block:
            i = rng.randrange(len(gates.blocks))
            gates.block_logits[i] = -5.0
            keep[gates.blocks[i].group] = []
    gates.mode = "hard"
    return gates, keep


def _gated_output(gates: Gates, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model``'s output on ``x`` with ``gates`` hooked in, as they are now."""
    gates.attach()
    try:
        gates.refresh()
        with torch.no_grad():
            return model(x)
    finally:
        gates.detach()


@pytest.mark.parametrize("drop_block", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hard_gated_model_equals_slimmed_model(tiny_model: nn.Module, seed: int, drop_block: bool) -> None:
    graph = ChannelGraph.build(tiny_model, TINY_INPUT)
    gates, keep = _random_hard_gates(graph, seed, drop_block)
    slim = graph.slim(keep)
    x = torch.randn(4, *TINY_INPUT[1:])
    gated = _gated_output(gates, tiny_model, x)
    with torch.no_grad():
        assert torch.allclose(gated, slim(x), atol=1e-5)
        assert torch.allclose(gated, graph.mask(keep)(x), atol=1e-5)
    if drop_block:
        removed = graph.removed_blocks({g: len(k) for g, k in keep.items()})
        assert len(removed) == 1 and isinstance(slim.get_submodule(removed[0].name), nn.Identity)


def test_a_closed_passing_block_passes_its_input_as_its_removal_does() -> None:
    """ShuffleNetV2's removable branch: its gate mixes its output with its input, so closed
    it passes its half of the channels on, as the slimmed unit without it does."""
    from torchvision.models import shufflenet_v2_x0_5

    torch.manual_seed(0)
    model = randomise_bn_(shufflenet_v2_x0_5(num_classes=10).eval())
    graph = ChannelGraph.build(model, (1, 3, 32, 32))
    gates, keep = _random_hard_gates(graph, 0, drop_block=True)
    x = torch.randn(2, 3, 32, 32)
    gated = _gated_output(gates, model, x)
    slim = graph.slim(keep)
    with torch.no_grad():
        assert torch.allclose(gated, slim(x), atol=1e-5)


def test_gates_start_from_a_plan_undecided_on_what_it_drops(tiny_model: nn.Module) -> None:
    graph = ChannelGraph.build(tiny_model, TINY_INPUT)
    _, keep = _random_hard_gates(graph, seed=3, drop_block=True)
    gates = Gates(graph, init=3.0)
    gates.start_from(keep)
    for g, kept in keep.items():
        logits = gates.logits[g].detach()
        assert (logits[kept] == 3.0).all() and int((logits == 0.0).sum()) == graph.groups[g].size - len(kept)
    assert gates.hard_widths() == {g: len(k) for g, k in keep.items()}  # logit 0 is closed when thresholded
    assert gates.closed_blocks() == [b.name for b in gates.blocks if not keep[b.group]]
    closed_block = next(i for i, b in enumerate(gates.blocks) if not keep[b.group])
    block_logits = gates.block_logits.detach()
    assert float(block_logits[closed_block]) == 0.0 and float(block_logits.max()) == 3.0


def test_removed_block_equals_zeroed_branch(tiny_model: nn.Module) -> None:
    graph = ChannelGraph.build(tiny_model, TINY_INPUT)
    x = torch.randn(2, *TINY_INPUT[1:])
    for block in graph.blocks:
        zeroed = copy.deepcopy(tiny_model)
        with torch.no_grad():
            for name in block.branch_ends:
                end = zeroed.get_submodule(name)
                end.weight.zero_()
                end.bias.zero_()
        removed = graph.slim({block.group: []})
        with torch.no_grad():
            assert torch.allclose(zeroed(x), removed(x), atol=1e-5)
        assert block.units and all(u.startswith(block.name + ".") for u in block.units)


def test_blocks_called_with_extra_arguments_can_be_removed() -> None:
    """EfficientNet-Lite calls each block as block(x, drop_connect_rate=...)."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from latprune.models import registered_model

    spec = registered_model("efficientnet-lite0", (1, 3, 64, 64))
    graph = ChannelGraph.build(spec.model, spec.input_shape)
    assert graph.blocks
    widths = {**graph.full_widths(), graph.blocks[-1].group: 0, graph.blocks[0].group: 0}
    slim = graph.slim_to_widths(widths).eval()
    with torch.no_grad():
        assert slim(torch.randn(*spec.input_shape)).shape == (1, 1000)


def test_plan_with_removed_block_replays_on_a_fresh_model() -> None:
    model = MODELS["resnet"]()
    graph = ChannelGraph.build(model, TINY_INPUT)
    block = graph.blocks[-1]
    highway = next(g for g in graph.groups if g.root == "stem.0")
    removed, channels = graph.split_keep({block.group: [], highway.id: [0, 3, 5]})
    plan = PruningPlan("x", TINY_INPUT, tuple(GroupPlan(graph.groups[g].root, graph.groups[g].size, tuple(k))
                                              for g, k in channels.items()), tuple(b.name for b in removed))
    replayed = PruningPlan.from_json(plan.to_json()).apply_(MODELS["resnet"]())
    slim = graph.slim({block.group: [], highway.id: [0, 3, 5]})
    assert replayed.state_dict().keys() == slim.state_dict().keys()
    x = torch.randn(1, *TINY_INPUT[1:])
    replayed.load_state_dict(slim.state_dict())
    with torch.no_grad():
        assert torch.equal(replayed(x), slim(x))


def test_version_1_plans_still_load() -> None:
    plan = PruningPlan("x", TINY_INPUT, (GroupPlan("stem.0", 8, (0, 1)),))
    text = plan.to_json().replace('"version": 2', '"version": 1').replace('"removed_blocks": [],', "")
    assert PruningPlan.from_json(text).removed_blocks == ()


@pytest.fixture(scope="module", params=sorted(MODELS))
def predictor(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    torch.manual_seed(0)  # the same weights whichever tests ran before
    graph = ChannelGraph.build(randomise_bn_(MODELS[request.param]()), TINY_INPUT)
    path = tmp_path_factory.mktemp("gates") / "g.lut"
    build_lut(graph, path, get_backend("fake", threads=1), levels=LEVELS, progress=False)
    lut = Lut.open(path)
    cal, _ = load_calibration(lut, graph.signature())
    return Predictor(lut, graph, cal)


@pytest.mark.parametrize("per_weight_mib", [0.0, 30.0])
def test_soft_latency_matches_the_predictor_on_the_grid(predictor: Predictor, per_weight_mib: float) -> None:
    predictor = predictor.rescaled(1.0)
    predictor.calibration = replace(predictor.calibration, per_weight_mib=per_weight_mib)
    graph = predictor.graph
    options = graph.options(Grid(LEVELS), blocks=True)
    soft = SoftLatency(predictor, options)
    rng = random.Random(0)
    for _ in range(5):
        widths = {g: rng.choice([w for w in opts if w > 0]) for g, opts in options.items()}
        value = soft({g: torch.tensor(float(w)) for g, w in widths.items()})
        assert float(value) == pytest.approx(predictor.predict(widths), rel=1e-5)
    block = graph.blocks[0]
    widths = graph.full_widths()
    keep = {b.group: torch.tensor(0.0 if b is block else 1.0) for b in graph.blocks}
    dropped = soft({g: torch.tensor(float(w)) for g, w in widths.items()}, keep)
    assert float(dropped) == pytest.approx(predictor.predict({**widths, block.group: 0}), rel=1e-5)
    # a removed unit's residual cost (the calibration's removed_unit_ms) counts on both sides
    saved = predictor.predict(widths) - predictor.predict({**widths, block.group: 0})
    predictor.calibration = replace(predictor.calibration, removed_unit_ms=0.001)
    dropped = soft({g: torch.tensor(float(w)) for g, w in widths.items()}, keep)
    assert float(dropped) == pytest.approx(predictor.predict({**widths, block.group: 0}), rel=1e-5)
    after = predictor.predict(widths) - predictor.predict({**widths, block.group: 0})
    assert after == pytest.approx(saved - predictor.calibration.scale * 0.001 * len(block.units), rel=1e-6)


def test_latency_gradient_reaches_both_sides_of_a_unit(predictor: Predictor) -> None:
    graph = predictor.graph
    soft = SoftLatency(predictor, graph.options(Grid(LEVELS)))
    widths = {g.id: torch.tensor(g.size * 0.6, requires_grad=True) for g in graph.groups}
    soft(widths).backward()
    unit = next(u for u in graph.units if u.in_group is not None and u.out_group is not None
                and u.in_group != u.out_group and not u.depthwise)
    assert widths[unit.in_group].grad > 0 and widths[unit.out_group].grad > 0


def test_soft_latency_follows_each_group_a_concatenation_joins(tmp_path) -> None:
    """A DenseNet layer's growth channels are joined into every later layer's input: moving any
    one group alone, the soft latency moves as the predictor does, and its gradient reaches
    every joined group through each unit that reads it."""
    with dense_block_predictor(tmp_path / "d.lut", LEVELS) as predictor:
        graph = predictor.graph
        options = graph.options(Grid(LEVELS))
        soft = SoftLatency(predictor, options)
        full = graph.full_widths()
        joined = {g for u in graph.units for g, _ in u.in_others}
        assert joined
        for g in joined:
            narrow = {**full, g: min(options[g])}
            value = soft({k: torch.tensor(float(w)) for k, w in narrow.items()})
            assert float(value) == pytest.approx(predictor.predict(narrow), rel=1e-5)
        widths = {g.id: torch.tensor(g.size * 0.6, requires_grad=True) for g in graph.groups}
        soft(widths).backward()
        assert all(widths[g].grad > 0 for g in joined)


def test_latency_loss_lowers_predicted_latency_in_a_few_steps(predictor: Predictor) -> None:
    graph = predictor.graph
    options = graph.options(Grid(LEVELS), blocks=True)
    soft = SoftLatency(predictor, options)
    gates = Gates(graph, init=3.0)
    start = float(soft(gates.expected_widths(), gates.block_keep()).detach())
    penalty = LatencyPenalty(gates, soft, 0.5 * start, GateConfig(gate_lr=0.2))
    opt = penalty.optimizer()
    for _ in range(10):
        term, fields = penalty.loss()
        opt.zero_grad()
        term.backward()
        opt.step()
    end = float(soft(gates.expected_widths(), gates.block_keep()).detach())
    assert end < 0.95 * start
    assert penalty.lam > 1.0 and "E[lat]" in fields  # λ grew while above the budget
    assert [h["expected_ms"] for h in penalty.history] == sorted(h["expected_ms"] for h in penalty.history)[::-1]


@pytest.mark.parametrize("penalty", ["hinge", "hold"])
def test_below_the_budget_only_hold_pulls_the_gates_back_up(predictor: Predictor, penalty: str) -> None:
    graph = predictor.graph
    soft = SoftLatency(predictor, graph.options(Grid(LEVELS), blocks=True))
    gates = Gates(graph, init=0.0)  # half open: E[latency] well under a budget at the full model's latency
    full = float(soft({g: torch.tensor(float(w)) for g, w in graph.full_widths().items()}).detach())
    penalty_ = LatencyPenalty(gates, soft, full, GateConfig(penalty=penalty))
    term, _ = penalty_.loss()
    assert penalty_.history[0]["expected_ms"] < full
    if penalty == "hinge":
        assert float(term.detach()) == 0.0
        return
    term.backward()
    logits = [p for p in gates.parameters() if p.grad is not None]
    assert float(term.detach()) > 0 and logits and all(float(p.grad.max()) <= 0 for p in logits)  # descent opens gates
    assert any(float(p.grad.min()) < 0 for p in logits)
    assert penalty_.lam == 1.0  # λ grows only above the budget


def test_lambda_stops_growing_once_the_budget_is_reached(predictor: Predictor) -> None:
    graph = predictor.graph
    soft = SoftLatency(predictor, graph.options(Grid(LEVELS), blocks=True))
    gates = Gates(graph, init=3.0)
    start = float(soft(gates.expected_widths(), gates.block_keep()).detach())
    penalty = LatencyPenalty(gates, soft, 0.9 * start, GateConfig(penalty="hold"))
    penalty.loss()
    assert penalty.lam > 1.0 and not penalty.reached  # above the budget: the schedule runs
    penalty.budget_ms = 1.1 * start
    penalty.loss()
    frozen = penalty.lam
    penalty.budget_ms = 0.9 * start  # above it again: λ stays where the budget was reached
    penalty.loss()
    assert penalty.reached and penalty.lam == frozen


def test_taylor_signal_keeps_the_important_of_equal_cost_gates(predictor: Predictor) -> None:
    """Half the channels of one group write zeros (their BN scale and shift, or their linear
    layer's rows, are 0), so their Taylor importance is 0; every channel of a group costs the same latency. Under
    ``--gate-signal taylor`` the latency term closes the dead ones and the importance
    term holds the live ones open; the gates are hard samples that take no task gradient."""
    torch.manual_seed(0)  # the hard samples draw from the global generator, whichever tests ran before
    model = copy.deepcopy(predictor.graph.model)
    graph = ChannelGraph.build(model, TINY_INPUT)  # the fixture's structure: the same group ids
    group = next(g for g in graph.groups if g.size >= 4 and not g.norms
                 and all(isinstance(graph.module(n), (nn.BatchNorm2d, nn.Linear)) for n in g.producers))
    dead = list(range(0, group.size, 2))
    with torch.no_grad():
        for name in group.producers:
            producer = graph.module(name)
            producer.weight[dead] = 0.0
            producer.bias[dead] = 0.0
            producer.bias[1::2] = 1.0  # the live ones pass any ReLU that follows
    soft = SoftLatency(predictor, graph.options(Grid(LEVELS), blocks=True))
    gates = Gates(graph, init=3.0)
    start = float(soft(gates.expected_widths(), gates.block_keep()).detach())
    penalty = latency_penalty(gates, soft, 0.5 * start, GateConfig(gate_lr=0.1, signal="taylor"))
    assert isinstance(penalty, TaylorSignal)
    opt = penalty.optimizer()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, *TINY_INPUT[1:], generator=gen), torch.randint(0, 10, (16,), generator=gen)
    gates.attach()
    try:
        for _ in range(30):
            penalty.before_forward()
            assert all(t.is_leaf for t in gates.current)  # no straight-through path to the logits
            term, fields = penalty.loss()
            loss = nn.functional.cross_entropy(model(x), y) + term
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        gates.detach()
    assert penalty.ema is not None and penalty.kappa is not None and penalty.kappa > 0 and "κ" in fields
    share = penalty.ema[group.id]
    alive = [c for c in range(group.size) if c not in dead]
    assert float(share[dead].max()) == 0.0 and float(share[alive].min()) > 0.0
    logits = gates.logits[group.id].detach()
    assert float(logits[alive].min()) > float(logits[dead].max())
    assert float(soft(gates.expected_widths(), gates.block_keep()).detach()) < start  # the latency term still acts


def test_every_gate_signal_has_a_regulariser() -> None:
    assert tuple(SIGNALS) == GATE_SIGNALS
    assert SIGNALS["straight-through"] is LatencyPenalty


def _masked_loss(graph: ChannelGraph, keep: dict[int, list[int]], batches: list) -> float:
    slim = graph.mask(keep).eval()
    with torch.no_grad():
        total = sum(float(nn.functional.cross_entropy(slim(x), y)) * len(y) for x, y in batches)
    return total / sum(len(y) for _, y in batches)


def test_option_losses_are_the_masked_models_losses(tiny_model: nn.Module) -> None:
    """Each measured option loss is the loss of the model slimmed to that one cut, made monotone in width (the masked model computes what the slimmed one does)."""
    from latprune.pruner.importance import Scores, option_losses

    randomise_bn_(tiny_model)
    graph = ChannelGraph.build(tiny_model, TINY_INPUT)
    torch.manual_seed(0)
    batches = [(torch.randn(8, *TINY_INPUT[1:]), torch.randint(0, 10, (8,))) for _ in range(2)]
    options = graph.options(Grid(LEVELS), blocks=True)
    ranking = Scores({g.id: torch.rand(g.size).numpy() for g in graph.groups})
    gates = Gates(graph, init=10.0)
    increases = option_losses(graph, gates, options, ranking, iter(batches), num_batches=2, progress=False)
    reference = _masked_loss(graph, {}, batches)
    assert not gates.attached and all(bool((lg == 10.0).all()) for lg in gates.logits)  # left as it came
    for g, opts in options.items():
        assert len(increases[g]) == len(opts)
        assert increases[g][-1] == pytest.approx(0.0, abs=1e-5)  # full width: the reference itself
        assert all(a >= b - 1e-12 for a, b in zip(increases[g], increases[g][1:]))  # monotone in width
    block_group = graph.blocks[0].group
    for g in (block_group, next(g for g in options if g != block_group)):  # a block group and one more
        opts = options[g]
        order = sorted(range(graph.groups[g].size), key=lambda i: -ranking.channels[g][i])
        raw = [_masked_loss(graph, {g: sorted(order[:w]) if w else []}, batches) - reference for w in opts]
        expected = [max(raw[i:]) for i in range(len(raw))]
        assert increases[g] == pytest.approx(expected, abs=1e-4)
    assert options[block_group][0] == 0  # a block removal was measured too
