"""The PruningNet: the topology's GCN and one head per group, generating weights for any width vector.

The network whose widths are searched shares its weights across every width vector (MetaPruning's
weight sharing): a width vector keeps each group's ``w`` most important channels (the importance
order is fixed before training, as :func:`~latprune.pruner.methods.keep_top` keeps them) and closes
the others with gator's gates (:class:`WidthGates`, the same hooks: a closed gate is a removed
channel, a block whose inner group is closed is removed). The PruningNet turns the width vector into
each kept channel's multiplicative modulation, ``1 + head_g([embedding_g, share_g])``, the embedding
the GCN's over the topology at those widths; the gates carry it (at a BatchNorm it scales γ and β:
the channel's generated weights). Heads start at zero, so every modulation starts at 1 (the base
weights). :func:`train_pruningnet` trains the network's weights and the PruningNet together on
random width vectors; :class:`Scorer` scores a candidate: its generated weights, BatchNorm statistics
recalibrated on a few training batches, top-1 on batches held out of that training (:func:`hold_out`).
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from latprune._io import atomic_write_json
from latprune.errors import SpecError
from latprune.graph.channels import ChannelGraph, parameter_of
from latprune.pruner.gates import Gates
from latprune.pruner.search.space import Widths, key_of
from latprune.pruner.search.topology import GCN, STATIC_FEATURES, Topology
from latprune.train import Checkpoint, Compute, TrainConfig, train

Batch = tuple[torch.Tensor, torch.Tensor]


class PruningNet(nn.Module):
    """GCN over ``topology`` plus one FC head per group: a width vector -> per-channel modulations."""

    def __init__(self, topology: Topology, hidden: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.topology = topology
        self.gcn = GCN(topology.adjacency, STATIC_FEATURES + 1, hidden, layers)
        self.heads = nn.ModuleList(nn.Linear(hidden + 1, size) for size in topology.sizes)
        for head in self.heads:  # every modulation starts at exactly 1
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def embeddings(self, widths: Widths) -> torch.Tensor:
        """Node embeddings at ``widths``, (N, hidden)."""
        return self.gcn(self.topology.inputs(widths))

    def forward(self, widths: Widths) -> list[torch.Tensor]:
        """Each group's modulation vector (its full size) at ``widths``."""
        x = self.topology.inputs(widths)
        h = self.gcn(x)
        return [1 + head(torch.cat([h[g], x[g, -1:]])) for g, head in enumerate(self.heads)]


class WidthGates(Gates):
    """Gator's gates set by a width vector: group g's ``widths[g]`` most important channels open
    (times their modulation, where given), the others closed; every block gate open (a block
    whose inner group is at width 0 is removed by its closed channels)."""

    def __init__(self, graph: ChannelGraph, importance: dict[int, np.ndarray], blocks: bool = True) -> None:
        super().__init__(graph, blocks=blocks)
        self.importance = importance
        self._masks: dict[tuple[int, int], torch.Tensor] = {}  # (group, width) -> its channels open

    def mask(self, gid: int, width: int) -> torch.Tensor:
        """Group ``gid``'s mask at ``width``: the channels :meth:`~latprune.graph.channels.Group.top`
        keeps by the importance (the same as :func:`~latprune.pruner.methods.keep_top`)."""
        if (gid, width) not in self._masks:
            group = self.graph.groups[gid]
            mask = torch.zeros(group.size)
            mask[group.top(self.importance[gid], width)] = 1.0
            self._masks[gid, width] = mask
        return self._masks[gid, width]

    def set(self, widths: Widths, modulations: list[torch.Tensor] | None = None) -> None:
        masks = [self.mask(g, int(widths[g])) for g in range(len(self.graph.groups))]
        self.current = masks if modulations is None else [m * mod for m, mod in zip(masks, modulations)]
        self.block_current = torch.ones(len(self.blocks))

    def refresh(self) -> None:
        if not self.current:
            raise ValueError("WidthGates: set(widths) before a forward pass")


