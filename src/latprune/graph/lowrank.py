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

Its spatial scheme (Tai et al.; TRP's other scheme) splits a k×k convolution
along its axes instead: the weight read as a (Cout·k) × (Cin·k) matrix becomes
a k×1 convolution Cin→r (the original's stride, padding and dilation along the
height) followed by a 1×k convolution r→Cout (the same along the width). Its
ranks run up to min(Cin, Cout)·k, and it pays below
``Wout·Cout·Cin·k² / (Win·Cin·k + Wout·Cout·k)``. A decision uses one scheme for
every layer (``SCHEMES``; the LUT is profiled with both).

>>> conv = nn.Conv2d(8, 16, 3, padding=1)
>>> pair = factorise(conv, rank=4)
>>> [tuple(m.weight.shape) for m in pair]
[(4, 8, 3, 3), (16, 4, 1, 1)]
>>> [tuple(m.weight.shape) for m in factorise(conv, rank=4, scheme="spatial")]
[(4, 8, 3, 1), (16, 4, 1, 3)]
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch
from torch import nn

from latprune.errors import SpecError
from latprune.graph.units import LayerKey, Unit

CHANNEL, SPATIAL = "channel", "spatial"
SCHEMES = (CHANNEL, SPATIAL)


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise SpecError(f"unknown low-rank scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    return scheme


class Factorised(nn.Sequential):
    """A layer replaced by its rank-``rank`` pair: ``first`` (the original's shape of input,
    ``rank`` outputs) then ``second`` (``rank`` inputs, the original's outputs and bias)."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__(first, second)

    @property
    def rank(self) -> int:
        first = self[0]
        return first.out_channels if isinstance(first, nn.Conv2d) else first.out_features

    @property
    def scheme(self) -> str:
        """``spatial`` where the second layer is a 1×k convolution, else ``channel``."""
        second = self[1]
        return SPATIAL if isinstance(second, nn.Conv2d) and second.kernel_size[1] > 1 else CHANNEL

    def weight_product(self) -> torch.Tensor:
        """The layer's weight as its two factors reconstruct it (the original's shape)."""
        first, second = self[0].weight, self[1].weight
        if self.scheme == SPATIAL:  # W[o, i, h, w] = Σ_r second[o, r, 0, w] · first[r, i, h, 0]
            return torch.einsum("orw,rih->oihw", second[:, :, 0], first[..., 0])
        product = second.flatten(1) @ first.flatten(1)
        return product.reshape(second.shape[0], *first.shape[1:])


def factorisable(module: nn.Module, scheme: str = CHANNEL) -> bool:
    """Whether :func:`factorise` applies: a Linear, or a Conv2d with one group (with a
    kernel wider than one both ways, for the spatial scheme)."""
    if scheme == SPATIAL:
        return isinstance(module, nn.Conv2d) and module.groups == 1 and min(module.kernel_size) > 1
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def max_rank(module: nn.Module, scheme: str = CHANNEL) -> int:
    """The rank of the layer's weight matrix at most: ``min(Cout, Cin·k·k)``, or
    ``min(Cout·kw, Cin·kh)`` in the spatial scheme."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        if scheme == SPATIAL:
            return min(module.out_channels * kw, module.in_channels * kh)
        return min(module.out_channels, module.in_channels * kh * kw)
    if isinstance(module, nn.Linear):
        return min(module.out_features, module.in_features)
    raise SpecError(f"a {type(module).__name__} has no rank; only Conv2d and Linear layers factorise")


def break_even_rank(cin: int, cout: int, kernel: Sequence[int] = (1, 1), scheme: str = CHANNEL,
                    widths: tuple[int, int] = (1, 1)) -> float:
    """The rank below which the pair does fewer multiply-accumulates than the layer;
    the spatial scheme's also depends on the input's and output's ``widths`` (its first
    layer runs at every input column)."""
    kh, kw = kernel
    if scheme == SPATIAL:
        win, wout = widths
        return wout * cout * cin * kh * kw / (win * cin * kh + wout * cout * kw)
    fan_in = cin * kh * kw
    return cout * fan_in / (fan_in + cout)


def break_even_of(key: LayerKey, scheme: str = CHANNEL) -> float:
    """:func:`break_even_rank` of the unit ``key``."""
    widths = _widths_of(key) if key.op == "conv" and key.in_hw else (1, 1)
    return break_even_rank(key.cin, key.cout, key.kernel, scheme, widths)


def _widths_of(key: LayerKey) -> tuple[int, int]:
    """A convolution key's input and output width (its last spatial dimension)."""
    return key.in_hw[-1], key.out_hw[-1]


def as_matrix(weight: torch.Tensor, scheme: str = CHANNEL) -> torch.Tensor:
    """A layer's weight as the matrix its rank is of (differentiable): Cout × (Cin·k·k), or in
    the spatial scheme (Cout·kw) × (Cin·kh), rows (o, w) and columns (i, h)."""
    if scheme == SPATIAL:
        cout, cin, kh, kw = weight.shape
        return weight.permute(0, 3, 1, 2).reshape(cout * kw, cin * kh)
    return weight.flatten(1)


def weight_matrix(module: nn.Module, scheme: str = CHANNEL) -> torch.Tensor:
    """The layer's weight as the matrix its rank is of (:func:`as_matrix`), in float64, detached."""
    return as_matrix(module.weight.detach().double(), scheme)


def singular_values(module: nn.Module, scheme: str = CHANNEL) -> torch.Tensor:
    """The singular values of the layer's weight matrix, largest first."""
    return torch.linalg.svdvals(weight_matrix(module, scheme)).float()


def _check_rank(module: nn.Module, rank: int, name: str, scheme: str) -> None:
    if not factorisable(module, check_scheme(scheme)):
        if scheme == SPATIAL and factorisable(module):
            raise SpecError(f"layer {name!r} has no k×k kernel to split into k×1 and 1×k; the spatial scheme "
                            "factorises convolutions with kernels wider than one both ways")
        raise SpecError(f"layer {name!r} is a {type(module).__name__}"
                        f"{' with groups' if isinstance(module, nn.Conv2d) else ''}; only Linear layers and "
                        "Conv2d layers with one group factorise")
    top = max_rank(module, scheme)
    if not 0 < rank <= top:
        area = "outputs × kernel width and inputs × kernel height" if scheme == SPATIAL else \
            "outputs and inputs × kernel area"
        raise SpecError(f"rank {rank} of layer {name!r} is outside 1..{top} (min of its {area})")


def factorise(module: nn.Module, rank: int, name: str = "layer", scheme: str = CHANNEL) -> Factorised:
    """The rank-``rank`` pair of ``module`` from its truncated SVD (the best rank-``rank``
    approximation in the Frobenius norm; exact where ``rank`` reaches the weight's rank)."""
    _check_rank(module, rank, name, scheme)
    u, s, vh = torch.linalg.svd(weight_matrix(module, scheme), full_matrices=False)
    root = s[:rank].sqrt()
    left = (u[:, :rank] * root).to(module.weight.dtype)               # rows × r
    right = (root[:, None] * vh[:rank]).to(module.weight.dtype)       # r × columns
    first, second = _pair_layers(module, rank, scheme)
    device = module.weight.device
    first.to(device)
    second.to(device)
    with torch.no_grad():
        if scheme == SPATIAL:  # rows (o, w), columns (i, h)
            cout, cin, kh, kw = module.weight.shape
            first.weight.copy_(right.reshape(rank, cin, kh, 1))
            second.weight.copy_(left.reshape(cout, kw, rank).permute(0, 2, 1).unsqueeze(2))
        else:
            first.weight.copy_(right.reshape(first.weight.shape))
            second.weight.copy_(left.reshape(second.weight.shape))
        if module.bias is not None:
            second.bias.copy_(module.bias)
    return Factorised(first, second).train(module.training)


def _pair_layers(module: nn.Module, rank: int, scheme: str) -> tuple[nn.Module, nn.Module]:
    """The two layers of ``module``'s rank-``rank`` pair, uninitialised."""
    bias = module.bias is not None
    if isinstance(module, nn.Linear):
        return nn.Linear(module.in_features, rank, bias=False), nn.Linear(rank, module.out_features, bias=bias)
    if scheme == SPATIAL:
        (kh, kw), (sh, sw), (dh, dw) = module.kernel_size, module.stride, module.dilation
        ph, pw = module.padding if isinstance(module.padding, tuple) else (module.padding, module.padding)
        first = nn.Conv2d(module.in_channels, rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1), bias=False,
                          padding_mode=module.padding_mode)
        return first, nn.Conv2d(rank, module.out_channels, (1, kw), (1, sw), (0, pw), (1, dw), bias=bias,
                                padding_mode=module.padding_mode)
    first = nn.Conv2d(module.in_channels, rank, module.kernel_size, module.stride, module.padding,
                      module.dilation, bias=False, padding_mode=module.padding_mode)
    return first, nn.Conv2d(rank, module.out_channels, 1, bias=bias)


