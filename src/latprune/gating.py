"""Gator's gates, trained in the caller's own training loop.

:func:`latprune.prune` runs gator's gate training itself. Here the caller keeps
their loop: :func:`attach_gates` hooks the gates into their model and measures
the base; every training step adds :meth:`AttachedGates.loss`, the latency
term, to the task loss; :meth:`AttachedGates.finish` takes the gates out and
decides the widths as gator does (Taylor scores on the hard gates, the
knapsack, the closed loop measuring candidates on the LUT's backend), slims,
and measures the export: a :class:`~latprune.api.PruneResult`.

    gates = latprune.attach_gates(model, lut, "0.5x", example_input=x)
    opt, gate_opt = torch.optim.SGD(model.parameters(), lr=0.01), gates.optimizer()
    for xb, yb in loader:
        loss = F.cross_entropy(model(xb), yb) + gates.loss()
        opt.zero_grad(); gate_opt.zero_grad(); loss.backward(); opt.step(); gate_opt.step()
    result = gates.finish(loader)                                       # the model's hooks are gone
"""

from __future__ import annotations

import copy
import time
import weakref
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from latprune import parallel
from latprune.api import (
    LUT,
    PathLike,
    PruneResult,
    _budget,
    _input_shape,
    _module,
    _name,
    _training,
    _training_record,
    _world_record,
)
from latprune.budget import Budget
from latprune.errors import SpecError
from latprune.graph.check import checked_graph
from latprune.latency_lut.backends import get_backend
from latprune.latency_lut.predict import Predictor
from latprune.latency_lut.profile import open_for_backend
from latprune.pruner.configs import GatorConfig
from latprune.pruner.loop import FinetuneConfig, Settings, Training, metrics_of, prepare, run_attempts
from latprune.pruner.methods import Context, gate_decision, gate_training
from latprune.train import Compute

_ATTACHED: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # models that carry gates now


