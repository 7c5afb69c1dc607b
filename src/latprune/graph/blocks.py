"""Residual blocks that can be dropped whole (depth pruning, as in Gator).

A block is a module computing ``act(x + branch(x))`` with an identity
shortcut. Zeroing the branch's last producer (the BatchNorm, or the conv
without one, whose output enters the add) turns it into ``act(x)``, which is
``x`` when ``x`` comes out of the same activation (ReLU after ReLU) or when
there is no activation after the add (MobileNetV2). Then the block can be
replaced by ``nn.Identity`` and all its latency units disappear.

Blocks are found by that very test, run on the example input: for every
producer feeding an add, the smallest enclosing module whose output equals
its input once the producer is zeroed. No naming convention is assumed.

>>> from latprune.models import ResNetCifar
>>> from latprune.graph.channels import ChannelGraph
>>> graph = ChannelGraph.build(ResNetCifar(blocks_per_stage=2), (1, 1, 28, 28))
>>> [b.name for b in graph.blocks]      # the first block of stages 2 and 3 has a conv shortcut
['blocks.0', 'blocks.1', 'blocks.3', 'blocks.5']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

PRODUCERS = (nn.modules.batchnorm._BatchNorm, nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class Block:
    """A removable residual block: ``name`` is the module replaced by
    ``nn.Identity``; zeroing ``branch_end`` computes the same function.
    ``group`` is its inner channel group: a width of 0 for that group in a
    width configuration means "block removed". ``units`` are the latency units
    (conv/linear names) inside it."""

    name: str
    branch_end: str
    group: int
    units: tuple[str, ...]


def inside(name: str, block: str) -> bool:
    """Whether module ``name`` lies in module ``block`` (or is it)."""
    return name == block or name.startswith(block + ".")


def _identity_when_zeroed(model: nn.Module, names: dict[nn.Module, str], producer: str,
                          example: torch.Tensor) -> str | None:
    """The smallest module enclosing ``producer`` whose output equals its input
    when ``producer``'s output is zeroed, or None."""
    parts = producer.split(".")
    ancestors = [".".join(parts[:k]) for k in range(len(parts) - 1, 0, -1)]
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(mod: nn.Module, args: tuple, out: object) -> None:
        if len(args) == 1 and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
            seen.setdefault(names[mod], (args[0].detach(), out.detach()))

    hooks = [model.get_submodule(producer).register_forward_hook(lambda m, a, out: torch.zeros_like(out))]
    hooks += [model.get_submodule(a).register_forward_hook(record) for a in ancestors]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    for name in ancestors:  # innermost first
        if name in seen:
            x, y = seen[name]
            scale = float(x.abs().max()) if x.numel() else 0.0
            # relative tolerance: activations of randomly initialised nets can be tiny
            if x.shape == y.shape and scale > 0 and torch.allclose(x, y, atol=1e-5 * scale, rtol=1e-5):
                return name
    return None


def find_blocks(model: nn.Module, example: torch.Tensor, add_inputs: Sequence[nn.Module],
                names: dict[nn.Module, str], group_modules: Sequence[tuple[int, Sequence[str]]],
                unit_names: Sequence[str]) -> list[Block]:
    """Removable residual blocks of ``model``.

    ``add_inputs`` are the modules whose output feeds a residual add;
    ``group_modules`` lists each group's id with every module it touches (a
    block needs an inner group, one that lives entirely inside it, to carry
    its "removed" option)."""
    blocks: dict[str, Block] = {}
    for producer in dict.fromkeys(m for m in add_inputs if isinstance(m, PRODUCERS)):
        pname = names[producer]
        block = _identity_when_zeroed(model, names, pname, example)
        if block is None or block in blocks:
            continue
        inner = [gid for gid, mods in group_modules if mods and all(inside(m, block) for m in mods)]
        if not inner:
            continue  # nothing inside to gate: the branch writes the highway only
        units = tuple(u for u in unit_names if inside(u, block))
        blocks[block] = Block(block, pname, min(inner), units)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(blocks.values(), key=lambda b: order[b.name])


class SkippedBlock(nn.Identity):
    """What a removed residual block becomes: its input, whatever else its parent
    passes it (EfficientNet-Lite's blocks are called with ``drop_connect_rate``)."""

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:  # noqa: ARG002
        return x
