"""Transformer modules as latprune prunes them: attention by whole heads, apart from the
embedding; Swin's patch merging as one layer.

``nn.MultiheadAttention`` ties its inner width to the embedding (``num_heads ×
head_dim == embed_dim``), so removing a head would remove embedding channels
too, and Torch-Pruning cannot see heads through its reshapes. latprune
rewrites each self-attention it can into :class:`Attention` (the same
function, the same weights): a ``qkv`` projection to ``3 × heads × head_dim``,
scaled-dot-product attention, and a ``proj`` back to the embedding. Its
heads are one channel group of their own (a gate per head acts on
:class:`Heads`, the per-head output), and to Torch-Pruning the module is one
leaf whose input and output channels are the embedding
(:class:`AttentionPruner`), so the residual stream stays one group across
every layer, as a ResNet's highway does. Swin's patch merging concatenates four
strided views of a map and normalises over the four copies of its channels;
as :class:`PatchMerge`, another leaf, its copies lose channels together.

>>> mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
>>> att = SelfAttention.from_mha(mha).eval()
>>> x = torch.randn(1, 5, 8)
>>> torch.allclose(mha(x, x, x, need_weights=False)[0], att(x, x, x, need_weights=False)[0], atol=1e-6)
True
"""

from __future__ import annotations

import math
from typing import Sequence, TypeVar

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from latprune.graph.leaf import leaf
from latprune.graph.units import LayerKey


class Heads(nn.Identity):
    """The per-head attention output, ``(batch, heads, tokens, head_dim)``: where a head's gate acts."""


