"""ShuffleNet's channel shuffle as latprune prunes it: one step whose channels keep their width.

Torch-Pruning cannot follow the shuffle's ``view``/``transpose`` permutation (ShuffleNetV2
fails its tracer; Torch-Pruning #45). latprune rewrites torchvision's ShuffleNetV2 units
into :class:`ShuffleUnit`, whose shuffle is a :class:`ChannelShuffle` leaf; the channels
through it (every channel between two units) keep their width, and each unit's inner
width prunes. A stride-1 unit's ``branch2`` can go whole (:func:`passing_blocks`): its half
of the channels then passes unchanged to the concatenation and the shuffle, as the other
half always does.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch_pruning as tp
from torch import nn

from latprune.graph.blocks import Block, inside
from latprune.graph.leaf import leaf


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle (Zhang et al. 2018): channels interleaved across ``groups``.
    To Torch-Pruning it is one leaf (:class:`ChannelShufflePruner`), and the channels that pass
    through it keep their width: a permutation couples every channel of a stage."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.channels = 0  # as last seen (Torch-Pruning asks after tracing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return leaf(self._shuffle, x)

    def _shuffle(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        self.channels = c
        return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """torchvision's ShuffleNetV2 unit with its shuffle as a :class:`ChannelShuffle` module: with
    stride 1, half the channels pass and ``branch2`` transforms the other half; with stride 2,
    ``branch1`` and ``branch2`` both see the input; then the halves are concatenated and shuffled."""

    def __init__(self, stride: int, branch1: nn.Module, branch2: nn.Module) -> None:
        super().__init__()
        self.stride, self.branch1, self.branch2 = stride, branch1, branch2
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return self.shuffle(out)


class ChannelShufflePruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning's view of :class:`ChannelShuffle`: as many channels out as in. latprune
    keeps them whole, so it never asks to prune them."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        raise NotImplementedError("the channels through a channel shuffle keep their width")

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.channels

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.channels


def passing_blocks(model: nn.Module, group_modules: Sequence[tuple[int, Sequence[str]]],
                   unit_names: Sequence[str]) -> list[Block]:
    """The ``branch2`` of every stride-1 :class:`ShuffleUnit` of ``model`` that holds a channel
    group of its own (``group_modules``: each group's id and modules), as a removable block
    that passes its input on once removed (:attr:`Block.passes`). The concatenation unit anchored
    at the branch's first layer (named after it) is the previous unit's: it stays."""
    blocks = []
    for name, module in model.named_modules():
        if not isinstance(module, ShuffleUnit) or module.stride != 1:
            continue
        branch = f"{name}.branch2" if name else "branch2"
        inner = [gid for gid, mods in group_modules if mods and all(inside(m, branch) for m in mods)]
        if inner:
            units = tuple(u for u in unit_names if inside(u, branch) and not u.endswith(":cat"))
            blocks.append(Block(branch, (), min(inner), units, passes=True))
    return blocks
