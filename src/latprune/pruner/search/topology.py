"""The network as a topology graph of its channel groups, and a GCN over it.

Nodes are the prunable channel groups of a :class:`~latprune.graph.channels.ChannelGraph`;
an edge joins group A and group B where a unit reads A and writes B (the data flow, taken
undirected). A node's attributes: its size, the LUT's latency slope (ms per channel share),
the shape of the units it touches, whether it is a removable block's inner group, and its
current width (the one attribute that changes per candidate).

>>> a = torch.tensor([[0., 1.], [1., 0.]])
>>> normalised_adjacency(a)
tensor([[0.5000, 0.5000],
        [0.5000, 0.5000]])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from latprune.graph.channels import ChannelGraph
from latprune.latency_lut.predict import Predictor

STATIC_FEATURES = 6  # per node, besides its width share: see Topology.of


def normalised_adjacency(adjacency: torch.Tensor) -> torch.Tensor:
    """``Â = D^-1/2 (A + I) D^-1/2``, with ``D`` the degrees of ``A + I``."""
    a = adjacency + torch.eye(adjacency.shape[0], dtype=adjacency.dtype)
    d = a.sum(1).rsqrt()
    return d[:, None] * a * d[None, :]


@dataclass(frozen=True)
class Topology:
    """Groups as nodes (in group id order), their data-flow edges and attributes."""

    adjacency: torch.Tensor   # (N, N), symmetric 0/1, no self loops
    features: torch.Tensor    # (N, STATIC_FEATURES): the attributes that do not depend on the widths
    sizes: tuple[int, ...]    # each group's full width

    @property
    def nodes(self) -> int:
        return len(self.sizes)

    @classmethod
    def of(cls, graph: ChannelGraph, predictor: Predictor, options: dict[int, list[int]]) -> Topology:
        """The topology of ``graph``; latency slopes from ``predictor`` at the narrowest positive option."""
        n = len(graph.groups)
        adjacency = torch.zeros(n, n)
        for u in graph.units:
            if u.in_group is not None and u.out_group is not None and u.in_group != u.out_group:
                adjacency[u.in_group, u.out_group] = adjacency[u.out_group, u.in_group] = 1.0
        full = graph.full_widths()
        full_ms = predictor.predict(full)
        inner = {b.group for b in graph.blocks}
        rows = []
        for g in graph.groups:
            narrow = min(w for w in options[g.id] if w > 0)
            saved_ms = full_ms - predictor.predict({**full, g.id: narrow}) if narrow < g.size else 0.0
            slope = saved_ms / full_ms / max(1e-9, 1 - narrow / g.size)  # share of the model per channel share
            touching = [u for u in graph.units if g.id in (u.in_group, u.out_group)]
            kernel = _mean([math.log2(u.base.kernel[0] * u.base.kernel[1]) for u in touching]) / 4
            area = _mean([math.log2(max(1, math.prod(u.base.in_hw))) for u in touching]) / 10
            rows.append([math.log2(g.size) / 10, slope, kernel, area, len(touching) / 8, float(g.id in inner)])
        return cls(adjacency, torch.tensor(rows, dtype=torch.float32), tuple(g.size for g in graph.groups))

    def inputs(self, widths: dict[int, int]) -> torch.Tensor:
        """The GCN's input at ``widths``: the static features and each group's width share, (N, F)."""
        share = torch.tensor([widths[g] / size for g, size in enumerate(self.sizes)], dtype=torch.float32)
        return torch.cat([self.features, share[:, None]], dim=1)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


class GCN(nn.Module):
    """``H ← relu(Â H W)`` for each layer (the last without relu): each node's embedding mixes its
    neighbours' within as many hops as there are layers."""

    def __init__(self, adjacency: torch.Tensor, in_features: int, hidden: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.register_buffer("a_hat", normalised_adjacency(adjacency))
        dims = [in_features] + [hidden] * layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    @property
    def hidden(self) -> int:
        return self.layers[-1].out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, F) -> (N, hidden)
        for i, layer in enumerate(self.layers):
            x = self.a_hat @ layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x
