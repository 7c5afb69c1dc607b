"""Pruning methods, in a registry keyed by config type (:mod:`configs`): each turns
a base model into a :class:`Decision` (channels to keep per group, blocks to drop,
the slimmed model) that holds the budget on the *measured* latency.

``gator``       gates trained with the LUT latency loss, Taylor scores on the
                trained gates, knapsack with block removal, closed loop (the default;
                BENCHMARKS.md, accuracy vs latency);
``halp``        iterative Taylor + knapsack (with block removal), no gate training;
``taylor``      iterative removal of the lowest Taylor score per millisecond saved
                (a block's last step removes it);
``uniform-l1``  baseline: Torch-Pruning-style L1 magnitude, one ratio for every
                group, bisected on the measured latency;
``flops``       baseline: global L1 magnitude pruning to MACs = budget ratio × base MACs,
                never looking at latency;
``graph-rl``,   a PruningNet trained with the network, then a REINFORCE agent or an
``evolution``   evolution searching widths by its generated weights' accuracy
                (:mod:`latprune.pruner.search`, which registers them).

They share the pieces: :mod:`gates`, :mod:`importance`, :mod:`knapsack` and
:func:`closed_loop`. A method never changes the predictor it is given: the
closed loop rescales its own copy and hands the final one back in the decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from latprune import parallel
from latprune._progress import bar
from latprune.errors import BudgetError, LutError, SpecError
from latprune.graph.channels import ChannelGraph, Grid, group_align
from latprune.graph.lowrank import (
    CHANNEL,
    applicable,
    factorise_,
    rank_options,
    ranks_of,
    scheme_of,
    split_ranks,
    unit_columns,
    unit_index,
)
from latprune.latency_lut.backends import Backend
from latprune.latency_lut.predict import Predictor, SoftLatency
from latprune.latency_lut.profile import grid_keys, measure_beside_anchor, measure_settled, model_pass
from latprune.pruner.configs import (
    FlopsConfig,
    GatorConfig,
    HalpConfig,
    ImportanceConfig,
    MethodConfig,
    TaylorConfig,
    TrpConfig,
    UniformL1Config,
    register,
)
from latprune.pruner.gates import GateConfig, Gates, LatencyPenalty, latency_penalty
from latprune.pruner.importance import (
    Scores,
    energy_rank_scores,
    l1_importance,
    option_losses,
    taylor_importance,
    taylor_rank_scores,
)
from latprune.pruner.knapsack import Solution, descend, fill, kept_value, option_values, solve
from latprune.pruner.trp import TrpRegulariser
from latprune.train import Checkpoint, Compute, reseeded

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Context:
    """What every method gets: the base model's graph (``graph.model`` may be
    trained in place), the LUT predictor re-anchored on the measured base,
    the backend that measures candidates, the width grid, the budget (ms),
    the method's config, and the training batches (None: data-free)."""

    graph: ChannelGraph
    predictor: Predictor
    backend: Backend
    grid: Grid
    budget_ms: float
    base_ms: float
    config: MethodConfig
    train_loader: Batches | None = None
    base_model: nn.Module | None = None  # set with a relative budget: candidates are measured beside it
    seed: int = 0
    progress: bool = True
    compute: Compute = Compute()  # where gate training and recovery run
    checkpoint: Callable[[str], Checkpoint | None] = lambda stage: None  # where a training stage saves its state
    _base_pass: Callable[[], Any] | None = field(default=None, init=False, repr=False, compare=False)
    _ranks_checked: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.predictor.scheme != self.scheme:  # the predictor prices ranks the way this decision factorises
            self.predictor = Predictor(self.predictor.lut, self.graph, self.predictor.calibration, self.scheme)

    @property
    def scheme(self) -> str:
        """How a layer given a rank factorises (:data:`~latprune.graph.lowrank.SCHEMES`)."""
        return getattr(self.config, "lowrank_scheme", CHANNEL)

    @property
    def importance_config(self) -> ImportanceConfig:
        if not isinstance(self.config, ImportanceConfig):
            raise TypeError(f"{type(self.config).__name__} ranks no channel importance")
        return self.config

    def batches(self, seed_offset: int = 0) -> Batches:
        """The training batches, their order seeded by the prune's seed plus ``seed_offset``."""
        if self.train_loader is None:
            raise SpecError(f"method {self.config.name!r} needs training data: pass train_loader")
        return reseeded(self.train_loader, self.seed + seed_offset)

    def scores(self, gates: Gates | None = None, mode: str = "open", batches: int | None = None,
               seed_offset: int = 0) -> Scores:
        """Taylor (or L1, when asked) scores of the current model."""
        config = self.importance_config
        if config.importance == "l1":
            scores = l1_importance(self.graph)
        else:
            scores = taylor_importance(self.graph, self.batches(seed_offset), batches or config.importance_batches,
                                       order=2 if config.importance == "taylor2" else 1,
                                       progress=self.progress, gates=gates, mode=mode, device=self.compute.device)
        axes = list(self.rank_options())
        if axes and config.importance == "l1":
            scores.ranks = energy_rank_scores(self.graph, axes, scores, self.scheme)
        elif axes:
            scores.ranks = taylor_rank_scores(self.graph, axes, self.batches(seed_offset + 500),
                                              batches or config.importance_batches, self.progress,
                                              self.compute.device, self.scheme)
        return scores

    def rank_options(self) -> dict[int, list[int]]:
        """Every layer's rank options by rank axis (:func:`~latprune.graph.lowrank.rank_options`)
        when the config asks for ``lowrank``, else none."""
        if not getattr(self.config, "uses_ranks", False):
            return {}
        if not self._ranks_checked:
            missing = self.predictor.missing(grid_keys(self.graph, self.grid, lowrank=True, schemes=(self.scheme,)))
            if missing:
                raise LutError(f"the LUT {self.predictor.lut.path} lacks {len(missing)} measurements of this "
                               f"model's layers factorised in the {self.scheme} scheme; profile it with lowrank "
                               "(`latprune profile --lowrank`, latprune.profile(..., lowrank=True)) before "
                               "pruning with lowrank")
            self._ranks_checked = True
        return rank_options(self.graph.units, self.graph.model, self.grid.align, self.scheme)

    def options(self, blocks: bool) -> dict[int, list[int]]:
        """Width options of every group on the grid (with ``blocks``, a block's inner group offers
        0: the block removed), and the :meth:`rank_options` beside them."""
        return {**self.graph.options(self.grid, blocks=blocks), **self.rank_options()}

    def values(self, scores: Scores, options: dict[int, list[int]],
               keep: dict[int, list[int]] | None, seed_offset: int = 0) -> dict[int, list[float]]:
        """Knapsack value of every width option: the kept Taylor score, or with
        importance ``measured`` (halp only) minus the loss increase measured when
        the group alone is cut to the option, the others pruned to ``keep`` (None: unpruned)."""
        config = self.importance_config
        if config.importance != "measured":
            return option_values(scores, options)
        losses = option_losses(self.graph, _masked_gates(self, keep), options, scores,
                               self.batches(seed_offset + 1000), config.importance_batches, progress=self.progress,
                               device=self.compute.device)
        return {g: [-v for v in losses[g]] for g in options}

    def measure(self, model: nn.Module, on_pass: Callable[[], object] | None = None) -> tuple[float, float | None]:
        """A candidate's measured median (ms), settled over passes (:func:`measure_settled`),
        and the base's median measured beside it (None with an absolute budget).

        With a relative budget (``base_model`` set), the candidate is measured
        in interleaved passes beside the base model and reported as
        ``base_ms × candidate / base beside it``: a budget that is a fraction
        of the base is checked against the base as the machine runs *now*, so
        a slow spell of minutes moves both and not their ratio. A pair whose
        base is more than the timing margin away from the base measured at the
        start is measured again (:func:`measure_beside_anchor`). ``on_pass`` is called after
        each pass of either model (a progress bar's tick)."""
        shape, base_model = self.graph.input_shape, self.base_model
        candidate = model_pass(self.backend, model, shape)
        if base_model is None:
            return measure_settled(candidate, on_pass).median_ms, None
        if self._base_pass is None:  # the base never changes: one export serves every candidate
            self._base_pass = model_pass(self.backend, base_model, shape)
        base, cand = measure_beside_anchor(self._base_pass, candidate, self.base_ms, self.config.margin,
                                           on_each=on_pass)
        return self.base_ms * cand.median_ms / base.median_ms, base.median_ms

    def measure_checked(self, model: nn.Module, target_ms: float, on_pass: Callable[[], object] | None = None
                        ) -> tuple[float, float | None, list[float]]:
        """:meth:`measure`, and once more when the candidate fits ``target_ms``: the mean
        of the two (ms), the base beside the last, and every measurement.

        A search that keeps what measured under the target keeps lucky
        measurements; a second, independent measurement of every candidate
        that fits halves that bias and the noise's spread."""
        first, base_ms = self.measure(model, on_pass)
        if first > target_ms:
            return first, base_ms, [first]
        second, base_ms = self.measure(model, on_pass)
        return (first + second) / 2, base_ms, [first, second]

    @property
    def target_ms(self) -> float:
        return self.budget_ms * (1 - self.config.margin)

    def meter(self, desc: str) -> Any:
        """A progress bar over the passes that measuring candidates takes: one tick per pass of the
        base or a candidate (half a second or more each), their number unknown ahead (the noise decides)."""
        return bar(desc=desc, unit="model", enabled=self.progress)


