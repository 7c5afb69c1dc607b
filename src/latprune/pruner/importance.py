"""Channel importance per group, and of whole removable blocks.

``taylor`` (Molchanov et al. 2019) on the gates: the first-order change of
the loss when a channel's gate closes, ``(g · ∂L/∂g)²`` averaged over
batches. A gate multiplies the outputs of every producer of its group (the
BNs, or convs without one), so this equals the per-channel sum of
``θ · ∂L/∂θ`` over those producers' parameters. A block's score is the same
for its branch gate: the loss change when the whole branch goes. Scores are
taken with the gates ``open`` (the unpruned model) or ``hard`` (after gate
training: closed gates score 0). ``taylor2`` adds the diagonal second-order
term with the Fisher approximation of the Hessian, ``-ΔL ≈ g·∂L/∂g − ½ (g·∂L/∂g)²``.
``l1`` is the producers' weight magnitude, for models without data (no block scores).

``measured`` ranks channels inside each group by Taylor, but values a whole
width option by the loss actually measured with the group cut to it (one
group at a time, the others as they are; a block's width 0 removes the
block): :func:`option_losses`. Taylor's sum of single-channel changes is
additive, so it cannot see that the eighth channel of an eight-channel layer
matters far more than the eighth of thirty-two; the measurement can.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from latprune._progress import bar
from latprune.errors import SpecError
from latprune.graph.channels import ChannelGraph, channel_dim, parameter_of
from latprune.graph.lowrank import CHANNEL, as_matrix, unit_index, weight_matrix
from latprune.graph.transformer import Heads
from latprune.pruner.gates import Gates


@dataclass
class Scores:
    """Importance of every channel of every group, of every removable block (by its inner group),
    and of every singular value of the layers offered a rank (by rank axis, largest value first)."""

    channels: dict[int, np.ndarray]
    blocks: dict[int, float] = field(default_factory=dict)
    ranks: dict[int, np.ndarray] = field(default_factory=dict)


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    """Sum every dim but the first (output channels)."""
    return t.reshape(t.shape[0], -1).sum(1) if t.dim() > 1 else t


def l1_importance(graph: ChannelGraph) -> Scores:
    scores = {}
    with torch.no_grad():
        for g in graph.groups:
            total = torch.zeros(g.size)
            for name in g.producers:
                start = g.offset(name)
                total += _magnitude(graph, name)[start:start + g.size].float().cpu()
            scores[g.id] = total.numpy()
    return Scores(scores)


def _magnitude(graph: ChannelGraph, producer: str) -> torch.Tensor:
    """A producer's weight magnitude per output channel (per head for an attention's heads)."""
    found = parameter_of(graph.model, producer)
    if found is not None:  # a parameter outside layers, its channels along channel_dim
        param = found[0]._parameters[found[1]]
        assert param is not None
        return param.abs().movedim(channel_dim(param), 0).reshape(param.shape[channel_dim(param)], -1).sum(1)
    if isinstance(graph.module(producer), Heads):
        return graph.module(producer.rpartition(".")[0]).head_magnitude()
    return _per_channel(graph.module(producer).weight.abs())


def taylor_importance(graph: ChannelGraph, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                      num_batches: int, order: int = 1, progress: bool = True, gates: Gates | None = None,
                      mode: str = "open", device: torch.device | str = "cpu") -> Scores:
    """Accumulate Taylor scores of every group and block over ``num_batches`` batches.

    ``gates`` (a :class:`~latprune.pruner.gates.Gates`) defaults to fresh open
    gates; pass trained ones with ``mode="hard"`` to score what the training kept.
    The model runs on ``device`` in fp32 (the gates stay on the CPU) and comes back to the CPU."""
    gates = Gates(graph) if gates is None else gates
    was_attached = gates.attached
    previous = gates.mode
    gates.mode = mode
    gates.attach()
    model = graph.model
    model.eval()  # BN statistics stay fixed: the scores describe the deployed function
    groups = {g.id: torch.zeros(g.size, dtype=torch.float64) for g in graph.groups}
    blocks = torch.zeros(len(gates.blocks), dtype=torch.float64)

    def delta(gate: torch.Tensor) -> torch.Tensor:
        first = (gate * gate.grad).double() if gate.grad is not None else torch.zeros(gate.shape, dtype=torch.float64)
        return first - 0.5 * first**2 if order == 2 else first

    seen = 0
    model.to(device)
    try:
        for x, y in bar(batches, total=num_batches, desc="taylor importance", unit="batch", enabled=progress):
            if seen >= num_batches:
                break
            gates.refresh()
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)).backward()
            with torch.no_grad():
                for g, gate in zip(graph.groups, gates.current):
                    groups[g.id] += delta(gate) ** 2
                blocks += delta(gates.block_current) ** 2
            seen += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.to("cpu")
        gates.mode = previous
        if not was_attached:  # leave the model as it came: a deepcopy would carry the hooks along
            gates.detach()
    if seen == 0:
        raise SpecError("no data batch reached the importance estimate; check that the training data yields "
                        "(inputs, labels) batches")
    return Scores({g: (s / seen).numpy() for g, s in groups.items()},
                  {b.group: float(blocks[i] / seen) for i, b in enumerate(gates.blocks)})


def option_losses(graph: ChannelGraph, gates: Gates, options: dict[int, list[int]], ranking: Scores,
                  batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_batches: int,
                  progress: bool = True, device: torch.device | str = "cpu") -> dict[int, list[float]]:
    """Increase of the mean loss over ``num_batches`` fixed batches when group g alone is cut
    to ``options[g][i]`` (its ``ranking``-best channels; width 0 removes its block).

    The other groups stay as ``gates`` has them in ``hard`` mode (fresh gates: the
    unpruned model), on ``device``. Every option is measured on the same batches, so the
    differences are paired and free of sampling noise between options. The
    increases are made monotone (a wider option keeps a superset of channels,
    so measuring it worse is noise); they are negative where an option beats the
    reference (a group that ``gates`` narrowed, widened again)."""
    held = [(x.to(device), y.to(device)) for _, (x, y) in zip(range(num_batches), batches)]
    if not held:
        raise SpecError("no data batch reached the option-loss measurement; check that the training data yields "
                        "(inputs, labels) batches")
    was_attached, previous = gates.attached, gates.mode
    saved = [lg.detach().clone() for lg in gates.logits]
    saved_blocks = gates.block_logits.detach().clone()
    block_index = {b.group: i for i, b in enumerate(gates.blocks)}
    model = graph.model.to(device)
    model.eval()
    gates.mode = "hard"
    gates.attach()

    def loss() -> float:
        total = 0.0
        with torch.no_grad():
            for x, y in held:
                gates.refresh()
                total += float(F.cross_entropy(model(x), y)) * len(y)
        return total / sum(len(y) for _, y in held)

    increases: dict[int, list[float]] = {}
    try:
        reference = loss()
        todo = sum(len(o) for o in options.values())
        with bar(total=todo, desc="option losses", unit="option", enabled=progress) as done:
            for g, opts in options.items():
                measured = []
                for w in opts:
                    with torch.no_grad():
                        logits = torch.full_like(saved[g], -10.0)
                        if w == 0 and g in block_index:
                            logits.copy_(saved[g])
                            gates.block_logits[block_index[g]] = -10.0
                        else:
                            logits[graph.groups[g].top(ranking.channels[g], w)] = 10.0
                            if g in block_index:  # a width > 0 keeps the block, even one the gates closed
                                gates.block_logits[block_index[g]] = 10.0
                        gates.logits[g].copy_(logits)
                    measured.append(loss() - reference)
                    with torch.no_grad():
                        gates.logits[g].copy_(saved[g])
                        gates.block_logits.copy_(saved_blocks)
                    done.update()
                # wider options keep a superset of channels: make the increase non-increasing in width
                monotone = np.maximum.accumulate(np.asarray(measured)[::-1])[::-1]
                increases[g] = [float(v) for v in monotone]
    finally:
        model.to("cpu")
        with torch.no_grad():
            for lg, s in zip(gates.logits, saved):
                lg.copy_(s)
            gates.block_logits.copy_(saved_blocks)
        gates.mode = previous
        if not was_attached:
            gates.detach()
    return increases


# -- singular values ---------------------------------------------------------------------------
def energy_rank_scores(graph: ChannelGraph, axes: Iterable[int], scores: Scores, scheme: str = CHANNEL
                       ) -> dict[int, np.ndarray]:
    """Data-free scores of the singular values: each layer's share of its output group's
    importance, split over its singular values by their energy (σ²). Truncating a layer
    to rank r then costs the energy it drops, as a fraction of what its channels are worth.
    A layer whose outputs are the model's (the classifier) is worth every channel's score.
    On a trained ResNet-20 it orders 62% of pairs of (layer, rank) options from different
    layers as their measured losses do, the Taylor score on the singular values 81%
    (BENCHMARKS.md, "Which value predicts a rank's loss"): prune with data where ranks matter."""
    writers: dict[int, int] = {}
    for unit in graph.units:
        if unit.out_group is not None:
            writers[unit.out_group] = writers.get(unit.out_group, 0) + 1
    everything = sum(float(c.sum()) for c in scores.channels.values())
    out = {}
    for axis in axes:
        unit = graph.units[unit_index(axis)]
        worth = float(scores.channels[unit.out_group].sum()) / writers[unit.out_group] \
            if unit.out_group is not None else everything
        energy = torch.linalg.svdvals(weight_matrix(graph.module(unit.name), scheme).cpu()) ** 2
        out[axis] = (worth * energy / energy.sum().clamp_min(1e-30)).numpy()
    return out


def taylor_rank_scores(graph: ChannelGraph, axes: Iterable[int], batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                       num_batches: int, progress: bool = True, device: torch.device | str = "cpu",
                       scheme: str = CHANNEL) -> dict[int, np.ndarray]:
    """Taylor scores of the singular values, in the currency of :func:`taylor_importance`: with
    the layer's weight matrix in ``scheme`` ``W = U S Vᵀ``, ``∂L/∂σᵢ = uᵢᵀ (∂L/∂W) vᵢ``, and the
    score is the first-order loss change when σᵢ goes to zero, ``(σᵢ · ∂L/∂σᵢ)²``, averaged
    over batches."""
    axes = list(axes)
    layers = {a: graph.module(graph.units[unit_index(a)].name) for a in axes}
    svds = {a: torch.linalg.svd(weight_matrix(layers[a], scheme).cpu(), full_matrices=False) for a in axes}
    sums = {a: torch.zeros(len(svds[a][1]), dtype=torch.float64) for a in axes}
    model = graph.model
    model.eval()
    model.to(device)
    seen = 0
    try:
        for x, y in bar(batches, total=num_batches, desc="rank importance", unit="batch", enabled=progress):
            if seen >= num_batches:
                break
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)).backward()
            with torch.no_grad():
                for a in axes:
                    u, s, vh = svds[a]
                    grad = as_matrix(layers[a].weight.grad.detach().double(), scheme).cpu()
                    sums[a] += (s * ((u.T @ grad) * vh).sum(1)) ** 2
            seen += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.to("cpu")
    if seen == 0:
        raise SpecError("no data batch reached the rank importance estimate; check that the training data yields "
                        "(inputs, labels) batches")
    return {a: (t / seen).numpy() for a, t in sums.items()}