class SupernetTraining:
    """The PruningNet as :func:`latprune.train.train`'s penalty: before every step a random width
    vector sets the gates to its masks times the PruningNet's modulations, so the task loss trains
    the shared weights and the PruningNet together; it adds no loss of its own."""

    def __init__(self, net: PruningNet, gates: WidthGates, sample: Callable[[torch.Generator], Widths],
                 lr: float = 1e-3, seed: int = 0) -> None:
        self.net, self.gates, self.sample, self.lr = net, gates, sample, lr
        self.gen = torch.Generator().manual_seed(seed)
        self.steps = 0
        self.share = 1.0  # the last width vector's mean share of channels

    def optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=self.lr)

    def before_forward(self) -> None:
        widths = self.sample(self.gen)
        self.gates.set(widths, self.net(widths))
        self.share = float(np.mean([widths[g] / s for g, s in enumerate(self.net.topology.sizes)]))

    def loss(self) -> tuple[torch.Tensor, dict[str, str]]:
        self.steps += 1
        return torch.zeros(()), {"width": f"{self.share:.2f}"}

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "gen": self.gen.get_state(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.gen.set_state(state["gen"])
        self.steps = state["steps"]

    def synced(self) -> list[torch.Tensor]:
        return list(self.net.parameters())


def train_pruningnet(graph: ChannelGraph, net: PruningNet, gates: WidthGates,
                     sample: Callable[[torch.Generator], Widths], batches: Iterable[Batch], epochs: float,
                     lr: float, seed: int, compute: Compute = Compute(), checkpoint: Checkpoint | None = None
                     ) -> SupernetTraining:
    """Train ``graph.model`` (the shared weights) and ``net`` together for ``epochs`` on ``batches``,
    a width vector drawn by ``sample`` at every step; what trained them."""
    training = SupernetTraining(net, gates, sample, seed=seed)
    gates.attach()
    try:
        train(graph.model, batches, TrainConfig(epochs=epochs, lr=lr, seed=seed, compute=compute),
              desc="pruningnet", penalty=training, checkpoint=checkpoint)
    finally:
        gates.detach()
    return training


def take(batches: Iterable[Batch], n: int) -> list[Batch]:
    """The first ``n`` batches of ``batches``, passing over it again where it holds fewer."""
    out: list[Batch] = []
    while len(out) < n:
        before = len(out)
        out.extend(itertools.islice(iter(batches), n - len(out)))
        if len(out) == before:
            raise ValueError("the training batches are empty")
    return out


def hold_out(loader: Iterable[Batch], n: int, seed: int) -> tuple[Iterable[Batch], list[Batch], str]:
    """``loader`` split for a search: the batches the PruningNet trains on, ``n`` held-out batches
    its candidates are scored on (never trained on), and how they were held out. A ``DataLoader``
    over a dataset with a length holds out ``n`` batches' worth of samples drawn by ``seed`` and
    trains on the rest, shuffled as before (each rank on its share, where a ``DistributedSampler``
    shared it out); a list of batches holds out its last ``n``; any other
    iterable cannot be split, and its first ``n`` batches are scored on while it trains on them all."""
    from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

    dataset = getattr(loader, "dataset", None)
    size = getattr(loader, "batch_size", None)
    if isinstance(loader, DataLoader) and isinstance(dataset, Dataset) and hasattr(dataset, "__len__") and size:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()  # type: ignore
        held_count = n * size
        if held_count >= len(order):
            raise SpecError(f"the search holds out {n} batches of {size} samples to score its candidates on, "
                            f"but the training set holds {len(order)}; lower --score-batches")
        common = {"batch_size": size, "collate_fn": loader.collate_fn, "num_workers": loader.num_workers}
        rest = Subset(dataset, order[held_count:])
        shared = loader.sampler
        if isinstance(shared, DistributedSampler):  # under torchrun: each rank its share of the rest
            train_part = DataLoader(rest, sampler=DistributedSampler(
                rest, shared.num_replicas, shared.rank, shuffle=True, seed=seed, drop_last=shared.drop_last),
                drop_last=loader.drop_last, **common)
        else:
            train_part = DataLoader(rest, shuffle=True, drop_last=loader.drop_last,
                                    generator=torch.Generator().manual_seed(seed), **common)
        held = list(DataLoader(Subset(dataset, order[:held_count]), shuffle=False, **common))
        return train_part, held, f"{held_count} training samples held out"
    if isinstance(loader, list) and len(loader) > n:
        return loader[:-n], loader[-n:], f"the last {n} of {len(loader)} training batches held out"
    return loader, take(loader, n), "training batches (the loader cannot be split: scored on batches it trains on)"


@torch.no_grad()
def recalibrate_bn_(model: nn.Module, batches: list[Batch], device: torch.device) -> None:
    """Every BatchNorm's running statistics anew: the plain mean over ``batches`` (the rest of the
    model in eval mode)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
        m.train()
    try:
        for x, _ in batches:
            model(x.to(device))
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
            m.eval()


class Scorer:
    """A width vector's score: top-1 (0..1) of its generated weights on ``held`` batches, the
    BatchNorm statistics recalibrated on ``calibration`` batches first; memoised per vector, and
    in ``store`` (a JSON file, rewritten after each new score) where given: a search killed and
    started again on the same trained PruningNet replays its candidates from it, scoring only
    the ones it had not reached."""

    def __init__(self, graph: ChannelGraph, net: PruningNet, gates: WidthGates, calibration: list[Batch],
                 held: list[Batch], device: str = "cpu", store: Path | None = None) -> None:
        self.graph, self.net, self.gates = graph, net, gates
        self.calibration, self.held = calibration, held
        self.device = torch.device(device)
        self.store = store
        self.memo: dict[tuple[tuple[int, int], ...], float] = {}
        if store is not None and store.is_file():
            self.memo = {tuple((int(g), int(w)) for g, w in key): float(score)
                         for key, score in json.loads(store.read_text(encoding="utf-8"))}
        self.stored = len(self.memo)  # scores read from ``store``: what a resumed search did not score again

    @property
    def evaluated(self) -> int:
        return len(self.memo)

    @torch.no_grad()
    def __call__(self, widths: Widths) -> float:
        key = key_of(widths)
        if key not in self.memo:
            model = self.graph.model.to(self.device)
            self.gates.set(widths, self.net(widths))
            self.gates.attach()
            try:
                recalibrate_bn_(model, self.calibration, self.device)
                correct = total = 0
                for x, y in self.held:
                    correct += int((model(x.to(self.device)).argmax(1).cpu() == y).sum())
                    total += len(y)
            finally:
                self.gates.detach()
                model.cpu()
            self.memo[key] = correct / max(1, total)
            if self.store is not None:
                atomic_write_json(self.store, [[list(map(list, k)), v] for k, v in self.memo.items()])
        return self.memo[key]

    @torch.no_grad()
    def generated(self, widths: Widths) -> ChannelGraph:
        """A copy of the network carrying ``widths``' generated weights: its BatchNorm statistics
        recalibrated, every group's gate values (mask × modulation) folded into its producers
        (:func:`fold_`). Slimmed to ``widths``, it computes what the gated network does."""
        self.memo.pop(key_of(widths), None)
        self(widths)  # sets the gates and recalibrates the statistics
        twin = self.graph.over(copy.deepcopy(self.graph.model))
        fold_(twin, self.gates.current)
        return twin


@torch.no_grad()
def fold_(graph: ChannelGraph, gate_values: list[torch.Tensor]) -> None:
    """Multiply each group's gate values into its producers in place: a BatchNorm's γ and β, or a
    convolution's or linear layer's output channels (weight and bias). Other producers (an
    attention's heads, a parameter outside layers) are refused."""
    for g in graph.groups:
        gate = gate_values[g.id].detach()
        for name in g.producers:
            module = graph.module(name) if parameter_of(graph.model, name) is None else None
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
                module.weight.mul_(gate)
                module.bias.mul_(gate)
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.mul_(gate.view(-1, *[1] * (module.weight.dim() - 1)))
                if module.bias is not None:
                    module.bias.mul_(gate)
            else:
                raise SpecError(f"the PruningNet's weights cannot be folded into {name!r} (not a BatchNorm, "
                                "convolution or linear layer); slim from the base weights (weights='base')")