@dataclass
class Decision:
    keep: dict[int, list[int]]        # kept channels per group; [] for a removed block's group
    slim: nn.Module
    predicted_ms: float | None
    history: list[dict[str, Any]]     # every candidate measured
    extra: dict[str, Any] = field(default_factory=dict)
    measured_ms: float | None = None  # the chosen candidate as the method measured it (ms, beside the base)
    predictor: Predictor | None = None  # the predictor as the closed loop left it (rescaled by measurements)

    @property
    def ranks(self) -> dict[str, int]:
        """The layers the slimmed model factorised (:mod:`~latprune.graph.lowrank`), by name: their rank."""
        return ranks_of(self.slim)

    @property
    def rank_scheme(self) -> str:
        """How they factorised (:data:`~latprune.graph.lowrank.SCHEMES`)."""
        return scheme_of(self.slim)


def keep_top(graph: ChannelGraph, scores: Scores, widths: dict[int, int]) -> dict[int, list[int]]:
    """The ``widths[g]`` highest-scoring channels of each group (sorted indices) that the group
    can keep (:meth:`~latprune.graph.channels.Group.top`); rank axes
    (:mod:`~latprune.graph.lowrank`) in ``widths`` are left out."""
    return {g: graph.groups[g].top(scores.channels[g], w) for g, w in split_ranks(widths)[0].items()}


