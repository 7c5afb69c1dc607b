"""Learned channel gates, one per coupled group and one per removable block (Gator).

Every producer of a group (the BatchNorms, or convs without one, that write
its channels) has its output multiplied by the group's gate vector, so a
residual highway shares one gate across every layer that writes into it; a
closed gate is exactly a removed channel. A removable block's branch end is
further multiplied by the block's scalar gate, and by zero once every inner
channel is closed: a closed block is exactly the block replaced by its
shortcut. A block that passes its input on (ShuffleNetV2's branch) mixes its
output with its input by its gate. With hard 0/1 gates the gated model
computes what the physically slimmed one does (``tests/test_gates.py``).

Modes:

``open``    every gate 1 (Taylor scores of the unpruned model);
``hard``    gate = [logit > 0] (the decision the training arrived at);
``sample``  training: ``sigmoid((logit + logistic noise) / T)``, thresholded
            at 0.5 in the forward pass with a straight-through gradient
            (with ``straight_through=False``: the hard 0/1 sample as a leaf,
            whose ``∂L/∂gate`` :class:`TaylorSignal` reads, and no task
            gradient to the logits).

In ``open`` and ``hard`` mode the gate tensors are leaves that require
grad, so ``gate · ∂L/∂gate`` (the first-order Taylor change of the loss when
the gate closes) can be read after a backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latprune.graph.channels import ChannelGraph, channel_dim, masked_layer_norm, parameter_of
from latprune.latency_lut.predict import SoftLatency

MODES = ("open", "hard", "sample")
Part = tuple[int, "int | None", int]  # a producer's channels of one group: group id, its block (if it ends one), offset


class Gates(nn.Module):
    """Gates of ``graph.model``; :meth:`attach` hooks them in, :meth:`detach` takes them out."""

    def __init__(self, graph: ChannelGraph, init: float = 3.0, blocks: bool = True, temperature: float = 0.5) -> None:
        super().__init__()
        self.graph = graph
        self.logits = nn.ParameterList([nn.Parameter(torch.full((g.size,), float(init))) for g in graph.groups])
        self.blocks = list(graph.blocks) if blocks else []
        self.block_logits = nn.Parameter(torch.full((len(self.blocks),), float(init)))
        self.temperature = temperature
        self.straight_through = True
        self.mode = "open"
        self.current: list[torch.Tensor] = []
        self.block_current = torch.ones(len(self.blocks))
        self._handles: list[Any] = []

    # -- gate values ------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Draw this forward pass's gate values (call before every forward)."""
        if self.mode not in MODES:
            raise ValueError(f"unknown gate mode {self.mode!r}; known: {MODES}")
        if self.mode == "sample":
            self.current = [self._sample(lg) for lg in self.logits]
            self.block_current = self._sample(self.block_logits)
            return
        hard = self.mode == "hard"
        self.current = [((lg > 0).float() if hard else torch.ones_like(lg)).detach().requires_grad_(True)
                        for lg in self.logits]
        self.block_current = ((self.block_logits > 0).float() if hard else
                              torch.ones_like(self.block_logits)).detach().requires_grad_(True)

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
        if not self.straight_through:  # open with probability sigmoid(logit), whatever the temperature
            return ((logits.detach() + torch.log(u) - torch.log1p(-u)) > 0).float().requires_grad_(True)
        soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / self.temperature)
        return (soft > 0.5).float() + soft - soft.detach()  # hard forward, straight-through gradient

    def probabilities(self) -> list[torch.Tensor]:
        """Per-channel probability that each gate is open."""
        return [torch.sigmoid(lg) for lg in self.logits]

    def expected_widths(self) -> dict[int, torch.Tensor]:
        """Gate-expected width of every group (differentiable)."""
        return {g.id: p.sum() for g, p in zip(self.graph.groups, self.probabilities())}

    def block_keep(self) -> dict[int, torch.Tensor]:
        """Probability that each removable block stays, by its inner group (differentiable)."""
        probs = torch.sigmoid(self.block_logits)
        return {b.group: probs[i] for i, b in enumerate(self.blocks)}

    def hard_widths(self) -> dict[int, int]:
        """Widths with every gate thresholded (0 for a group of a closed block)."""
        widths = {g.id: int((lg > 0).sum()) for g, lg in zip(self.graph.groups, self.logits)}
        for i, b in enumerate(self.blocks):
            if self.block_logits[i] <= 0:
                widths[b.group] = 0
        return widths

    def closed_blocks(self) -> list[str]:
        widths = self.hard_widths()
        return [b.name for b in self.blocks if widths[b.group] == 0]

    def start_from(self, keep: dict[int, list[int]], dropped: float = 0.0) -> None:
        """Start from a plan: every channel outside ``keep`` (and every block whose group
        ``keep`` empties) at logit ``dropped`` (0: undecided; very negative: closed for good,
        as the masks of halp and taylor); the kept ones stay as initialised."""
        with torch.no_grad():
            for g, idx in keep.items():
                out = torch.ones(self.graph.groups[g].size, dtype=torch.bool)
                out[list(idx)] = False
                self.logits[g][out] = dropped
            for i, b in enumerate(self.blocks):
                if b.group in keep and not keep[b.group]:
                    self.block_logits[i] = dropped

    def over(self, graph: ChannelGraph) -> Gates:
        """A copy of these gates (their logits) over ``graph``, another instance of the same
        network (:meth:`ChannelGraph.over`); not attached."""
        twin = Gates(graph, blocks=bool(self.blocks), temperature=self.temperature)
        twin.load_state_dict(self.state_dict())
        return twin

    # -- hooks ------------------------------------------------------------------------------------
    def attach(self) -> Gates:
        """Hook the gates into ``graph.model`` (idempotent)."""
        if self._handles:
            return self
        block_of_end = {end: i for i, b in enumerate(self.blocks) for end in b.branch_ends}
        model = self.graph.model
        for name, parts in self._producer_parts(block_of_end).items():
            param = parameter_of(model, name)
            if param is not None:  # a parameter outside layers (a class token): gated where its owner runs
                fold, restore = self._folded(parts, (param[1],), along_channels=True)
                self._handles.append(param[0].register_forward_pre_hook(fold))
                self._handles.append(param[0].register_forward_hook(restore, always_call=True))
                continue
            module = self.graph.module(name)
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
                fold, restore = self._folded(parts, ("weight", "bias"))
                self._handles.append(module.register_forward_pre_hook(fold))
                self._handles.append(module.register_forward_hook(restore, always_call=True))
            else:
                self._handles.append(module.register_forward_hook(self._hook(parts)))
        for g in self.graph.groups:
            for name in g.norms:
                self._handles.append(self.graph.module(name).register_forward_hook(self._norm_hook(g.id)))
        produced = {name for g in self.graph.groups for name in g.producers}
        for end, block in block_of_end.items():
            if end not in produced:  # it writes channels that keep their width: the block's gate alone
                self._handles.append(self.graph.module(end).register_forward_hook(self._block_hook(block)))
        for i, b in enumerate(self.blocks):
            if b.passes:
                self._handles.append(self.graph.module(b.name).register_forward_hook(self._pass_hook(i)))
        return self

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _producer_parts(self, block_of_end: dict[str, int]) -> dict[str, list[Part]]:
        """Each producer's gated channel ranges: one group's at offset 0 almost always; several
        where the producer runs over a concatenation (a BatchNorm after DenseNet's)."""
        parts: dict[str, list[Part]] = {}
        for g in self.graph.groups:
            for name in g.producers:
                parts.setdefault(name, []).append((g.id, block_of_end.get(name), g.offset(name)))
        return parts

    def _gate_over(self, parts: list[Part], channels: int) -> torch.Tensor:
        """The gate over a producer's ``channels``: each part's group gate at its offset, 1 elsewhere."""
        if len(parts) == 1 and parts[0][2] == 0 and self.graph.groups[parts[0][0]].size == channels:
            return self._gate(parts[0][0], parts[0][1])
        pieces, at = [], 0
        for gid, block, offset in sorted(parts, key=lambda p: p[2]):
            gate = self._gate(gid, block)
            pieces += [torch.ones(offset - at, dtype=gate.dtype), gate]
            at = offset + len(gate)
        pieces.append(torch.ones(channels - at, dtype=pieces[-1].dtype))
        return torch.cat(pieces)

    def _gate(self, gid: int, block: int | None) -> torch.Tensor:
        """Group ``gid``'s gate vector, times its block's gate when the producer ends a block's branch."""
        if not self.current:
            self.refresh()
        gate = self.current[gid]
        return gate if block is None else gate * self._block_gate(block)

    def _block_gate(self, block: int) -> torch.Tensor:
        """Block ``block``'s gate: 0 once every channel of its inner group is closed (no branch at all)."""
        if not self.current:
            self.refresh()
        alive = (self.current[self.blocks[block].group].detach().sum() > 0).float()
        return self.block_current[block] * alive

    def _hook(self, parts: list[Part]) -> Any:
        """Multiply a producer's output by its gate (a convolution or linear layer without a BatchNorm)."""
        def scale(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            dim = -1 if isinstance(module, nn.Linear) else 1
            # the gates live on the CPU; the model may run on a GPU, at a lower precision
            gate = self._gate_over(parts, out.shape[dim]).to(out.device, out.dtype)
            shape = [1] * out.dim()
            shape[dim] = -1
            return out * gate.view(shape)

        return scale

    def _block_hook(self, block: int) -> Any:
        """Multiply a branch end that is no group's producer by its block's gate."""
        def scale(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            return out * self._block_gate(block).to(out.device, out.dtype)

        return scale

    def _pass_hook(self, block: int) -> Any:
        """Mix a passing block's output with its input by its gate: closed, its input passes on,
        as once it is removed (:attr:`~latprune.graph.blocks.Block.passes`)."""
        def mix(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            gate = self._block_gate(block).to(out.device, out.dtype)
            return gate * out + (1 - gate) * args[0]

        return mix

    def _norm_hook(self, gid: int) -> Any:
        """A LayerNorm over the group's channels computes its statistics over the open ones:
        with hard gates, what the slimmed LayerNorm computes."""
        def normalise(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            gate = self._gate(gid, None).to(out.device, out.dtype)
            return masked_layer_norm(module, args[0], gate)

        return normalise

    def _folded(self, parts: list[Part], names: tuple[str, ...], along_channels: bool = False
                ) -> tuple[Any, Any]:
        """Fold the gate into a module's parameters ``names`` for its forward pass: a
        BatchNorm's scale and shift, ``BN(x)·g = (g·γ)·x̂ + g·β``, the same output and gradients
        as multiplying the activation at the cost of two vector products instead of a pass
        over the activation and its gradient (gate training's overhead over plain training on
        ResNet-20: BENCHMARKS.md); or a parameter outside layers that adds to or scales the
        channels, along its :func:`~latprune.graph.channels.channel_dim` (``along_channels``)."""
        def fold(module: nn.Module, args: tuple) -> None:
            params = module._parameters
            saved = tuple(params[n] for n in names)
            first = saved[0]
            assert first is not None
            channels = first.shape[channel_dim(first) if along_channels else 0]
            gate = self._gate_over(parts, channels).to(first.device, first.dtype)
            module.__dict__.setdefault("_latprune_params", {})[names] = saved
            for n, p in zip(names, saved):
                assert p is not None
                shape = [1] * p.dim()
                shape[channel_dim(p) if along_channels else 0] = -1
                params[n] = p * gate.view(shape)  # type: ignore[assignment]

        def restore(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            saved = module.__dict__.get("_latprune_params", {}).pop(names, None)
            if saved is not None:
                for n, p in zip(names, saved):
                    module._parameters[n] = p

        return fold, restore


@dataclass(frozen=True)
class GateConfig:
    """Gate training: ``task + λ · max(0, E[latency] − budget) / budget`` (``penalty="hinge"``).

    λ starts at ``lam`` and grows by ``lam_growth`` per step until the
    expected latency first reaches the budget (capped at ``lam_max``), then
    stays (growing at every step above the budget, ``hold``'s oscillation
    would take it from ~3 to ~27).
    ``penalty="hold"`` takes ``λ · |E[latency] − budget| / budget``: the same
    until the budget is first reached, then it pulls the gates back *up* to
    the budget too. With the hinge, Adam's momentum carries the gates on
    closing once the term switches off (ResNet-20 at 0.2x: E[latency] fell
    to 60% of the target before the task loss turned it), and every channel
    closed in that overshoot scores zero for the knapsack afterwards."""

    epochs: float = 0.5
    gate_lr: float = 0.05
    init: float = 3.0
    temperature: float = 0.5
    lam: float = 1.0
    lam_growth: float = 1.02
    lam_max: float = 1e3
    penalty: str = "hinge"          # hinge | hold (see above)
    signal: str = "taylor"          # the gates' task signal: taylor (TaylorSignal) | straight-through


class LatencyPenalty:
    """The gate-training regulariser, in the shape :func:`latprune.train.train` takes:
    trainable gate parameters, a refresh before every forward, and the latency loss.

    On its own (``signal="straight-through"``) the task loss reaches the logits
    through the straight-through gradient of the sampled gates;
    :class:`TaylorSignal` (the default) replaces that with each gate's share
    of the Taylor importance."""

    def __init__(self, gates: Gates, soft: SoftLatency, budget_ms: float, config: GateConfig) -> None:
        self.gates = gates
        self.soft = soft
        self.budget_ms = budget_ms
        self.config = config
        self.lam = config.lam
        self.reached = False  # E[latency] has been at or under the budget: λ stops growing
        self.history: list[dict[str, float]] = []

    def optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.gates.parameters(), lr=self.config.gate_lr)

    def before_forward(self) -> None:
        self.gates.mode = "sample"
        self.gates.straight_through = True
        self.gates.refresh()

    def loss(self) -> tuple[torch.Tensor, dict[str, str]]:
        expected = self.soft(self.gates.expected_widths(), self.gates.block_keep())
        over = (expected - self.budget_ms) / self.budget_ms
        term = self.lam * (over.abs() if self.config.penalty == "hold" else F.relu(over))
        value = float(expected.detach())
        self.history.append({"expected_ms": value, "lam": self.lam})
        self.reached = self.reached or value <= self.budget_ms
        if not self.reached:
            self.lam = min(self.lam * self.config.lam_growth, self.config.lam_max)
        return term, {"E[lat]": f"{value:.3f}ms", "λ": f"{self.lam:.2g}"}

    def synced(self) -> list[torch.Tensor]:
        """The gate logits: every rank of a torchrun world averages their gradients."""
        return list(self.gates.parameters())

    def state_dict(self) -> dict[str, Any]:
        """What a resumed gate training needs: the gate logits, λ and its history."""
        return {"gates": self.gates.state_dict(), "lam": self.lam, "reached": self.reached,
                "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gates.load_state_dict(state["gates"])
        self.lam, self.reached, self.history = state["lam"], state["reached"], list(state["history"])


class TaylorSignal(LatencyPenalty):
    """``--gate-signal taylor``: the latency term as in :class:`LatencyPenalty`, and as the
    gates' task signal, in place of the straight-through gradient,
    ``−κ · Σ_c sigmoid(logit_c) · share_c``.

    ``share_c`` is gate ``c``'s share of the Taylor importance the knapsack
    ranks by: an EMA (β = 0.9) of its squared per-batch ``∂L/∂gate``, over the
    sum of those of every channel gate (a block's gate is measured against the
    same total). The gates are hard 0/1 samples as leaves, so the task
    loss trains the weights under the sampled masks but reaches the logits
    only through ``share``. ``κ`` is set once, after ``warmup`` steps, to
    ``mean_c(∂E[lat]/∂width_c) / budget × N``: a channel of mean latency cost
    and mean importance (share 1/N) is pulled open as hard as it is pushed
    shut at λ = 1.

    Why: the straight-through gradient is the mean ``∂L/∂gate``, about zero
    for every gate of a trained model, so the latency term alone decides which
    gates close, and the cheap-per-channel highways go first (ResNet-56 at
    0.3x: the stage-3 highway cut to 40 of 64; with this signal it keeps 56,
    and the accuracy is +1 point: ``benchmarks/results/accuracy_vs_latency_resnet56.json``)."""

    beta = 0.9
    warmup = 5

    def __init__(self, gates: Gates, soft: SoftLatency, budget_ms: float, config: GateConfig) -> None:
        super().__init__(gates, soft, budget_ms, config)
        self.ema: list[torch.Tensor] | None = None  # per group, then the blocks' gates last
        self.kappa: float | None = None
        self.drawn: list[torch.Tensor] | None = None  # the last step's gate samples, in the same order

    def before_forward(self) -> None:
        g = self.gates
        self.ema = self._folded()  # the previous step's gradients
        g.mode = "sample"
        g.straight_through = False
        g.refresh()
        self.drawn = [*g.current, g.block_current]

    def _folded(self) -> list[torch.Tensor] | None:
        """The EMA with the last step's gradients folded in (what the next step starts from)."""
        if self.drawn is None:
            return self.ema
        sq = [t.grad.detach() ** 2 if t.grad is not None else torch.zeros_like(t) for t in self.drawn]
        return sq if self.ema is None else [self.beta * e + (1 - self.beta) * q for e, q in zip(self.ema, sq)]

    def synced(self) -> list[torch.Tensor]:
        """The logits, and this step's gate samples, whose gradients the EMA folds in."""
        return super().synced() + list(self.drawn or [])

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "ema": self._folded(), "kappa": self.kappa}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.ema, self.kappa, self.drawn = state["ema"], state["kappa"], None

    def loss(self) -> tuple[torch.Tensor, dict[str, str]]:
        term, fields = super().loss()
        if self.ema is None or len(self.history) < self.warmup:
            return term, fields
        total = sum(float(e.sum()) for e in self.ema[:-1]) or 1.0  # the channels' total; blocks share it too
        if self.kappa is None:
            self.kappa = self._parity()
        logits = [*self.gates.logits, self.gates.block_logits]
        kept = sum((torch.sigmoid(lg) * (e / total)).sum() for lg, e in zip(logits, self.ema))
        return term - self.kappa * kept, {**fields, "κ": f"{self.kappa:.2g}"}

    def _parity(self) -> float:
        """``κ``: the mean channel's latency gradient over the budget, times the channel count."""
        widths = {gid: w.detach().requires_grad_(True) for gid, w in self.gates.expected_widths().items()}
        keep = {k: v.detach() for k, v in self.gates.block_keep().items()}
        grads = torch.autograd.grad(self.soft(widths, keep), list(widths.values()), allow_unused=True)
        sizes = [len(lg) for lg in self.gates.logits]
        per_channel = torch.cat([(gr if gr is not None else torch.zeros(())).reshape(1).expand(n)
                                 for gr, n in zip(grads, sizes)])
        return float(per_channel.mean() / self.budget_ms) * len(per_channel)


SIGNALS: dict[str, type[LatencyPenalty]] = {"taylor": TaylorSignal, "straight-through": LatencyPenalty}


def latency_penalty(gates: Gates, soft: SoftLatency, budget_ms: float, config: GateConfig) -> LatencyPenalty:
    """The gate-training regulariser for ``config.signal``."""
    if config.signal not in SIGNALS:
        raise ValueError(f"unknown gate signal {config.signal!r}; known: {', '.join(SIGNALS)}")
    return SIGNALS[config.signal](gates, soft, budget_ms, config)
