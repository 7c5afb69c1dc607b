"""``graph-rl`` and ``evolution`` as latprune methods (registered on import).

Both: the channels ranked by importance (:meth:`Context.scores`); a copy of the network trained
with its PruningNet on random width vectors (:mod:`~latprune.pruner.search.pruningnet`); the
search over width vectors within the target, each scored by the accuracy of its generated
weights; then the closed loop, which measures the best candidate that the (rescaled) prediction
fits, slimmed from the base model's weights, and falls back to the next one where it misses.
Under torchrun the PruningNet and the shared weights train on every rank, in DDP on each rank's
share of the data (:func:`supernet_trained`); rank 0 alone searches and measures.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from latprune import parallel
from latprune._progress import bar
from latprune.graph.channels import ChannelGraph
from latprune.latency_lut.predict import Predictor
from latprune.pruner.configs import EvolutionConfig, GraphRlConfig, SearchConfig
from latprune.pruner.importance import Scores
from latprune.pruner.knapsack import Solution, descend, option_values
from latprune.pruner.methods import Context, Decision, closed_loop, keep_top, register_method
from latprune.pruner.search.agent import reinforce
from latprune.pruner.search.evolution import evolve
from latprune.pruner.search.pruningnet import (
    Batch,
    PruningNet,
    Scorer,
    SupernetTraining,
    WidthGates,
    hold_out,
    take,
    train_pruningnet,
)
from latprune.pruner.search.space import SearchResult, Space
from latprune.pruner.search.topology import Topology
from latprune.train import reseeded

Tick = Callable[[float, float], object]  # (this candidate's score, the best so far)
Search = Callable[[Context, Space, PruningNet, Scorer, Tick], SearchResult]

HELD_OUT_SEED = 7000  # the seed offset of the samples held out to score candidates on, and of BN recalibration


@dataclass
class Supernet:
    """The PruningNet and the shared weights trained with it (:func:`supernet_trained`), with what
    the search needs from the training: the channel ranking, the search space, the batches."""

    scores: Scores
    space: Space
    graph: ChannelGraph  # the copy of the network whose weights trained with the PruningNet
    net: PruningNet
    gates: WidthGates
    trained_on: Iterable[Batch]
    held: list[Batch]
    scored_on: str
    training: SupernetTraining


def supernet_trained(ctx: Context) -> Supernet:
    """A copy of the network trained with its PruningNet on random width vectors (on every rank
    under torchrun, the channels ranked by rank 0's scores)."""
    config = ctx.config
    assert isinstance(config, SearchConfig)  # the registry pairs them
    scores = parallel.on_main(ctx.scores)  # they order the channels every rank's supernet keeps
    options = ctx.options(blocks=config.blocks)
    space = Space(ctx.predictor, options, option_values(scores, options), ctx.target_ms)
    # the shared weights train on a copy: the slimmed model takes the base's
    supernet = ctx.graph.over(copy.deepcopy(ctx.graph.model))
    net = PruningNet(Topology.of(ctx.graph, ctx.predictor, options), layers=config.gcn_layers)
    parallel.broadcast_state(net)
    gates = WidthGates(supernet, scores.channels, blocks=config.blocks)
    trained_on, held, scored_on = hold_out(ctx.batches(seed_offset=1), config.score_batches, ctx.seed + HELD_OUT_SEED)
    training = train_pruningnet(supernet, net, gates, space.sample, trained_on, config.search_epochs,
                                config.lr, ctx.seed, ctx.compute, ctx.checkpoint("pruningnet"))
    return Supernet(scores, space, supernet, net, gates, trained_on, held, scored_on, training)


def _reinforce(ctx: Context, space: Space, net: PruningNet, scorer: Scorer, tick: Tick) -> SearchResult:
    """The REINFORCE agent (:func:`~latprune.pruner.search.agent.reinforce`), its state the trained
    GCN's node embeddings at full width, one episode per candidate."""
    config = ctx.config
    assert isinstance(config, GraphRlConfig)  # the registry pairs them
    with torch.no_grad():
        embeddings = net.embeddings(space.widest())
    return reinforce(space, embeddings, scorer, config.search_candidates, config.agent_lr, ctx.seed,
                     on_episode=tick)


def _evolve(ctx: Context, space: Space, net: PruningNet, scorer: Scorer, tick: Tick) -> SearchResult:
    """The evolutionary search (:func:`~latprune.pruner.search.evolution.evolve`) on the same PruningNet."""
    config = ctx.config
    assert isinstance(config, EvolutionConfig)  # the registry pairs them
    return evolve(space, scorer, config.search_candidates, config.population,
                  parents=max(2, config.population // 4), mutation=config.mutation, seed=ctx.seed,
                  on_candidate=tick)


def graph_rl(ctx: Context) -> Decision:
    return searched(ctx, supernet_trained(ctx), _reinforce)


def evolution(ctx: Context) -> Decision:
    return searched(ctx, supernet_trained(ctx), _evolve)


def searched(ctx: Context, trained: Supernet, search: Search) -> Decision:
    """``search`` over the trained PruningNet, the closed loop over what it found."""
    config = ctx.config
    assert isinstance(config, SearchConfig)  # the registry pairs them
    scores, space, options = trained.scores, trained.space, trained.space.options
    calibration = take(reseeded(trained.trained_on, ctx.seed + HELD_OUT_SEED), config.calib_batches)
    scores_at = ctx.checkpoint("search-scores")
    scorer = Scorer(trained.graph, trained.net, trained.gates, calibration, trained.held,
                    ctx.compute.device, scores_at.path.with_suffix(".json") if scores_at else None)
    with bar(total=config.search_candidates, desc=f"{config.name} search", unit="candidate",
             enabled=ctx.progress) as meter:
        def tick(score: float, best: float) -> None:
            meter.set_postfix(reward=f"{score:.3f}", best=f"{best:.3f}", refresh=False)
            meter.update(1)

        result = search(ctx, space, trained.net, scorer, tick)
    ranked = result.ranked()

    def solver(predictor: Predictor, target_ms: float) -> Solution:
        """The best-scoring candidate the prediction fits; else the best one narrowed onto it."""
        for score, widths in ranked:
            predicted_ms = predictor.predict(widths)
            if predicted_ms <= target_ms:
                return Solution(widths, predicted_ms, score, 1)
        widths = descend(predictor, options, space.values, ranked[0][1], target_ms)
        return Solution(widths, predictor.predict(widths), scorer(widths), 1)

    solution, slim, measured_ms, history, predictor = closed_loop(ctx, solver,
                                                                  lambda w: keep_top(ctx.graph, scores, w))
    keep = keep_top(ctx.graph, scores, solution.widths)
    if config.weights == "pruningnet":  # the same network as measured, with the generated weights
        slim = scorer.generated(solution.widths).slim(keep)
    record = {**_record(ctx, trained.training.steps, scorer, result, solution), "scored_on": trained.scored_on}
    return Decision(keep, slim, solution.predicted_ms, history, {"search": record}, measured_ms, predictor)


def _record(ctx: Context, steps: int, scorer: Scorer, result: SearchResult, chosen: Solution) -> dict[str, Any]:
    """What the search did, for ``metrics["method_details"]``."""
    roots = {g.id: g.root for g in ctx.graph.groups}
    every = max(1, len(result.trace) // 50)
    return {"pruningnet_steps": steps, "candidates_scored": scorer.evaluated, "scores_resumed": scorer.stored,
            "best_score": result.best[0],
            "chosen_score": chosen.value,
            "chosen_widths": {roots[g]: w for g, w in sorted(chosen.widths.items())},
            "scores": [round(s, 4) for s, _ in result.scored],
            "trace": [{k: round(v, 4) for k, v in t.items()} for t in result.trace[::every]]}


register_method(GraphRlConfig, graph_rl,
                every_rank=(supernet_trained, lambda ctx, trained: searched(ctx, trained, _reinforce)))
register_method(EvolutionConfig, evolution,
                every_rank=(supernet_trained, lambda ctx, trained: searched(ctx, trained, _evolve)))