def slim_factorised(graph: ChannelGraph, keep: dict[int, list[int]], widths: dict[int, int],
                    scheme: str = CHANNEL) -> nn.Module:
    """``graph.slim(keep)`` with every layer that ``widths`` gives a rank factorised to it in
    ``scheme``, where the rank pays at the layer's slimmed widths
    (:func:`~latprune.graph.lowrank.applicable`)."""
    slim = graph.slim(keep)
    ranks = {graph.units[i].name: r for i, r in split_ranks(widths)[1].items()}
    if not ranks:
        return slim
    return factorise_(slim, applicable(slim, ranks, scheme, unit_columns(graph.units)), scheme)


Solver = Callable[[Predictor, float], Solution]  # (predictor, target ms) -> widths


def closed_loop(ctx: Context, solver: Solver, keep: Callable[[dict[int, int]], dict[int, list[int]]]
                ) -> tuple[Solution, nn.Module, float, list[dict], Predictor]:
    """Solve on the prediction, check on the measurement, until a candidate holds the budget.

    Accepts a candidate measuring <= budget·(1 - margin) (the mean of two
    measurements: :meth:`Context.measure_checked`); keeps re-solving
    wider while an accepted one leaves more than ``slack`` unused. Each miss
    rescales the prediction by measured/predicted (a copy is rescaled:
    ``ctx.predictor`` is left as it is). A miss that a rescale cannot explain
    (the prediction was right or pessimistic) or that follows one also lowers
    the target the next solve aims at: by 3%, or by what the miss exceeded the
    target by, within 1–3%. Each new candidate is chosen under a corrected
    prediction, and the knapsack leans on whatever errors the correction left
    (candidates measure 1–5% over their corrected prediction on ResNet-50 and
    EfficientNetV2-S, ``benchmarks/results/zoo_ort-cpu_1t.json``), so
    rescaling alone can walk along the target in noise-sized steps until the
    iterations run out. Returns the best accepted solution, its slimmed model,
    its measured latency (ms), the history of every candidate measured, and
    the rescaled predictor."""
    config, graph, predictor = ctx.config, ctx.graph, ctx.predictor
    target_ms = solve_ms = ctx.target_ms
    history: list[dict[str, Any]] = []
    tried: list[dict[int, int]] = []
    accepted: tuple[Solution, nn.Module, float] | None = None
    with ctx.meter("closed loop") as meter:
        for iteration in range(1, config.max_iters + 1):
            solution = solver(predictor, solve_ms)
            if solution.widths in tried:
                break  # the corrected prediction leads back to a configuration already measured
            tried.append(solution.widths)
            slim = slim_factorised(graph, keep(solution.widths), solution.widths, ctx.scheme)
            meter.set_postfix(candidate=iteration, refresh=False)
            measured_ms, base_beside_ms, measurements = ctx.measure_checked(slim, target_ms, meter.update)
            fits = measured_ms <= target_ms
            meter.set_postfix(candidate=iteration, ms=f"{measured_ms:.3f}", target=f"{target_ms:.3f}", refresh=False)
            ranks = ranks_of(slim)
            history.append({"iteration": iteration, "target_ms": target_ms, "solved_for_ms": solve_ms,
                            "predicted_ms": solution.predicted_ms,
                            "measured_ms": measured_ms, "measurements_ms": measurements,
                            "base_beside_ms": base_beside_ms, "fits": fits,
                            "kept_importance": solution.value,
                            "removed_blocks": [b.name for b in graph.removed_blocks(solution.widths)],
                            "widths": {graph.groups[g].root: w
                                       for g, w in sorted(split_ranks(solution.widths)[0].items())},
                            **({"ranks": ranks} if ranks else {})})
            if fits:
                if accepted is None or solution.value > accepted[0].value:
                    accepted = (solution, slim, measured_ms)
                if measured_ms >= target_ms * (1 - config.slack):
                    break  # holds the budget and uses it
            # Rescale the prediction by what the device said and solve again: narrower when the
            # candidate missed, wider when it left more than `slack` of the budget unused.
            ratio = measured_ms / solution.predicted_ms
            predictor = predictor.rescaled(ratio)
            if not fits and ratio <= 1.0:  # prediction was right or pessimistic, yet the device missed
                solve_ms *= 0.97
            elif not fits and iteration > 1:  # missed again under a corrected prediction
                solve_ms *= min(0.99, max(0.97, target_ms / measured_ms))
    if accepted is None:
        closest = min(h["measured_ms"] for h in history)
        raise BudgetError(f"after {len(history)} closed-loop iterations the closest candidate measures {closest:.3f} "
                          f"ms against a target of {ctx.target_ms:.3f} ms (the budget {ctx.budget_ms:.3f} ms less "
                          f"its {config.margin:.0%} margin); loosen the budget, lower the margin, or re-profile (the "
                          "LUT may not describe this device's current state)")
    return accepted[0], accepted[1], accepted[2], history, predictor