def factorise_(model: nn.Module, ranks: dict[str, int], scheme: str = CHANNEL) -> nn.Module:
    """Replace each layer ``name`` of ``ranks`` by its rank-``ranks[name]`` :class:`Factorised` pair, in place."""
    for name, rank in ranks.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise SpecError(f"the model has no layer {name!r} to factorise; the plan was made for another "
                            "model") from None
        model.set_submodule(name, factorise(module, int(rank), name, scheme))
    return model


def project_(module: nn.Module, rank: int, scheme: str = CHANNEL) -> None:
    """Replace the layer's weight in place by its best rank-``rank`` approximation (TRP's
    periodic projection: the layer keeps its shape; :func:`factorise` checks the rank)."""
    with torch.no_grad():
        module.weight.copy_(factorise(module, rank, scheme=scheme).weight_product())


def pair_keys(key: LayerKey, rank: int, scheme: str = CHANNEL) -> tuple[LayerKey, LayerKey]:
    """The LUT keys of the rank-``rank`` pair of the unit ``key``: the first layer (the
    original's input, nothing fused after it) and the second (1×1, 1×k or linear, carrying
    the original's bias and whatever the runtime fuses after it)."""
    if key.op not in ("conv", "linear") or key.groups != 1:
        raise SpecError(f"a {key.op} unit with {key.groups} groups does not factorise")
    first = replace(key, cout=rank, bias=False, bn=False, add=False, act="")
    if key.op == "linear":
        return first, replace(key, cin=rank)
    if scheme == SPATIAL:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = key.kernel, key.stride, key.padding, key.dilation
        first = replace(first, kernel=(kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1))
        second = replace(key, cin=rank, kernel=(1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw),
                         in_hw=(first.out_hw[0], key.in_hw[1]))
        return first, second
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