class Attention(nn.Module):
    """``proj(softmax(q kᵀ / √d) v)`` over ``num_heads`` heads of width ``head_dim``."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, bias: bool = True,
                 proj_bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.dropout = num_heads, head_dim, dropout
        self.qkv = nn.Linear(embed_dim, 3 * num_heads * head_dim, bias=bias)
        self.heads = Heads()
        self.proj = nn.Linear(num_heads * head_dim, embed_dim, bias=proj_bias)

    def attend(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Attention over the tokens of ``x`` ``(batch, tokens, embed)``, ``bias`` added to the scores."""
        b, s, _ = x.shape
        q, k, v = self._project(x).reshape(b, s, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k, scale = self._query_key(q, k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0,
                                             scale=scale)
        return self.proj(self.heads(out).transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim))

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """Queries, keys and values of every head, ``(batch, tokens, 3 × heads × head_dim)``."""
        return self.qkv(x)

    def _query_key(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        """Queries and keys as the scores take them, and the scores' scale (None: 1/√head_dim)."""
        return q, k, None

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise NotImplementedError("latprune's Attention computes self-attention without masks")
        return leaf(self.attend, x)

    def token_shape(self, in_shape: Sequence[int]) -> tuple[int, int]:
        """(batch, tokens) of one attention over an input of ``in_shape`` (its LUT key's)."""
        tokens = 1
        for d in in_shape[1:-1]:
            tokens *= d
        return in_shape[0], tokens

    # -- heads ------------------------------------------------------------------------------------
    def _rows(self, heads: Sequence[int]) -> torch.Tensor:
        """The qkv rows of ``heads`` (in q, then k, then v)."""
        d, inner = self.head_dim, self.num_heads * self.head_dim
        return torch.tensor([part * inner + h * d + i for part in range(3) for h in heads for i in range(d)],
                            dtype=torch.long)

    def _columns(self, heads: Sequence[int]) -> torch.Tensor:
        d = self.head_dim
        return torch.tensor([h * d + i for h in heads for i in range(d)], dtype=torch.long)

    def keep_heads(self, heads: Sequence[int]) -> None:
        """Keep only ``heads`` (indices into the current heads), in place."""
        heads = sorted(int(h) for h in heads)
        rows, cols = self._rows(heads), self._columns(heads)
        qkv, proj = self.qkv, self.proj
        new_qkv = nn.Linear(qkv.in_features, len(rows), bias=qkv.bias is not None)
        new_proj = nn.Linear(len(cols), proj.out_features, bias=proj.bias is not None)
        with torch.no_grad():
            new_qkv.weight.copy_(qkv.weight[rows])
            if qkv.bias is not None:
                new_qkv.bias.copy_(qkv.bias[rows])
            new_proj.weight.copy_(proj.weight[:, cols])
            if proj.bias is not None:
                new_proj.bias.copy_(proj.bias)
        self.qkv = new_qkv.to(qkv.weight.device, qkv.weight.dtype)
        self.proj = new_proj.to(proj.weight.device, proj.weight.dtype)
        self.num_heads = len(heads)
        self._keep_head_parameters(heads)

    def _keep_head_parameters(self, heads: list[int]) -> None:
        """Keep the per-head parameters of ``heads`` beside the projections (none here)."""

    def zero_heads(self, heads: Sequence[int]) -> None:
        """Zero the values of ``heads``: their output is then zero, as if removed."""
        v = self._rows(heads)[2 * len(heads) * self.head_dim:]
        with torch.no_grad():
            self.qkv.weight[v] = 0
            if self.qkv.bias is not None:
                self.qkv.bias[v] = 0

    def head_magnitude(self) -> torch.Tensor:
        """Each head's weight magnitude: its qkv rows' and proj columns' L1 (the ``l1`` importance)."""
        with torch.no_grad():
            rows = self.qkv.weight.abs().sum(1).reshape(3, self.num_heads, self.head_dim).sum((0, 2))
            cols = self.proj.weight.abs().sum(0).reshape(self.num_heads, self.head_dim).sum(1)
        return rows + cols


class SelfAttention(Attention):
    """:class:`Attention` called as ``nn.MultiheadAttention`` is in self-attention
    (``attn(x, x, x, need_weights=False)`` returning ``(output, None)``), so it
    replaces one without touching the code that calls it (torchvision's ViT)."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, bias: bool = True,
                 proj_bias: bool = True, dropout: float = 0.0, batch_first: bool = True) -> None:
        super().__init__(embed_dim, num_heads, head_dim, bias, proj_bias, dropout)
        self.batch_first = batch_first

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None,  # type: ignore[override]
                value: torch.Tensor | None = None, need_weights: bool = False,
                **kwargs: object) -> tuple[torch.Tensor, None]:
        if (key is not None and key is not query) or (value is not None and value is not query) or need_weights \
                or any(v is not None for v in kwargs.values() if not isinstance(v, bool)):
            raise NotImplementedError("latprune's SelfAttention computes self-attention without masks or weights")
        x = query if self.batch_first else query.transpose(0, 1)
        out = leaf(self.attend, x)
        return (out if self.batch_first else out.transpose(0, 1)), None

    def token_shape(self, in_shape: Sequence[int]) -> tuple[int, int]:
        return super().token_shape(in_shape if self.batch_first else (in_shape[1], in_shape[0], *in_shape[2:]))

    @staticmethod
    def convertible(mha: nn.MultiheadAttention) -> bool:
        return (mha._qkv_same_embed_dim and mha.in_proj_weight is not None and mha.bias_k is None
                and not mha.add_zero_attn)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> SelfAttention:
        e, h = mha.embed_dim, mha.num_heads
        att = cls(e, h, e // h, bias=mha.in_proj_bias is not None, proj_bias=mha.out_proj.bias is not None,
                  dropout=mha.dropout, batch_first=mha.batch_first)
        with torch.no_grad():
            att.qkv.weight.copy_(mha.in_proj_weight)
            if mha.in_proj_bias is not None:
                att.qkv.bias.copy_(mha.in_proj_bias)
            att.proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                att.proj.bias.copy_(mha.out_proj.bias)
        return att.to(mha.in_proj_weight.device, mha.in_proj_weight.dtype).train(mha.training)


_W = TypeVar("_W", bound="WindowAttention")


class WindowAttention(Attention):
    """Swin's (shifted) window attention (Liu et al. 2021; torchvision's
    ``ShiftedWindowAttention``): attention inside windows of ``window_size`` tokens of a
    ``(batch, height, width, embed)`` map, cyclically shifted by ``shift_size``, with a learned
    relative position bias per head."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, window_size: Sequence[int],
                 shift_size: Sequence[int], bias: bool = True, proj_bias: bool = True, dropout: float = 0.0,
                 proj_dropout: float = 0.0) -> None:
        super().__init__(embed_dim, num_heads, head_dim, bias, proj_bias, dropout)
        self.window_size, self.shift_size, self.proj_dropout = list(window_size), list(shift_size), proj_dropout
        wh, ww = self.window_size
        coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
        index = (relative[:, :, 0] + wh - 1) * (2 * ww - 1) + relative[:, :, 1] + ww - 1
        self.register_buffer("relative_position_index", index.flatten())
        self._position_parameters()

    def _position_parameters(self) -> None:
        """The learned relative position bias: a table of one value per relative offset and head."""
        wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), self.num_heads))

    def _position_table(self) -> torch.Tensor:
        """The bias of each relative offset and head, ``(offsets, heads)``."""
        return self.relative_position_bias_table

    def _position_bias(self) -> torch.Tensor:
        """The bias added to each head's scores in a window, ``(1, heads, n, n)`` for ``n`` tokens."""
        n = self.window_size[0] * self.window_size[1]
        return self._position_table()[self.relative_position_index].view(n, n, -1).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return leaf(self._windowed, x)

    def _geometry(self, h: int, w: int) -> tuple[int, int, list[int]]:
        """Padded height and width, and the shift (none where one window covers the map)."""
        wh, ww = self.window_size
        ph, pw = h + (wh - h % wh) % wh, w + (ww - w % ww) % ww
        return ph, pw, [0 if wh >= ph else self.shift_size[0], 0 if ww >= pw else self.shift_size[1]]

    def token_shape(self, in_shape: Sequence[int]) -> tuple[int, int]:
        ph, pw, _ = self._geometry(in_shape[1], in_shape[2])
        wh, ww = self.window_size
        return in_shape[0] * (ph // wh) * (pw // ww), wh * ww

    def _windowed(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        (wh, ww), (ph, pw, shift) = self.window_size, self._geometry(h, w)
        x = F.pad(x, (0, 0, 0, pw - w, 0, ph - h))
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        windows = x.view(b, ph // wh, wh, pw // ww, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, c)
        bias = self._position_bias()  # (1, heads, n, n)
        if sum(shift) > 0:
            bias = (bias + self._shift_mask(ph, pw, shift).unsqueeze(1)).repeat(b, 1, 1, 1)
        out = F.dropout(self.attend(windows, bias), p=self.proj_dropout, training=self.training)
        out = out.view(b, ph // wh, pw // ww, wh, ww, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, -1)
        if sum(shift) > 0:
            out = torch.roll(out, shifts=(shift[0], shift[1]), dims=(1, 2))
        return out[:, :h, :w, :].contiguous()

    def _shift_mask(self, ph: int, pw: int, shift: list[int]) -> torch.Tensor:
        """(windows, n, n): -100 between tokens that the cyclic shift brought from different regions."""
        (wh, ww), region = self.window_size, torch.zeros(ph, pw, device=self.relative_position_index.device)
        count = 0
        for hs in ((0, -wh), (-wh, -shift[0]), (-shift[0], None)):
            for ws in ((0, -ww), (-ww, -shift[1]), (-shift[1], None)):
                region[hs[0]:hs[1], ws[0]:ws[1]] = count
                count += 1
        region = region.view(ph // wh, wh, pw // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
        mask = region.unsqueeze(1) - region.unsqueeze(2)
        return mask.masked_fill(mask != 0, -100.0).to(self.qkv.weight.dtype)

    def _keep_head_parameters(self, heads: list[int]) -> None:
        self.relative_position_bias_table = nn.Parameter(self.relative_position_bias_table.detach()[:, heads].clone())

    def _taken_over(self: _W, qkv: nn.Linear, proj: nn.Linear, table: torch.Tensor, training: bool) -> _W:
        """This attention with another's projections and relative position bias table, on their device."""
        self.qkv.load_state_dict(qkv.state_dict())
        self.proj.load_state_dict(proj.state_dict())
        with torch.no_grad():
            self.relative_position_bias_table.copy_(table)
        return self.to(qkv.weight.device, qkv.weight.dtype).train(training)

    @classmethod
    def from_torchvision(cls, module: nn.Module) -> WindowAttention:
        """The same attention as torchvision's ``ShiftedWindowAttention`` (``ShiftedWindowAttentionV2``
        for :class:`WindowAttentionV2`), its weights taken over."""
        qkv, proj = module.qkv, module.proj
        heads = module.num_heads
        att = cls(qkv.in_features, heads, qkv.in_features // heads, module.window_size, module.shift_size,
                  bias=qkv.bias is not None, proj_bias=proj.bias is not None, dropout=module.attention_dropout,
                  proj_dropout=module.dropout)
        att.load_state_dict(module.state_dict())
        return att.to(qkv.weight.device, qkv.weight.dtype).train(module.training)


class PartitionedWindowAttention(WindowAttention):
    """Swin's window attention over windows already cut, ``(batch × windows, tokens, embed)``, with
    the shifted windows' mask ``(windows, tokens, tokens)`` passed in (timm's ``WindowAttention``,
    called by its Swin block)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        return leaf(lambda windows: self._masked(windows, mask), x)

    def _masked(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bias = self._position_bias()  # (1, heads, n, n)
        if mask is not None:  # windows batch-major: window i of the batch takes mask i % windows
            bias = (bias + mask.unsqueeze(1).to(bias.dtype)).repeat(x.shape[0] // mask.shape[0], 1, 1, 1)
        return self.attend(x, bias)

    def token_shape(self, in_shape: Sequence[int]) -> tuple[int, int]:
        return in_shape[0], in_shape[1]

    @classmethod
    def from_timm(cls, module: nn.Module) -> PartitionedWindowAttention:
        """The same attention as timm's ``WindowAttention``, its weights taken over."""
        qkv, proj = module.qkv, module.proj
        heads = module.num_heads
        att = cls(proj.out_features, heads, qkv.out_features // 3 // heads, module.window_size, (0, 0),
                  bias=qkv.bias is not None, proj_bias=proj.bias is not None, dropout=float(module.attn_drop.p),
                  proj_dropout=float(module.proj_drop.p))
        return att._taken_over(qkv, proj, module.relative_position_bias_table, module.training)


class WindowAttentionV2(WindowAttention):
    """Swin V2's window attention (Liu et al. 2022; torchvision's ``ShiftedWindowAttentionV2``):
    cosine attention, each head's scores scaled by its learned ``logit_scale``, keys without a
    bias, and a relative position bias that a small MLP (``cpb_mlp``, one output per head)
    computes from log-spaced offsets, squashed to (0, 16)."""

    def _position_parameters(self) -> None:
        wh, ww = self.window_size
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones((self.num_heads, 1, 1))))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 512, bias=True), nn.ReLU(inplace=True),
                                     nn.Linear(512, self.num_heads, bias=False))
        rows = torch.arange(-(wh - 1), wh, dtype=torch.float32) / max(wh - 1, 1)
        cols = torch.arange(-(ww - 1), ww, dtype=torch.float32) / max(ww - 1, 1)
        table = torch.stack(torch.meshgrid([rows, cols], indexing="ij")).permute(1, 2, 0).unsqueeze(0) * 8
        self.register_buffer("relative_coords_table", torch.sign(table) * torch.log2(table.abs() + 1.0) / 3.0)

    def _position_table(self) -> torch.Tensor:
        return self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)

    def _position_bias(self) -> torch.Tensor:
        return 16 * torch.sigmoid(super()._position_bias())

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.qkv.bias
        if bias is not None:  # the keys' bias is held at zero
            third = bias.numel() // 3
            bias = torch.cat([bias[:third], torch.zeros_like(bias[third:2 * third]), bias[2 * third:]])
        return F.linear(x, self.qkv.weight, bias)

    def _query_key(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        scale = torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
        return F.normalize(q, dim=-1) * scale, F.normalize(k, dim=-1), 1.0

    def _keep_head_parameters(self, heads: list[int]) -> None:
        self.logit_scale = nn.Parameter(self.logit_scale.detach()[heads].clone())
        last = self.cpb_mlp[2]
        kept = nn.Linear(last.in_features, len(heads), bias=False).to(last.weight.device, last.weight.dtype)
        with torch.no_grad():
            kept.weight.copy_(last.weight[heads])
        self.cpb_mlp[2] = kept


class GridAttention(WindowAttention):
    """MaxViT's attention (Tu et al. 2022; torchvision's ``RelativePositionalMultiHeadAttention``):
    attention inside each of ``G`` partitions of ``P`` tokens, a ``(batch, G, P, embed)`` map that
    MaxViT's block and grid partitioning have already cut, with a learned relative position bias
    per head (Swin's, over a square window of ``P`` tokens). Its scores are scaled by the
    embedding's width (``1/√embed``), not the heads', and keep that scale when heads go."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, size: int, bias: bool = True,
                 proj_bias: bool = True) -> None:
        super().__init__(embed_dim, num_heads, head_dim, (size, size), (0, 0), bias, proj_bias)
        self.scale = embed_dim ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return leaf(self._partitioned, x)

    def _partitioned(self, x: torch.Tensor) -> torch.Tensor:
        b, g, p, c = x.shape
        return self.attend(x.reshape(b * g, p, c), self._position_bias()).reshape(b, g, p, -1)

    def _query_key(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        return q, k, self.scale

    def token_shape(self, in_shape: Sequence[int]) -> tuple[int, int]:
        return in_shape[0] * in_shape[1], in_shape[2]

    @classmethod
    def from_torchvision(cls, module: nn.Module) -> GridAttention:  # type: ignore[override]
        """The same attention as torchvision's ``RelativePositionalMultiHeadAttention``, its weights taken over."""
        qkv, merge = module.to_qkv, module.merge
        att = cls(merge.out_features, module.n_heads, module.head_dim, module.size,
                  bias=qkv.bias is not None, proj_bias=merge.bias is not None)
        att.scale = module.scale_factor
        return att._taken_over(qkv, merge, module.relative_position_bias_table, module.training)


class PatchMerge(nn.Module):
    """Swin's patch merging (torchvision's ``PatchMerging``): each 2×2 patch's four vectors
    concatenated, ``(…, H, W, C) → (…, H/2, W/2, 4C)``, normalised, and reduced by ``reduction``;
    with ``norm_after`` (Swin V2's ``PatchMergingV2``) reduced, then normalised."""

    def __init__(self, norm: nn.LayerNorm, reduction: nn.Linear, norm_after: bool = False) -> None:
        super().__init__()
        self.norm, self.reduction, self.norm_after = norm, reduction, norm_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return leaf(self._merge, x)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-3:-1]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]], -1)
        return self.norm(self.reduction(x)) if self.norm_after else self.reduction(self.norm(x))

    def merged_shape(self, in_shape: Sequence[int]) -> tuple[int, ...]:
        """The shape the reduction runs on, channels left out: ``(…, H/2, W/2)``."""
        return (in_shape[0], (in_shape[1] + 1) // 2, (in_shape[2] + 1) // 2)


class PatchMergePruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning's view of :class:`PatchMerge`: input channel c is c in each of the four copies."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        tp.prune_linear_out_channels(layer.reduction, idxs)
        if layer.norm_after:
            tp.prune_layernorm_out_channels(layer.norm, idxs)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        c = layer.reduction.in_features // 4
        copies = [i + k * c for k in range(4) for i in idxs]
        tp.prune_linear_in_channels(layer.reduction, copies)
        if not layer.norm_after:
            tp.prune_layernorm_out_channels(layer.norm, copies)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.reduction.out_features

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.reduction.in_features // 4


class AttentionPruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning's view of :class:`Attention`: one leaf whose input and output
    channels are the embedding (its heads are latprune's own group)."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        tp.prune_linear_out_channels(layer.proj, idxs)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        tp.prune_linear_in_channels(layer.qkv, idxs)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.proj.out_features

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.qkv.in_features


def attention_unit(key: LayerKey) -> Attention:
    """The attention a LUT key of op ``attention`` describes (``cout`` heads), random weights."""
    return Attention(key.cin, key.cout, key.head_dim, bias=key.bias).eval()
