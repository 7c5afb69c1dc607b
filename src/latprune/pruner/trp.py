"""Trained Rank Pruning (Xu et al.): train a network *towards* low rank, then factorise it.

Approximating a trained network by low-rank factors afterwards loses
accuracy: small errors in every layer add up. TRP trains with two terms
instead, so the spectrum of each layer concentrates while the task loss
adapts to it:

- every ``period`` steps, each layer's weight is replaced by its truncated
  SVD keeping ``energy`` of its σ² (:func:`~latprune.graph.lowrank.project_`);
- a nuclear-norm term ``weight · Σ ‖W‖*`` in the loss, whose (sub)gradient is
  ``U Vᵀ`` of each layer's SVD, pulls the small singular values down.

The trained network factorises with little loss; which layers, and to which
rank, the latency knapsack decides on the LUT (``pruner.methods.trp``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from latprune.graph.lowrank import CHANNEL, as_matrix, max_rank, project_, weight_matrix


def energy_rank(layer: nn.Module, energy: float, scheme: str = CHANNEL) -> int:
    """The smallest rank keeping ``energy`` of the layer's weight matrix's σ² (in ``scheme``)."""
    s2 = torch.linalg.svdvals(weight_matrix(layer, scheme)) ** 2
    kept = torch.cumsum(s2, 0) / s2.sum().clamp_min(1e-30)
    return int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype))) + 1


class TrpRegulariser:
    """TRP's two terms over ``layers`` (name → Conv2d or Linear), in the shape
    :func:`latprune.train.train` takes as its penalty; the weight matrices are read the way
    ``scheme`` factorises them (:func:`~latprune.graph.lowrank.as_matrix`)."""

    def __init__(self, layers: dict[str, nn.Module], nuclear_weight: float, period: int, energy: float,
                 scheme: str = CHANNEL) -> None:
        self.layers = layers
        self.scheme = scheme
        self.nuclear_weight = nuclear_weight
        self.period = period
        self.energy = energy
        self.steps = 0
        self.projections = 0

    def optimizer(self) -> None:
        return None  # nothing of its own to train: its terms act on the model's weights

    def before_forward(self) -> None:
        if self.period > 0 and self.steps > 0 and self.steps % self.period == 0:
            for layer in self.layers.values():
                rank = energy_rank(layer, self.energy, self.scheme)
                if rank < max_rank(layer, self.scheme):
                    project_(layer, rank, self.scheme)
            self.projections += 1
        self.steps += 1

    def loss(self) -> tuple[torch.Tensor, dict[str, str]]:
        if self.nuclear_weight == 0:
            return torch.zeros(()), {}
        norms = [torch.linalg.matrix_norm(as_matrix(layer.weight, self.scheme), "nuc")
                 for layer in self.layers.values()]
        term = self.nuclear_weight * torch.stack(norms).sum()
        return term, {"‖W‖*": f"{float(term.detach()) / self.nuclear_weight:.3g}"}

    def synced(self) -> list[torch.Tensor]:
        return []  # its gradients are the model's: averaged with them

    def mean_rank_share(self) -> float:
        """The layers' ranks at ``energy`` over their full ranks, averaged: how far training went."""
        shares = [energy_rank(m, self.energy, self.scheme) / max_rank(m, self.scheme) for m in self.layers.values()]
        return sum(shares) / max(1, len(shares))

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "projections": self.projections}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.projections = int(state["steps"]), int(state["projections"])
