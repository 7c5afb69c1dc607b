"""Low-rank factorisation: one layer becomes two thinner ones through a rank ``r``.

Trained Rank Pruning's channel-wise scheme (Xu et al.): a k×k convolution
Cin→Cout, its weight read as a Cout × (Cin·k·k) matrix ``W = U S Vᵀ``, becomes
a k×k convolution Cin→r (``√S Vᵀ``, the original's stride, padding and
dilation) followed by a 1×1 convolution r→Cout (``U √S``, the original's bias);
a Linear becomes two Linears the same way. The pair is physical, so an export
holds two real layers. It saves work only below the break-even rank
``Cout·Cin·k² / (Cin·k² + Cout)``, and whether it saves *time* is the LUT's
call: the pair is two kernels, and on many runtimes the second launch eats the
saving. So each factorisable unit's pair is keyed (:func:`pair_keys`) and timed
like any unit.

>>> conv = nn.Conv2d(8, 16, 3, padding=1)
>>> pair = factorise(conv, rank=4)
>>> [tuple(m.weight.shape) for m in pair]
[(4, 8, 3, 3), (16, 4, 1, 1)]
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch
from torch import nn

from latprune.errors import SpecError
from latprune.graph.units import LayerKey, Unit


class Factorised(nn.Sequential):
    """A layer replaced by its rank-``rank`` pair: ``first`` (the original's shape of input,
    ``rank`` outputs) then ``second`` (``rank`` inputs, the original's outputs and bias)."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__(first, second)

    @property
    def rank(self) -> int:
        first = self[0]
        return first.out_channels if isinstance(first, nn.Conv2d) else first.out_features

    def weight_product(self) -> torch.Tensor:
        """The layer's weight as its two factors reconstruct it (the original's shape)."""
        first, second = self[0].weight, self[1].weight
        product = second.flatten(1) @ first.flatten(1)
        return product.reshape(second.shape[0], *first.shape[1:])


def factorisable(module: nn.Module) -> bool:
    """Whether :func:`factorise` applies: a Linear, or a Conv2d with one group."""
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def max_rank(module: nn.Module) -> int:
    """The rank of the layer's weight matrix at most: ``min(Cout, Cin·k·k)``."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return min(module.out_channels, module.in_channels * kh * kw)
    if isinstance(module, nn.Linear):
        return min(module.out_features, module.in_features)
    raise SpecError(f"a {type(module).__name__} has no rank; only Conv2d and Linear layers factorise")


def break_even_rank(cin: int, cout: int, kernel: Sequence[int] = (1, 1)) -> float:
    """The rank below which the pair does fewer multiply-accumulates than the layer."""
    fan_in = cin * kernel[0] * kernel[1]
    return cout * fan_in / (fan_in + cout)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's weight as the Cout × (Cin·k·k) matrix its rank is of, in float64, detached."""
    return module.weight.detach().flatten(1).double()


def singular_values(module: nn.Module) -> torch.Tensor:
    """The singular values of the layer's weight matrix, largest first."""
    return torch.linalg.svdvals(weight_matrix(module)).float()


def _check_rank(module: nn.Module, rank: int, name: str) -> None:
    if not factorisable(module):
        raise SpecError(f"layer {name!r} is a {type(module).__name__}"
                        f"{' with groups' if isinstance(module, nn.Conv2d) else ''}; only Linear layers and "
                        "Conv2d layers with one group factorise")
    top = max_rank(module)
    if not 0 < rank <= top:
        raise SpecError(f"rank {rank} of layer {name!r} is outside 1..{top} (min of its outputs and "
                        "inputs × kernel area)")


def factorise(module: nn.Module, rank: int, name: str = "layer") -> Factorised:
    """The rank-``rank`` pair of ``module`` from its truncated SVD (the best rank-``rank``
    approximation in the Frobenius norm; exact where ``rank`` reaches the weight's rank)."""
    _check_rank(module, rank, name)
    u, s, vh = torch.linalg.svd(weight_matrix(module), full_matrices=False)
    root = s[:rank].sqrt()
    left = (u[:, :rank] * root).to(module.weight.dtype)               # Cout × r
    right = (root[:, None] * vh[:rank]).to(module.weight.dtype)       # r × (Cin·k·k)
    bias = module.bias is not None
    if isinstance(module, nn.Conv2d):
        first: nn.Module = nn.Conv2d(module.in_channels, rank, module.kernel_size, module.stride, module.padding,
                                     module.dilation, bias=False, padding_mode=module.padding_mode)
        second: nn.Module = nn.Conv2d(rank, module.out_channels, 1, bias=bias)
    else:
        first, second = nn.Linear(module.in_features, rank, bias=False), nn.Linear(rank, module.out_features, bias=bias)
    device = module.weight.device
    first.to(device)
    second.to(device)
    with torch.no_grad():
        first.weight.copy_(right.reshape(first.weight.shape))
        second.weight.copy_(left.reshape(second.weight.shape))
        if bias:
            second.bias.copy_(module.bias)
    return Factorised(first, second).train(module.training)


def factorise_(model: nn.Module, ranks: dict[str, int]) -> nn.Module:
    """Replace each layer ``name`` of ``ranks`` by its rank-``ranks[name]`` :class:`Factorised` pair, in place."""
    for name, rank in ranks.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise SpecError(f"the model has no layer {name!r} to factorise; the plan was made for another "
                            "model") from None
        model.set_submodule(name, factorise(module, int(rank), name))
    return model


def project_(module: nn.Module, rank: int) -> None:
    """Replace the layer's weight in place by its best rank-``rank`` approximation (TRP's
    periodic projection: the layer keeps its shape; :func:`factorise` checks the rank)."""
    with torch.no_grad():
        module.weight.copy_(factorise(module, rank).weight_product())


def pair_keys(key: LayerKey, rank: int) -> tuple[LayerKey, LayerKey]:
    """The LUT keys of the rank-``rank`` pair of the unit ``key``: the first layer (the
    original's input and kernel, nothing fused after it) and the second (1×1 or linear,
    carrying the original's bias and whatever the runtime fuses after it)."""
    if key.op not in ("conv", "linear") or key.groups != 1:
        raise SpecError(f"a {key.op} unit with {key.groups} groups does not factorise")
    first = replace(key, cout=rank, bias=False, bn=False, add=False, act="")
    if key.op == "linear":
        return first, replace(key, cin=rank)
    second = replace(key, cin=rank, kernel=(1, 1), stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                     in_hw=key.out_hw)
    return first, second


# -- ranks in a decision -------------------------------------------------------------------------
# A rank choice rides in a widths dict beside the channel groups, under an axis id of its own
# (RANK_AXIS + the unit's index in ChannelGraph.units), so the knapsack weighs ranks and widths
# in one budget. Its options are ranks, ascending, then ``max_rank`` of the base layer: the
# layer left whole.
RANK_AXIS = 1_000_000
RANK_FRACTIONS = (0.125, 0.25, 0.5, 0.75)  # of the break-even rank at full width


def rank_axis(unit_index: int) -> int:
    return RANK_AXIS + unit_index


def is_rank_axis(axis: int) -> bool:
    return axis >= RANK_AXIS


def unit_index(axis: int) -> int:
    """The index in ``ChannelGraph.units`` of the unit a rank axis belongs to."""
    return axis - RANK_AXIS


def pays(key: LayerKey, rank: int) -> bool:
    """Whether the rank-``rank`` pair of the unit ``key`` does fewer multiply-accumulates
    than the unit: factorising is considered there, and nowhere else."""
    return key.op in ("conv", "linear") and key.groups == 1 and 0 < rank < break_even_rank(key.cin, key.cout,
                                                                                              key.kernel)


def rank_grid(key: LayerKey, align: int = 1, fractions: Sequence[float] = RANK_FRACTIONS) -> list[int]:
    """The ranks offered to the unit ``key`` (at full width): ``fractions`` of its break-even
    rank, in multiples of ``align`` where the break-even rank is wider than one; empty where
    no rank pays."""
    even = break_even_rank(key.cin, key.cout, key.kernel)
    step = align if even > 2 * align else 1
    ranks = {max(step, step * round(even * f / step)) for f in fractions}
    return sorted(r for r in ranks if pays(key, r))


def split_ranks(widths: dict[int, int]) -> tuple[dict[int, int], dict[int, int]]:
    """``widths`` as (channel group widths, ranks by unit index)."""
    groups = {g: w for g, w in widths.items() if not is_rank_axis(g)}
    return groups, {unit_index(g): w for g, w in widths.items() if is_rank_axis(g)}


def applicable(model: nn.Module, ranks: dict[str, int]) -> dict[str, int]:
    """The entries of ``ranks`` that ``model`` (slimmed) can take and that pay there: the layer
    exists (its block was not removed) and the rank is below its break-even rank."""
    kept = {}
    for name, rank in ranks.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if not factorisable(module):
            continue
        if isinstance(module, nn.Conv2d):
            even = break_even_rank(module.in_channels, module.out_channels, module.kernel_size)
        else:
            even = break_even_rank(module.in_features, module.out_features)
        if 0 < rank < even:
            kept[name] = rank
    return kept


def rank_options(units: Sequence[Unit], model: nn.Module, align: int = 1) -> dict[int, list[int]]:
    """Rank options of every unit that a factorisation can speed up, by rank axis: its
    :func:`rank_grid`, then its layer's :func:`max_rank` (the layer left whole)."""
    options = {}
    for i, unit in enumerate(units):
        module = model.get_submodule(unit.name)
        ranks = rank_grid(unit.base, align) if factorisable(module) else []
        if ranks:
            options[rank_axis(i)] = ranks + [max_rank(module)]
    return options


def ranks_of(model: nn.Module) -> dict[str, int]:
    """The rank of every :class:`Factorised` layer of ``model``, by name."""
    return {name: m.rank for name, m in model.named_modules() if isinstance(m, Factorised)}