def _knapsack_decision(ctx: Context, scores: Scores, options: dict[int, list[int]],
                       extra: dict[str, Any], values: dict[int, list[float]] | None = None) -> Decision:
    solution, slim, measured_ms, history, predictor = closed_loop(
        ctx, lambda pred, t: solve(pred, options, scores, t, values=values),
        lambda w: keep_top(ctx.graph, scores, w))
    return Decision(keep_top(ctx.graph, scores, solution.widths), slim, solution.predicted_ms, history, extra,
                    measured_ms, predictor)


# -- gator ---------------------------------------------------------------------------------------
@dataclass
class GateTraining:
    """Gator's gates over ``ctx.graph`` and the regulariser that trains them (:func:`gate_training`),
    with how they started (recorded in the decision)."""

    gates: Gates
    penalty: LatencyPenalty
    options: dict[int, list[int]]
    start: dict[str, Any]


def gate_training(ctx: Context) -> GateTraining:
    """Gates over ``ctx.graph`` (not yet attached) and their latency penalty at ``ctx.target_ms``;
    with ``gate_init="plan"``, started from a knapsack on the base's Taylor scores (see :func:`gator`),
    decided by rank 0 under torchrun."""
    config = ctx.config
    assert isinstance(config, GatorConfig)  # the registry pairs them
    options = ctx.graph.options(ctx.grid, blocks=config.blocks)
    gate_config = GateConfig(epochs=config.gate_epochs, penalty=config.gate_penalty, signal=config.gate_signal)
    gates = Gates(ctx.graph, init=gate_config.init, blocks=config.blocks, temperature=gate_config.temperature)
    start: dict[str, Any] = {"init": config.gate_init, "penalty": config.gate_penalty, "signal": config.gate_signal}
    if config.gate_init == "plan":
        def planned() -> tuple[dict[int, list[int]], dict[str, Any]]:
            base_scores = ctx.scores(seed_offset=2)
            plan = solve(ctx.predictor, options, base_scores, ctx.target_ms)
            return keep_top(ctx.graph, base_scores, plan.widths), {
                "predicted_ms": plan.predicted_ms,
                "widths": {ctx.graph.groups[g].root: w for g, w in sorted(plan.widths.items())}}

        keep, planned_start = parallel.on_main(planned)
        gates.start_from(keep)
        start.update(planned_start)
    penalty = latency_penalty(gates, SoftLatency(ctx.predictor, options), ctx.target_ms, gate_config)
    return GateTraining(gates, penalty, options, start)