def pays(key: LayerKey, rank: int, scheme: str = CHANNEL) -> bool:
    """Whether the rank-``rank`` pair of the unit ``key`` does fewer multiply-accumulates
    than the unit: factorising is considered there, and nowhere else."""
    if key.op not in ("conv", "linear") or key.groups != 1:
        return False
    if scheme == SPATIAL and (key.op != "conv" or min(key.kernel) < 2):
        return False
    return 0 < rank < break_even_of(key, scheme)


def rank_grid(key: LayerKey, align: int = 1, fractions: Sequence[float] = RANK_FRACTIONS,
              scheme: str = CHANNEL) -> list[int]:
    """The ranks offered to the unit ``key`` (at full width): ``fractions`` of its break-even
    rank, in multiples of ``align`` where the break-even rank is wider than one; empty where
    no rank pays."""
    even = break_even_of(key, scheme)
    step = align if even > 2 * align else 1
    ranks = {max(step, step * round(even * f / step)) for f in fractions}
    return sorted(r for r in ranks if pays(key, r, scheme))


def split_ranks(widths: dict[int, int]) -> tuple[dict[int, int], dict[int, int]]:
    """``widths`` as (channel group widths, ranks by unit index)."""
    groups = {g: w for g, w in widths.items() if not is_rank_axis(g)}
    return groups, {unit_index(g): w for g, w in widths.items() if is_rank_axis(g)}


def applicable(model: nn.Module, ranks: dict[str, int], scheme: str = CHANNEL,
               columns: dict[str, tuple[int, int]] | None = None) -> dict[str, int]:
    """The entries of ``ranks`` that ``model`` (slimmed) can take and that pay there: the layer
    exists (its block was not removed) and the rank is below its break-even rank (the spatial
    scheme's at the layer's input and output widths, ``columns``: :func:`unit_columns`)."""
    if scheme == SPATIAL and columns is None:
        raise SpecError("the spatial scheme's break-even rank needs each convolution's input and output width")
    kept = {}
    for name, rank in ranks.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if not factorisable(module, scheme):
            continue
        if isinstance(module, nn.Conv2d):
            even = break_even_rank(module.in_channels, module.out_channels, module.kernel_size, scheme,
                                   (columns or {}).get(name, (1, 1)))
        else:
            even = break_even_rank(module.in_features, module.out_features)
        if 0 < rank < even:
            kept[name] = rank
    return kept


def unit_columns(units: Sequence[Unit]) -> dict[str, tuple[int, int]]:
    """Each convolution unit's input and output width (slimming changes neither), by name."""
    return {u.name: _widths_of(u.base) for u in units if u.base.op == "conv" and u.base.in_hw}


def rank_options(units: Sequence[Unit], model: nn.Module, align: int = 1, scheme: str = CHANNEL
                 ) -> dict[int, list[int]]:
    """Rank options of every unit that a factorisation can speed up, by rank axis: its
    :func:`rank_grid`, then its layer's :func:`max_rank` (the layer left whole)."""
    options = {}
    for i, unit in enumerate(units):
        if unit.base.op not in ("conv", "linear"):  # attentions and concatenations do not factorise
            continue
        module = model.get_submodule(unit.name)
        ranks = rank_grid(unit.base, align, scheme=scheme) if factorisable(module, scheme) else []
        if ranks:
            options[rank_axis(i)] = ranks + [max_rank(module, scheme)]
    return options


def ranks_of(model: nn.Module) -> dict[str, int]:
    """The rank of every :class:`Factorised` layer of ``model``, by name."""
    return {name: m.rank for name, m in model.named_modules() if isinstance(m, Factorised)}


def scheme_of(model: nn.Module) -> str:
    """The scheme of ``model``'s :class:`Factorised` layers (``channel`` where it has none)."""
    schemes = {m.scheme for m in model.modules() if isinstance(m, Factorised)}
    return schemes.pop() if len(schemes) == 1 else CHANNEL