class AttachedGates:
    """Gates hooked into the caller's model, trained in the caller's loop (made by :func:`attach_gates`).

    In training mode every forward pass of the model draws the step's gate samples
    (a forward pre-hook); in eval mode the model runs on the hard gates, as the
    decision will see it. The gates and the latency model live on the CPU and
    meet the activations on their device and dtype.

    Under ``torchrun`` every rank attaches (rank 0's weights go to every rank,
    rank 0 alone measures the base), trains the gates on its shard beside the
    model in the caller's DDP, and steps them with :meth:`optimizer`, which
    averages their gradients over the ranks; rank 0 alone decides, and every
    rank gets its decision."""

    def __init__(self, model: nn.Module, lut: LUT | PathLike, budget: str | float | Budget,
                 example_input: torch.Tensor | Sequence[int], config: GatorConfig, seed: int, name: str | None,
                 progress: bool) -> None:
        t0 = time.time()
        self.model = model
        self.config = _gator_config(config)
        if model in _ATTACHED:
            raise SpecError("this model already carries gates; finish() or detach() them before attaching new ones")
        shape = _input_shape(example_input)
        target = _budget(budget)
        self._table = lut if isinstance(lut, LUT) else LUT.open(lut)
        self._world = parallel.join(next(model.parameters(), torch.empty(0)).device.type)
        parallel.same_everywhere("arguments to attach_gates", {
            "budget": asdict(target), "lut": str(Path(self._table.path).resolve()), "input_shape": list(shape),
            "config": asdict(self.config), "seed": seed})
        self._backend = get_backend(self._table.backend, self._table.threads)
        self._settings = Settings(seed=seed, progress=progress and self._world.main)  # rank 0 reports
        base = _module(model).cpu()  # the model as it is now: what the budget is a fraction of
        parallel.broadcast_state(base)  # rank 0's weights on every rank, as DDP would
        self._graph = self._backend.keyed(checked_graph(copy.deepcopy(base), shape))
        with open_for_backend(self._table.path, self._backend, writable=False) as store:
            self._start = prepare(self._graph, base, _name(model, name), store, self._backend, target,
                                  self._settings, since=t0)
            ctx = Context(self._graph.over(model), self._start.predictor, self._backend, self._start.calibrated.grid,
                          self._start.budget_ms, self._start.base_ms, self.config, seed=seed,
                          progress=self._settings.progress)
            self._trained = gate_training(ctx)  # the latency tables are read from the LUT here
        parallel.broadcast_tensors(self._trained.gates.parameters())
        self._target_ms = ctx.target_ms
        self._averaged = False  # an optimizer() averages the gates' gradients over the ranks
        self._handles: list[Any] = []
        self._forwarded = False  # a training-mode forward pass since the last loss()
        self._finished = False
        self._attach()

    # -- in the caller's loop -------------------------------------------------------------------------
    @property
    def budget_ms(self) -> float:
        """The budget in milliseconds (a relative one resolved on the base measured at attach)."""
        return self._start.budget_ms

    @property
    def base_ms(self) -> float:
        return self._start.base_ms

    @property
    def target_ms(self) -> float:
        """What the latency term aims the expected latency at: the budget less the timing margin."""
        return self._target_ms

    @property
    def expected_ms(self) -> float:
        """The latency the gates expect now (the LUT's differentiable prediction, in ms)."""
        gates = self._trained.gates
        with torch.no_grad():
            return float(self._trained.penalty.soft(gates.expected_widths(), gates.block_keep()))

    @property
    def steps(self) -> int:
        """How many times :meth:`loss` has been called."""
        return len(self._trained.penalty.history)

    def parameters(self) -> Iterator[nn.Parameter]:
        """The gate logits (not the model's parameters): what :meth:`optimizer` trains."""
        return self._trained.gates.parameters()

    def optimizer(self, lr: float | None = None) -> torch.optim.Optimizer:
        """Adam over the gate logits at ``lr`` (default: gator's, 0.05); step it beside the model's.
        Under torchrun its step first averages the gates' gradients over the ranks (the caller's
        DDP averages the model's alone)."""
        penalty = self._trained.penalty
        opt = penalty.optimizer() if lr is None else torch.optim.Adam(self.parameters(), lr=lr)
        if self._world.distributed:
            opt.register_step_pre_hook(lambda *_: parallel.average_gradients(penalty.synced()))
            self._averaged = True
        return opt

    def loss(self) -> torch.Tensor:
        """This step's latency term, a scalar on the model's device: add it to the task loss.
        Call it once per step, after the model's forward pass in training mode."""
        self._check_open("loss()")
        if self._world.distributed and not self._averaged:
            raise SpecError(f"under torchrun (rank {self._world.rank} of {self._world.size}) step the gates with "
                            "gates.optimizer(): its step averages their gradients over the ranks, which the "
                            "model's DDP does not")
        if not self._forwarded:
            raise SpecError("gates.loss() follows a forward pass of the model in training mode (model.train()), "
                            "once per step: that pass draws the gate samples the term trains")
        self._forwarded = False
        term, _ = self._trained.penalty.loss()
        device = next(self.model.parameters(), torch.empty(0)).device
        return term.to(device)

    # -- the decision ---------------------------------------------------------------------------------
    def finish(self, train_loader: Iterable, *, val_loader: Iterable | None = None,
               finetune: Callable[[nn.Module], None] | FinetuneConfig | None = None,
               evaluate: Callable[[nn.Module], float] | None = None, retries: int = 1) -> PruneResult:
        """Take the gates out of the model and decide: Taylor scores of a CPU copy of the trained
        model on the hard gates (over ``train_loader``'s CPU batches), the knapsack, the closed
        loop on the LUT's backend, the slimmed model fine-tuned (``finetune``, as in
        :func:`latprune.prune`; none by default) and evaluated, its export measured (again,
        narrower, up to ``retries`` times while it misses the budget). The caller's model keeps its
        trained weights, without hooks. When it raises, the gates stay attached."""
        self._check_open("finish()")
        if train_loader is None:
            raise SpecError("finish needs train_loader=: the Taylor scores on the trained gates are taken on its "
                            "batches")
        if not isinstance(retries, int) or retries < 0:
            raise SpecError(f"retries must be 0 or more, not {retries!r}")
        compute = Compute.resolve("auto")  # where a FinetuneConfig's built-in fine-tuning runs
        training = _training(self.config, train_loader, val_loader, finetune, evaluate, compute)
        parallel.DIFFERENCES.clear()
        parallel.synchronise("gate training", self.model, self.parameters())  # how far apart the ranks ended
        self.detach()
        try:
            result = self._decide(training, replace(self._settings, retries=retries))
        except BaseException:
            self._attach()
            raise
        result.metrics["config"].update(_training_record(finetune, evaluate, val_loader, compute))
        self._finished = True
        return result

    def _decide(self, training: Training, settings: Settings) -> PruneResult:
        trained_model = copy.deepcopy(self.model).cpu().eval()  # the caller's model stays where it is
        graph = self._graph.over(trained_model)
        gates = self._trained.gates.over(graph)
        with open_for_backend(self._table.path, self._backend, writable=False) as store:
            start = replace(self._start, predictor=Predictor(store, graph, self._start.predictor.calibration))
            outcome = run_attempts(start, graph, lambda: graph, store, self._backend, self.config, training, settings,
                                   lambda ctx: gate_decision(ctx, self._trained, gates))
        metrics = metrics_of(outcome, start.base_model, graph.input_shape, start.budget, self.config, self._backend,
                             str(self._table.path), settings, None)
        metrics["config"].update(gate_epochs=None, lr=None, gate_training="the caller's loop")
        if self._world.distributed:
            metrics["distributed"] = _world_record(self._world, outcome.attempt.decision.slim)
        return PruneResult(outcome.attempt.decision.slim.eval(), outcome.plan, metrics,
                           outcome.attempt.verified.onnx)

    # -- hooks ----------------------------------------------------------------------------------------
    def detach(self) -> None:
        """Take the gates out of the model without deciding (idempotent); the model keeps its weights."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._trained.gates.detach()
        _ATTACHED.discard(self.model)

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def _attach(self) -> None:
        self._handles = [self.model.register_forward_pre_hook(self._before_forward)]
        self._trained.gates.attach()
        _ATTACHED.add(self.model)

    def _before_forward(self, module: nn.Module, args: Any) -> None:
        if module.training:
            self._trained.penalty.before_forward()  # this step's gate samples
            self._forwarded = True
        else:
            gates = self._trained.gates
            gates.mode = "hard"
            gates.refresh()

    def _check_open(self, call: str) -> None:
        if self._finished:
            raise SpecError(f"gates.{call}: these gates are finished (finish() returned their PruneResult); "
                            "call latprune.attach_gates again to train new ones")
        if not self.attached:
            raise SpecError(f"gates.{call}: these gates were detached from the model; call latprune.attach_gates "
                            "again to train new ones")


def _gator_config(config: Any) -> GatorConfig:
    if not isinstance(config, GatorConfig):
        raise SpecError(f"config must be a latprune.GatorConfig (attach_gates trains gator's gates), not "
                        f"{type(config).__name__}")
    if config.gate_init != "open":
        raise SpecError(f"attach_gates starts every gate open; GatorConfig(gate_init={config.gate_init!r}) is for "
                        "latprune.prune, which scores the base on its train_loader first")
    return config


def attach_gates(model: nn.Module, lut: LUT | PathLike, budget: str | float | Budget, *,
                 example_input: torch.Tensor | Sequence[int], config: GatorConfig | None = None, seed: int = 0,
                 name: str | None = None, progress: bool = True) -> AttachedGates:
    """Hook gator's gates into ``model`` itself (in place, until :meth:`~AttachedGates.finish`
    or :meth:`~AttachedGates.detach`) for training in your own loop, against ``budget``
    (``"0.5x"`` of the base measured now on ``lut``'s backend, or milliseconds).

    ``config``: a :class:`~latprune.GatorConfig` (its gate penalty and signal, importance,
    blocks and closed-loop fields; the loop is yours, so ``gate_epochs`` and ``lr`` are not used).
    The model may live on a GPU; ``example_input`` (a tensor or a shape) is what it takes."""
    if not isinstance(model, nn.Module):
        raise SpecError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    return AttachedGates(model, lut, budget, example_input, config or GatorConfig(), seed, name, progress)
