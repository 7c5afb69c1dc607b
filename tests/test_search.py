"""Graph PruningNet search (graph-rl, evolution): the GCN on known graphs, the PruningNet's
weights per width vector, the agent and the evolution on a toy problem with a known optimum,
and both methods end to end on the tiny ResNet and the fake backend."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import latprune
from latprune.errors import SpecError
from latprune.graph.channels import ChannelGraph, Grid
from latprune.latency_lut.backends import get_backend
from latprune.latency_lut.predict import Predictor
from latprune.latency_lut.profile import build_lut, load_calibration
from latprune.latency_lut.store import Lut
from latprune.pruner.importance import l1_importance
from latprune.pruner.knapsack import option_values
from latprune.pruner.methods import keep_top
from latprune.pruner.search.agent import reinforce
from latprune.pruner.search.evolution import evolve
from latprune.pruner.search.pruningnet import PruningNet, Scorer, WidthGates, hold_out, take, train_pruningnet
from latprune.pruner.search.space import Space, key_of
from latprune.pruner.search.topology import GCN, STATIC_FEATURES, Topology, normalised_adjacency
from tests.conftest import TINY_INPUT, randomise_bn_, tiny_loader, tiny_resnet

LEVELS = 4
PATH = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # 0 - 1 - 2


# -- the graph and the GCN ------------------------------------------------------------------------
def test_normalised_adjacency_by_hand() -> None:
    # A + I has degrees 2, 3, 2: Â[i, j] = 1 / sqrt(d_i d_j) on every edge and the diagonal
    expected = torch.tensor([[1 / 2, 1 / math.sqrt(6), 0.0],
                             [1 / math.sqrt(6), 1 / 3, 1 / math.sqrt(6)],
                             [0.0, 1 / math.sqrt(6), 1 / 2]])
    assert torch.allclose(normalised_adjacency(PATH), expected)


@pytest.mark.parametrize("layers", [1, 2])
def test_a_node_sees_its_neighbours_within_as_many_hops_as_layers(layers: int) -> None:
    torch.manual_seed(0)
    gcn = GCN(PATH, in_features=3, hidden=4, layers=layers)
    x = torch.randn(3, 3)
    moved = x.clone()
    moved[2] += 1.0  # change node 2 alone
    before, after = gcn(x), gcn(moved)
    assert not torch.allclose(before[1], after[1])  # its neighbour sees it
    assert torch.allclose(before[0], after[0]) == (layers == 1)  # two hops away: only with two layers


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    graph = ChannelGraph.build(randomise_bn_(tiny_resnet()), TINY_INPUT)
    path = tmp_path_factory.mktemp("search") / "s.lut"
    build_lut(graph, path, get_backend("fake", threads=1), levels=LEVELS, progress=False)
    lut = Lut.open(path)
    return Predictor(lut, graph, load_calibration(lut, graph.signature())[0])


def test_the_topology_follows_the_data_flow(predictor: Predictor) -> None:
    graph = predictor.graph
    options = graph.options(Grid(LEVELS), blocks=True)
    topology = Topology.of(graph, predictor, options)
    a = topology.adjacency
    assert a.shape == (len(graph.groups),) * 2 and torch.equal(a, a.T) and float(a.diagonal().abs().sum()) == 0
    for u in graph.units:
        if u.in_group is not None and u.out_group is not None and u.in_group != u.out_group:
            assert a[u.in_group, u.out_group] == 1
    assert int(a.sum()) > 0 and topology.features.shape == (len(graph.groups), STATIC_FEATURES)
    inner = {b.group for b in graph.blocks}
    assert [bool(f) for f in topology.features[:, -1]] == [g.id in inner for g in graph.groups]
    assert (topology.features[:, 1] > 0).all()  # every group's narrowing saves latency on the fake backend
    half = {g.id: g.size // 2 for g in graph.groups}
    assert torch.allclose(topology.inputs(half)[:, -1], torch.full((len(graph.groups),), 0.5))


# -- the PruningNet ---------------------------------------------------------------------------------
def _space(predictor: Predictor, target_share: float = 0.7) -> Space:
    graph = predictor.graph
    options = graph.options(Grid(LEVELS), blocks=True)
    values = option_values(l1_importance(graph), options)
    return Space(predictor, options, values, target_share * predictor.predict(graph.full_widths()))


def test_width_gates_compute_the_masked_network(predictor: Predictor) -> None:
    graph = predictor.graph.over(randomise_bn_(tiny_resnet()))
    scores = l1_importance(graph)
    gates = WidthGates(graph, scores.channels)
    widths = _space(predictor).project(graph.full_widths())
    assert widths != graph.full_widths()
    x = torch.randn(4, *TINY_INPUT[1:])
    gates.set(widths)
    gates.attach()
    try:
        with torch.no_grad():
            gated = graph.model(x)
    finally:
        gates.detach()
    with torch.no_grad():
        expected = graph.mask(keep_top(graph, scores, widths))(x)
    assert torch.allclose(gated, expected, atol=1e-5)


def test_the_pruningnet_generates_other_weights_for_other_widths(predictor: Predictor, tmp_path: Path) -> None:
    torch.manual_seed(0)
    graph = predictor.graph.over(randomise_bn_(tiny_resnet()))
    space = _space(predictor)
    net = PruningNet(Topology.of(graph, predictor, space.options))
    narrow, wide = space.narrowest(), space.widest()
    assert all(torch.equal(m, torch.ones_like(m)) for m in net(narrow))  # starts at the base weights
    gates = WidthGates(graph, l1_importance(graph).channels)
    training = train_pruningnet(graph, net, gates, space.sample, tiny_loader(64), epochs=1.0, lr=0.01, seed=0)
    assert training.steps == 4
    a, b = net(narrow), net(wide)
    assert any(not torch.allclose(ma, mb) for ma, mb in zip(a, b))
    assert any(not torch.allclose(m, torch.ones_like(m)) for m in a)  # the heads trained

    held = take(tiny_loader(32), 2)
    x = held[0][0]
    outputs = []
    for widths in (narrow, space.project(wide)):
        gates.set(widths, [m.detach() for m in net(widths)])
        gates.attach()
        try:
            with torch.no_grad():
                outputs.append(graph.model.eval()(x))
        finally:
            gates.detach()
    assert outputs[0].shape == outputs[1].shape == (16, 10) and not torch.allclose(outputs[0], outputs[1])
    store = tmp_path / "scores.json"
    scorer = Scorer(graph, net, gates, held[:1], held[1:], store=store)
    first = scorer(narrow)
    assert 0.0 <= first <= 1.0 and scorer(narrow) == first and scorer.evaluated == 1
    # a search started again reads what the killed one scored, and scores only what it had not
    again = Scorer(graph, net, gates, held[:1], held[1:], store=store)
    assert again.stored == 1 and again(narrow) == first
    assert again(space.project(wide)) >= 0.0 and again.evaluated == 2
    assert Scorer(graph, net, gates, held[:1], held[1:], store=store).stored == 2


def test_candidates_are_scored_on_samples_the_pruningnet_never_trains_on() -> None:
    loader = tiny_loader(64)
    trained_on, held, how = hold_out(loader, 1, seed=3)
    assert how == "16 training samples held out" and len(held) == 1 and len(trained_on) == 3
    seen = {tuple(x.flatten()[:4].tolist()) for x, _ in
            (sample for batch in trained_on for sample in zip(*batch))}  # type: ignore[attr-defined]
    scored = {tuple(x.flatten()[:4].tolist()) for x, _ in zip(*held[0])}
    assert len(seen) == 48 and len(scored) == 16 and not seen & scored
    assert hold_out(loader, 1, seed=3)[1][0][1].tolist() == held[0][1].tolist()  # the seed draws them
    batches = list(loader)
    trained_on, held, how = hold_out(batches, 1, seed=0)
    assert trained_on == batches[:3] and held == batches[3:] and how == "the last 1 of 4 training batches held out"

    class Stream:  # a sized iterable of batches that is neither a list nor a DataLoader
        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter(batches)

        def __len__(self) -> int:
            return len(batches)

    stream = Stream()
    trained_on, held, how = hold_out(stream, 1, seed=0)
    assert trained_on is stream and held[0] is batches[0]
    assert how.startswith("training batches (the loader cannot be split")
    with pytest.raises(SpecError, match="holds out 4 batches of 16 samples.*holds 64; lower --score-batches"):
        hold_out(loader, 4, seed=0)


@pytest.mark.parametrize("which", ["narrowest", "projected"])
def test_generated_weights_fold_into_the_slimmed_network(predictor: Predictor, which: str) -> None:
    torch.manual_seed(0)
    graph = predictor.graph.over(randomise_bn_(tiny_resnet()))
    space = _space(predictor)
    net = PruningNet(Topology.of(graph, predictor, space.options))
    scores = l1_importance(graph)
    gates = WidthGates(graph, scores.channels)
    train_pruningnet(graph, net, gates, space.sample, tiny_loader(64), epochs=1.0, lr=0.01, seed=0)
    widths = space.narrowest() if which == "narrowest" else space.project(space.widest())
    held = take(tiny_loader(32), 2)
    twin = Scorer(graph, net, gates, held[:1], held[1:]).generated(widths)
    x = held[0][0]
    gates.attach()
    try:
        with torch.no_grad():
            gated = graph.model.eval()(x)
    finally:
        gates.detach()
    slim = twin.slim(keep_top(twin, scores, widths)).eval()
    with torch.no_grad():
        assert torch.allclose(slim(x), gated, atol=1e-4)


# -- the searches, on a toy problem with a known optimum -----------------------------------------
class ChannelCount:
    """A predictor whose latency is the channel count: 1 ms per channel."""

    def predict(self, widths: dict[int, int]) -> float:
        return float(sum(widths.values()))


def _toy() -> tuple[Space, object]:
    options = {g: list(range(1, 9)) for g in range(4)}
    values = {g: [w * (g + 1) / 80 for w in opts] for g, opts in options.items()}  # projection favours group 3
    space = Space(ChannelCount(), options, values, target_ms=14.0)  # type: ignore[arg-type]

    def reward(widths: dict[int, int]) -> float:  # the budget is best spent on group 0, then group 1
        return (2 * widths[0] + widths[1] - widths[2] - widths[3]) / 18

    return space, reward


def test_the_agent_learns_where_the_budget_pays() -> None:
    space, reward = _toy()
    embeddings = torch.eye(4)  # each group told apart
    result = reinforce(space, embeddings, reward, episodes=300, lr=0.02, seed=0)
    rewards = [r for r, _ in result.scored]
    assert len(rewards) == 300 and all(space.fits(w) for _, w in result.scored)
    first, last = sum(rewards[:30]) / 30, sum(rewards[-30:]) / 30
    assert last > first + 0.2, (first, last)
    assert result.best == (reward({0: 8, 1: 4, 2: 1, 3: 1}), {0: 8, 1: 4, 2: 1, 3: 1})  # the optimum


def test_evolution_improves_within_the_target() -> None:
    space, reward = _toy()
    result = evolve(space, reward, candidates=96, population=16, parents=4, mutation=0.2, seed=0)
    keys = [key_of(w) for _, w in result.scored]
    assert len(keys) == 96 == len(set(keys)) and all(space.fits(w) for _, w in result.scored)
    assert result.best[0] > max(r for r, _ in result.scored[:16])  # bred: better than every first candidate


def test_a_budget_below_the_narrowest_is_refused() -> None:
    options = {0: [2, 4], 1: [2, 4]}
    with pytest.raises(latprune.LatpruneError, match="below the smallest reachable latency"):
        Space(ChannelCount(), options, {0: [0.0, 1.0], 1: [0.0, 1.0]}, target_ms=3.0)  # type: ignore[arg-type]


# -- the methods ------------------------------------------------------------------------------------
def test_search_configs_validate_themselves() -> None:
    with pytest.raises(SpecError, match="lowrank is for gator"):
        latprune.GraphRlConfig(lowrank=True)
    with pytest.raises(SpecError, match="mutation is a probability"):
        latprune.EvolutionConfig(mutation=2.0)
    with pytest.raises(SpecError, match="search_candidates must be positive"):
        latprune.EvolutionConfig(search_candidates=0)
    assert latprune.GraphRlConfig().needs_data and latprune.GraphRlConfig().name == "graph-rl"


def test_the_cli_maps_the_search_flags() -> None:
    from latprune.cli import _method, build_parser

    common = ["prune", "m.py:f", "--lut", "x.lut", "--budget", "0.5x", "-o", "out"]
    args = build_parser().parse_args([*common, "--method", "graph-rl", "--search-epochs", "0.5",
                                      "--search-candidates", "8", "--agent-lr", "0.02"])
    assert _method(args) == latprune.GraphRlConfig(search_epochs=0.5, search_candidates=8, agent_lr=0.02,
                                                   lr=args.lr)
    args = build_parser().parse_args([*common, "--method", "graph-rl", "--population", "4"])
    with pytest.raises(SpecError, match="--population does not apply to --method graph-rl"):
        _method(args)


@pytest.mark.parametrize("config", [
    latprune.GraphRlConfig(search_epochs=1.0, search_candidates=8, importance_batches=2, score_batches=1,
                           calib_batches=1),
    latprune.EvolutionConfig(search_epochs=1.0, search_candidates=8, population=4, importance_batches=2,
                             score_batches=1, calib_batches=1, weights="pruningnet"),
], ids=["graph-rl", "evolution"])
def test_the_search_methods_prune_within_the_budget(tiny_lut: latprune.LUT, config: object) -> None:
    model = tiny_resnet()
    result = latprune.prune(model, tiny_lut, "0.7x", example_input=TINY_INPUT, method=config,
                            train_loader=tiny_loader(), val_loader=tiny_loader(32), progress=False)
    m = result.metrics
    assert m["budget_met"] and m["measured_ms"] <= m["budget_ms"] and result.plan.method == config.name
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in model.parameters())
    search = m["method_details"]["search"]
    # one batch's samples held out of the 64 to score on: the PruningNet trains on 3 batches of 16
    assert search["pruningnet_steps"] == 3 and 1 <= search["candidates_scored"] <= 8
    assert search["scored_on"] == "16 training samples held out"
    assert len(search["scores"]) == 8 and search["best_score"] == max(search["scores"])
    assert any(h["fits"] and h["widths"] == search["chosen_widths"] for h in m["closed_loop"])


def test_graph_rl_prunes_a_mobilenet_within_the_budget(tmp_path: Path) -> None:
    """Depthwise convolutions follow their group, inverted residuals are blocks: the graph and the
    PruningNet take a MobileNetV2 as they take a ResNet."""
    from torch.utils.data import DataLoader, TensorDataset
    from torchvision.models import mobilenet_v2

    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return mobilenet_v2(num_classes=10, width_mult=0.5).eval()

    shape = (1, 3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(64, *shape[1:], generator=gen), torch.randint(0, 10, (64,),
                                                                                             generator=gen)),
                      batch_size=16)
    lut = latprune.profile(build(), shape, backend="fake", threads=1, path=tmp_path / "m.lut", levels=4,
                           calibration_samples=2, progress=False)
    config = latprune.GraphRlConfig(search_epochs=0.5, search_candidates=6, importance_batches=1, score_batches=1,
                                    calib_batches=1)
    result = latprune.prune(build(), lut, "0.7x", example_input=shape, method=config, train_loader=data,
                            progress=False)
    assert result.metrics["budget_met"] and any(g.width < g.size for g in result.plan.groups)
