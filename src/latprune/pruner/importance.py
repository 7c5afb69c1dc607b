"""Channel importance per group.

``taylor`` (Molchanov et al. 2019): the first-order change of the loss when a
channel is removed. Removing channel c of a group zeroes the output of every
producer of c (the BNs, or convs without a BN, that write into it), so per
batch the estimate is ``(Σ_producers Σ_params θ_c · ∂L/∂θ_c)²``, averaged over
batches. ``taylor2`` adds the diagonal second-order term from the squared
gradient (Fisher approximation). ``l1`` is the producers' weight magnitude,
for models without data.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from latprune.errors import SpecError
from latprune.pruner.graph import ChannelGraph

METHODS = ("taylor", "taylor2", "l1")


def _producer_params(module: nn.Module) -> list[torch.Tensor]:
    params = [module.weight]
    if getattr(module, "bias", None) is not None:
        params.append(module.bias)
    return params


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    """Sum every dim but the first (output channels)."""
    return t.reshape(t.shape[0], -1).sum(1) if t.dim() > 1 else t


def l1_importance(graph: ChannelGraph) -> dict[int, np.ndarray]:
    scores = {}
    with torch.no_grad():
        for g in graph.groups:
            total = torch.zeros(g.size)
            for name in g.producers:
                total += _per_channel(graph.module(name).weight.abs())
            scores[g.id] = total.numpy()
    return scores


def taylor_importance(graph: ChannelGraph, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                      num_batches: int, order: int = 1, progress: bool = True) -> dict[int, np.ndarray]:
    """Accumulate Taylor scores of every group over ``num_batches`` batches."""
    model = graph.model
    model.eval()  # BN statistics stay fixed: the scores describe the deployed function
    scores = {g.id: torch.zeros(g.size, dtype=torch.float64) for g in graph.groups}
    seen = 0
    for x, y in tqdm(batches, total=num_batches, desc="taylor importance", unit="batch",
                     disable=not progress or None):
        if seen >= num_batches:
            break
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for g in graph.groups:
                first = torch.zeros(g.size, dtype=torch.float64)
                second = torch.zeros(g.size, dtype=torch.float64)
                for name in g.producers:
                    for p in _producer_params(graph.module(name)):
                        if p.grad is None:
                            continue
                        first += _per_channel(p * p.grad).double()
                        if order == 2:
                            second += _per_channel((p * p.grad) ** 2).double()
                # -ΔL ≈ Σθg - ½ Σ(θg)²  (diagonal Fisher for the Hessian)
                delta = first - 0.5 * second if order == 2 else first
                scores[g.id] += delta**2
        seen += 1
    model.zero_grad(set_to_none=True)
    if seen == 0:
        raise SpecError("no data batch reached the importance estimate; check --data")
    return {g: (s / seen).numpy() for g, s in scores.items()}


def importance(method: str, graph: ChannelGraph, batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None,
               num_batches: int, progress: bool = True) -> dict[int, np.ndarray]:
    if method not in METHODS:
        raise SpecError(f"unknown importance {method!r}; known: {', '.join(METHODS)}")
    if method == "l1":
        return l1_importance(graph)
    if batches is None:
        raise SpecError(f"importance {method!r} needs data: pass --data, or use --importance l1")
    return taylor_importance(graph, batches, num_batches, order=2 if method == "taylor2" else 1, progress=progress)