def trained_gates(ctx: Context) -> GateTraining:
    """Gator's gates trained with ``ctx.graph.model`` on the training batches (on every rank under torchrun)."""
    from latprune.train import TrainConfig, train

    config = ctx.config
    assert isinstance(config, GatorConfig)  # the registry pairs them
    if ctx.train_loader is None:
        raise SpecError("method 'gator' trains gates on data: pass train_loader "
                        "(or prune data-free with HalpConfig(importance='l1'))")
    trained = gate_training(ctx)
    trained.gates.attach()
    try:
        train(ctx.graph.model, ctx.batches(), TrainConfig(epochs=config.gate_epochs, lr=config.lr, seed=ctx.seed,
                                                          compute=ctx.compute),
              desc="gate training", penalty=trained.penalty, checkpoint=ctx.checkpoint("gates"))
    finally:
        trained.gates.detach()
    return trained


def gate_decision(ctx: Context, trained: GateTraining, gates: Gates | None = None) -> Decision:
    """The decision from trained gates: Taylor scores of ``ctx.graph.model`` on the hard gates,
    then the knapsack with block removal in the closed loop. ``gates``: the trained gates over
    ``ctx.graph`` when ``trained.gates`` hook another instance of the network."""
    gates = gates or trained.gates
    penalty = trained.penalty
    scores = ctx.scores(gates, mode="hard", seed_offset=1)
    with torch.no_grad():
        expected = float(penalty.soft(gates.expected_widths(), gates.block_keep()))
    hard = gates.hard_widths()
    extra = {"gates": {
        "start": trained.start, "steps": len(penalty.history), "final_lambda": penalty.lam, "expected_ms": expected,
        "open_channels": {ctx.graph.groups[g].root: w for g, w in hard.items()},
        "closed_blocks": gates.closed_blocks(),
        "expected_ms_trace": [round(h["expected_ms"], 4)
                              for h in penalty.history[:: max(1, len(penalty.history) // 50)]],
    }}
    return _knapsack_decision(ctx, scores, {**trained.options, **ctx.rank_options()}, extra)


def gator(ctx: Context) -> Decision:
    """Gates trained with ``λ·max(0, E[lat] − budget)/budget`` (the LUT's
    differentiable prediction) against each gate's share of the Taylor
    importance (``--gate-signal taylor``, :class:`~latprune.pruner.gates.TaylorSignal`;
    ``straight-through``: the task loss's gradient through the sampled gates),
    then Taylor scores on the hard gates and the knapsack with block removal,
    checked in the closed loop (:func:`trained_gates`, :func:`gate_decision`;
    ``latprune.attach_gates`` trains the same gates in the caller's own loop).

    ``--gate-init open`` starts every gate open; ``plan`` first solves the
    knapsack on the base's Taylor scores at the budget and starts the
    channels (and blocks) it drops undecided (logit 0), so the gates begin
    near the budget from an allocation the Taylor scores chose, and training
    moves channels across it."""
    return gate_decision(ctx, trained_gates(ctx))


# -- halp ------------------------------------------------------------------------------------------
def _masked_gates(ctx: Context, keep: dict[int, list[int]] | None) -> Gates:
    """Gates in ``hard`` mode that close every channel (and block) outside ``keep``."""
    gates = Gates(ctx.graph, init=10.0, blocks=ctx.importance_config.blocks)
    if keep:
        gates.start_from(keep, dropped=-10.0)
    gates.mode = "hard"
    return gates


def _recover(ctx: Context, gates: Gates, epochs: float, seed: int) -> None:
    """Short training of the masked model (closed channels stay closed)."""
    from latprune.train import TrainConfig, train

    if epochs <= 0 or ctx.train_loader is None:
        return
    gates.attach()
    try:
        gates.refresh()
        train(ctx.graph.model, ctx.train_loader, TrainConfig(epochs=epochs, lr=ctx.importance_config.lr,
              seed=ctx.seed + seed, compute=ctx.compute), desc="recover", checkpoint=ctx.checkpoint(f"recover{seed}"))
    finally:
        gates.detach()


def halp(ctx: Context) -> Decision:
    """HALP: ``steps`` rounds of Taylor scores + knapsack at budgets shrinking
    geometrically to the target, the masked model recovering briefly in
    between; the last round runs in the closed loop."""
    config = ctx.config
    assert isinstance(config, HalpConfig)  # the registry pairs them
    options = ctx.options(blocks=config.blocks)
    steps = max(1, config.steps)
    keep: dict[int, list[int]] | None = None
    scores = ctx.scores()
    rounds = []
    for k in range(1, steps):
        budget = ctx.base_ms * (ctx.target_ms / ctx.base_ms) ** (k / steps)
        solution = solve(ctx.predictor, options, scores, budget,
                         values=ctx.values(scores, options, keep, seed_offset=k))
        keep = keep_top(ctx.graph, scores, solution.widths)
        options = {g: [w for w in opts if w <= solution.widths[g]] for g, opts in options.items()}
        rounds.append({"budget_ms": budget, "predicted_ms": solution.predicted_ms,
                       "removed_blocks": [b.name for b in ctx.graph.removed_blocks(solution.widths)]})
        gates = _masked_gates(ctx, keep)
        _recover(ctx, gates, config.recover_epochs / max(1, steps - 1), seed=k)
        scores = ctx.scores(gates, mode="hard", seed_offset=k) if config.importance != "l1" else ctx.scores()
    return _knapsack_decision(ctx, scores, options, {"rounds": rounds},
                              ctx.values(scores, options, keep, seed_offset=steps))


# -- taylor ------------------------------------------------------------------------------------------
def taylor(ctx: Context) -> Decision:
    """Iterative removal: narrow, one grid step at a time, the group whose next
    step loses the least Taylor score per millisecond saved; re-score (after a
    short recovery) every few steps; then the closed loop narrows or widens
    from there by the same ratio."""
    config = ctx.config
    assert isinstance(config, TaylorConfig)  # the registry pairs them
    options = ctx.options(blocks=config.blocks)  # a block's last step removes it
    floor_ms = ctx.predictor.predict({g: opts[0] for g, opts in options.items()})
    if floor_ms > ctx.target_ms:
        raise BudgetError(f"budget {ctx.budget_ms:.3f} ms (target {ctx.target_ms:.3f} ms with the timing margin) is "
                          f"below the smallest reachable latency {floor_ms:.3f} ms; ask for more")
    scores = ctx.scores()
    widths = {g: opts[-1] for g, opts in options.items()}
    rescore_every = max(1, len(options) // 2)
    rounds = 0
    while ctx.predictor.predict(widths) > ctx.target_ms:
        values = option_values(scores, options)
        # a few one-step narrowings (not stopping at the target: the loop below checks it)
        narrowed = descend(ctx.predictor, options, values, widths, -math.inf, max_steps=rescore_every)
        if narrowed == widths:
            break
        widths = narrowed
        if ctx.predictor.predict(widths) <= ctx.target_ms:
            break
        rounds += 1
        keep = keep_top(ctx.graph, scores, widths)
        gates = _masked_gates(ctx, keep)
        if rounds <= 8:  # recovery budget: recover_epochs over the first 8 rounds
            _recover(ctx, gates, config.recover_epochs / 8, seed=rounds)
        scores = ctx.scores(gates, mode="hard", seed_offset=rounds) if config.importance != "l1" else scores
        if rounds > 64:
            break
    values = option_values(scores, options)
    start = dict(widths)

    def solver(predictor: Predictor, target: float) -> Solution:
        w = descend(predictor, options, values, start, target)
        w = fill(predictor, options, values, w, target)
        return Solution(w, predictor.predict(w), kept_value(values, options, w), 1)

    solution, slim, measured_ms, history, predictor = closed_loop(ctx, solver,
                                                                  lambda w: keep_top(ctx.graph, scores, w))
    return Decision(keep_top(ctx.graph, scores, solution.widths), slim, solution.predicted_ms, history,
                    {"rescore_rounds": rounds}, measured_ms, predictor)


# -- trp ---------------------------------------------------------------------------------------------
def rank_trained(ctx: Context) -> dict[str, Any]:
    """``ctx.graph.model`` trained towards low rank (:class:`~latprune.pruner.trp.TrpRegulariser`)
    over every layer offered a rank, on every rank under torchrun; what the training did."""
    from latprune.train import TrainConfig, train

    config = ctx.config
    assert isinstance(config, TrpConfig)  # the registry pairs them
    axes = ctx.rank_options()
    if not axes:
        raise SpecError("method 'trp' found no layer that a low rank makes cheaper (convolutions with one group "
                        "and linear layers, below their break-even rank); prune this model's widths instead")
    names = [ctx.graph.units[unit_index(a)].name for a in axes]
    layers = {name: ctx.graph.module(name) for name in names}
    regulariser = TrpRegulariser(layers, config.nuclear_weight, config.trp_period, config.trp_energy,
                                 config.lowrank_scheme)
    if config.trp_epochs > 0:
        train(ctx.graph.model, ctx.batches(), TrainConfig(epochs=config.trp_epochs, lr=config.lr, seed=ctx.seed,
                                                          compute=ctx.compute),
              desc="rank training", penalty=regulariser, checkpoint=ctx.checkpoint("trp"))
    return {"layers": len(layers), "steps": regulariser.steps, "projections": regulariser.projections,
            "rank_share_at_energy": round(regulariser.mean_rank_share(), 4)}


def rank_decision(ctx: Context, trained: dict[str, Any]) -> Decision:
    """The ranks of the rank-trained model: the knapsack over rank options (every group at full
    width, or, with ``trp_widths``, every group's widths and blocks beside them), values from the
    scores of its singular values and channels, in the closed loop."""
    config = ctx.config
    assert isinstance(config, TrpConfig)  # the registry pairs them
    scores = ctx.scores()
    options = ctx.options(blocks=config.blocks) if config.trp_widths else \
        {**{g.id: [g.size] for g in ctx.graph.groups}, **ctx.rank_options()}
    return _knapsack_decision(ctx, scores, options, {"trp": trained})


def trp(ctx: Context) -> Decision:
    """Trained Rank Pruning: train towards low rank (:mod:`~latprune.pruner.trp`), then factorise
    the layers, and to the ranks, that the LUT prices within the budget for the least loss
    (:func:`rank_trained`, :func:`rank_decision`)."""
    return rank_decision(ctx, rank_trained(ctx))


# -- baselines ---------------------------------------------------------------------------------------
def _snap(width: float, size: int, align: int) -> int:
    """``width`` rounded down to the group's alignment (:func:`group_align`; at least
    one block), or the full ``size`` when ``width`` reaches it."""
    align = group_align(size, align)
    if width >= size:
        return size
    return int(min(size, max(align, align * math.floor(width / align))))


def _predicted_or_none(predictor: Predictor, widths: dict[int, int]) -> float | None:
    try:
        return predictor.predict(widths)
    except LutError:
        return None  # widths off the LUT grid: the baselines do not need the LUT


def uniform_l1(ctx: Context) -> Decision:
    """One keep-ratio for every group (L1 magnitude inside each group), bisected
    on the measured latency until the largest ratio that holds the budget."""
    graph, scores = ctx.graph, l1_importance(ctx.graph)
    align = ctx.grid.align
    history: list[dict[str, Any]] = []
    measured: dict[tuple[tuple[int, int], ...], float] = {}

    def widths_at(ratio: float) -> dict[int, int]:
        return {g.id: _snap(ratio * g.size, g.size, g.step(align)) for g in graph.groups}

    def measure(ratio: float) -> tuple[float, dict[int, int]]:
        widths = widths_at(ratio)
        key = tuple(sorted(widths.items()))
        if key not in measured:
            slim = graph.slim(keep_top(ctx.graph, scores, widths))
            measured[key], base_beside_ms, measurements = ctx.measure_checked(slim, ctx.target_ms, meter.update)
            history.append({"iteration": len(history) + 1, "ratio": ratio, "measured_ms": measured[key],
                            "measurements_ms": measurements, "base_beside_ms": base_beside_ms,
                            "target_ms": ctx.target_ms, "fits": measured[key] <= ctx.target_ms,
                            "predicted_ms": _predicted_or_none(ctx.predictor, widths)})
        return measured[key], widths

    lo, hi = 0.0, 1.0
    best: dict[int, int] | None = None
    with ctx.meter("uniform-l1 bisection") as meter:
        # The full model is the base, measured at set-up: beside itself it measures base_ms again.
        if ctx.base_ms <= ctx.target_ms and measure(1.0)[0] <= ctx.target_ms:
            best = widths_at(1.0)
        else:
            for _ in range(ctx.config.max_iters + 4):
                mid = (lo + hi) / 2
                ms, widths = measure(mid)
                if ms <= ctx.target_ms:
                    lo, best = mid, widths
                else:
                    hi = mid
                meter.set_postfix(ratio=f"{lo:.3f}-{hi:.3f}", refresh=False)
                if hi - lo < 1 / 64:
                    break
    if best is None:
        raise BudgetError(f"uniform-l1: even a keep ratio of {hi:.3f} measures above the budget "
                          f"{ctx.budget_ms:.3f} ms; loosen the budget")
    keep = keep_top(ctx.graph, scores, best)
    return Decision(keep, graph.slim(keep), _predicted_or_none(ctx.predictor, best), history, {"ratio": lo},
                    measured[tuple(sorted(best.items()))])


def model_macs(graph: ChannelGraph, widths: dict[int, int]) -> int:
    """Multiply-accumulates of the conv/linear units at ``widths``."""
    removed = graph.removed_units(widths)
    return sum(u.key(widths).macs for u in graph.units if u.name not in removed)


def flops(ctx: Context) -> Decision:
    """Global L1 magnitude pruning (scores normalised by their group's mean, as
    Torch-Pruning's global ranking does) until MACs ≤ (budget / base latency) ×
    base MACs: the FLOPs proxy, with no latency model at all."""
    graph, scores = ctx.graph, l1_importance(ctx.graph)
    align = ctx.grid.align
    ratio = ctx.budget_ms / ctx.base_ms
    target_macs = ratio * model_macs(graph, graph.full_widths())
    ranked = sorted((float(s / (scores.channels[g].mean() or 1.0)), g, i)
                    for g, ch in scores.channels.items() for i, s in enumerate(ch))

    def widths_after(k: int) -> dict[int, int]:
        removed = {g.id: 0 for g in graph.groups}
        for _, g, _ in ranked[:k]:
            removed[g] += 1
        return {g.id: _snap(g.size - removed[g.id], g.size, g.step(align)) for g in graph.groups}

    lo, hi = 0, len(ranked)
    while lo < hi:  # smallest k with MACs under the target (MACs fall as k grows)
        mid = (lo + hi) // 2
        if model_macs(graph, widths_after(mid)) <= target_macs:
            hi = mid
        else:
            lo = mid + 1
    widths = widths_after(lo)
    keep = keep_top(ctx.graph, scores, widths)
    slim = graph.slim(keep)
    with ctx.meter("measure") as meter:
        ms, base_beside_ms = ctx.measure(slim, meter.update)
    history = [{"iteration": 1, "measured_ms": ms, "base_beside_ms": base_beside_ms,
                "target_ms": ctx.target_ms, "fits": ms <= ctx.target_ms,
                "macs_ratio": model_macs(graph, widths) / model_macs(graph, graph.full_widths()),
                "predicted_ms": _predicted_or_none(ctx.predictor, widths)}]
    return Decision(keep, slim, _predicted_or_none(ctx.predictor, widths), history, {"macs_target_ratio": ratio}, ms)


METHODS: dict[type[MethodConfig], Callable[[Context], Decision]] = {
    GatorConfig: gator, HalpConfig: halp, TaylorConfig: taylor, TrpConfig: trp, UniformL1Config: uniform_l1,
    FlopsConfig: flops,
}


# Methods whose own training runs on every rank under torchrun: the training, then the rest of the
# decision (rank 0 alone). Every other method decides on rank 0 alone, its recovery training included.
TRAINS_ON_EVERY_RANK: dict[type[MethodConfig], tuple[Callable[[Context], Any], Callable[[Context, Any], Decision]]] = {
    GatorConfig: (trained_gates, gate_decision),
    TrpConfig: (rank_trained, rank_decision),
}


def register_method(config: type[MethodConfig], method: Callable[[Context], Decision], every_rank: tuple[
        Callable[[Context], Any], Callable[[Context, Any], Decision]] | None = None) -> None:
    """Add a method: its config class (under the class's ``name``, :func:`configs.register`) and
    the function that runs it; ``every_rank``: ``method`` as its training, which runs on every rank
    under torchrun, and the rest (:data:`TRAINS_ON_EVERY_RANK`). A name or a config class taken by
    another is an error."""
    if config in METHODS and METHODS[config] is not method:
        raise ValueError(f"{config.__name__} already runs {METHODS[config].__name__}")
    register(config)
    METHODS[config] = method
    if every_rank is not None:
        TRAINS_ON_EVERY_RANK[config] = every_rank


def get_method(config: MethodConfig) -> Callable[[Context], Decision]:
    """The method that runs ``config`` (registered for its exact type)."""
    try:
        return METHODS[type(config)]
    except KeyError:
        raise SpecError(f"no method is registered for {type(config).__name__}; "
                        f"known: {', '.join(c.__name__ for c in METHODS)}") from None
