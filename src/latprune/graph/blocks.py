"""Residual blocks that can be dropped whole (depth pruning, as in Gator).

A block is a module computing ``act(x + branch(x))`` with an identity
shortcut. Zeroing the branch's last producer (the BatchNorm, or the conv
without one, or the LayerNorm of a post-norm branch as in Swin V2, whose output
enters the add) turns it into ``act(x)``, which is
``x`` when ``x`` comes out of the same activation (ReLU after ReLU) or when
there is no activation after the add (MobileNetV2). Then the block can be
replaced by ``nn.Identity`` and all its latency units disappear. A
transformer layer has two branches, ``x + attn(x)`` then ``x + mlp(x)``: it is
an identity once both are zeroed.

Blocks are found by that very test, run on the example input: for every
producer feeding an add, the smallest enclosing module whose output equals
its input once every producer feeding an add inside it is zeroed. No
naming convention is assumed.

>>> from latprune.models import ResNetCifar
>>> from latprune.graph.channels import ChannelGraph
>>> graph = ChannelGraph.build(ResNetCifar(blocks_per_stage=2), (1, 1, 28, 28))
>>> [b.name for b in graph.blocks]      # the first block of stages 2 and 3 has a conv shortcut
['blocks.0', 'blocks.1', 'blocks.3', 'blocks.5']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

PRODUCERS = (nn.modules.batchnorm._BatchNorm, nn.Conv2d, nn.Linear, nn.LayerNorm)  # with a weight: zeroable


@dataclass(frozen=True)
class Block:
    """A removable residual block: ``name`` is the module replaced by
    ``nn.Identity``; zeroing its ``branch_ends`` computes the same function.
    ``group`` is its inner channel group: a width of 0 for that group in a
    width configuration means "block removed". ``units`` are the latency units
    (conv/linear names) inside it. A ``passes`` block has no branch ends: it is a
    branch whose input passes on in its place once it is removed (ShuffleNetV2's,
    :func:`~latprune.graph.shuffle.passing_blocks`), and its gate mixes its output
    with its input."""

    name: str
    branch_ends: tuple[str, ...]
    group: int
    units: tuple[str, ...]
    passes: bool = False


def inside(name: str, block: str) -> bool:
    """Whether module ``name`` lies in module ``block`` (or is it)."""
    return name == block or name.startswith(block + ".")


def _zeroed(model: nn.Module, producers: Sequence[str]) -> list[Any]:
    """Hooks that make each of ``producers`` output zeros (remove them after use)."""
    return [model.get_submodule(p).register_forward_hook(lambda m, a, out: torch.zeros_like(out)) for p in producers]


def _same(x: torch.Tensor, y: object) -> bool:
    """Whether ``y`` equals ``x``, relative to ``x``'s scale (activations of randomly initialised
    nets can be tiny); never for an ``x`` of zeros."""
    scale = float(x.abs().max()) if x.numel() else 0.0
    return (isinstance(y, torch.Tensor) and x.shape == y.shape and scale > 0
            and torch.allclose(x, y, atol=1e-5 * scale, rtol=1e-5))


def _identities(model: nn.Module, names: dict[nn.Module, str], producers: Sequence[str],
                candidates: Sequence[str], example: torch.Tensor) -> set[str]:
    """Those of ``candidates`` whose output equals their input once every one of ``producers``
    has its output zeroed (one forward pass)."""
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(mod: nn.Module, args: tuple, out: object) -> None:
        if len(args) == 1 and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
            seen.setdefault(names[mod], (args[0].detach(), out.detach()))

    _pass_with(model, example, _zeroed(model, producers)
               + [model.get_submodule(a).register_forward_hook(record) for a in candidates])
    return {name for name, (x, y) in seen.items() if _same(x, y)}


def _calls(model: nn.Module, names: dict[nn.Module, str], candidates: Sequence[str],
           example: torch.Tensor) -> dict[str, tuple[tuple, dict]]:
    """The arguments each of ``candidates`` called with one tensor gets in one pass of ``model``
    (its first call), copied."""
    calls: dict[str, tuple[tuple, dict]] = {}

    def record(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        if len(args) == 1 and isinstance(args[0], torch.Tensor):
            calls.setdefault(names[mod], ((args[0].detach().clone(),), dict(kwargs)))

    _pass_with(model, example, [model.get_submodule(a).register_forward_pre_hook(record, with_kwargs=True)
                                for a in candidates])
    return calls


def _pass_with(model: nn.Module, example: torch.Tensor, hooks: Sequence[Any]) -> None:
    """One forward pass of ``model`` without gradients, then ``hooks`` removed (also when it raises)."""
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()


def _identity_on(model: nn.Module, name: str, call: tuple[tuple, dict], producers: Sequence[str]) -> bool:
    """Whether module ``name``, called with ``call`` (its arguments in the model), returns its
    input once every one of ``producers`` (inside it) has its output zeroed."""
    hooks = _zeroed(model, producers)
    try:
        with torch.no_grad():
            out = model.get_submodule(name)(*call[0], **call[1])
    finally:
        for h in hooks:
            h.remove()
    return _same(call[0][0], out)


def _ancestors(name: str) -> list[str]:
    """The modules enclosing ``name``, innermost first (the model itself left out)."""
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(len(parts) - 1, 0, -1)]


def find_blocks(model: nn.Module, example: torch.Tensor, add_inputs: Sequence[nn.Module],
                names: dict[nn.Module, str], group_modules: Sequence[tuple[int, Sequence[str]]],
                unit_names: Sequence[str]) -> list[Block]:
    """Removable residual blocks of ``model``.

    ``add_inputs`` are the modules whose output feeds a residual add;
    ``group_modules`` lists each group's id with every module it touches (a
    block needs an inner group, one that lives entirely inside it, to carry
    its "removed" option). Every add's producers are zeroed in one forward pass
    (a block's input is then not the one it sees in the model, but an identity
    is one on any input); for a producer whose block that pass does not show
    (its input was zero, behind a zeroed shortcut), each enclosing module is
    tested with the producers inside it zeroed, called alone on the input it gets in the
    model (a pass of the model each would take MaxViT-T's build from seconds to minutes)."""
    ends = [names[m] for m in dict.fromkeys(add_inputs)
            if isinstance(m, PRODUCERS) and getattr(m, "weight", None) is not None]
    candidates = list(dict.fromkeys(a for e in ends for a in _ancestors(e)))
    identities = _identities(model, names, ends, candidates, example) if ends else set()
    blocks: dict[str, Block] = {}
    tested: dict[str, bool] = {}
    calls: dict[str, tuple[tuple, dict]] | None = None
    for pname in ends:
        ancestors = _ancestors(pname)
        block = next((a for a in ancestors if a in identities), None)  # the innermost
        for ancestor in ancestors if block is None else ():  # its input may have been zero in that pass
            if ancestor not in tested:
                calls = _calls(model, names, candidates, example) if calls is None else calls
                inner_ends = [e for e in ends if inside(e, ancestor)]
                tested[ancestor] = ancestor in calls and _identity_on(model, ancestor, calls[ancestor], inner_ends)
            if tested[ancestor]:
                block = ancestor
                break
        branch_ends = tuple(e for e in ends if block is not None and inside(e, block))
        if block is None or block in blocks:
            continue
        inner = [gid for gid, mods in group_modules if mods and all(inside(m, block) for m in mods)]
        if not inner:
            continue  # nothing inside to gate: the branch writes the highway only
        units = tuple(u for u in unit_names if inside(u, block))
        blocks[block] = Block(block, branch_ends, min(inner), units)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(blocks.values(), key=lambda b: order[b.name])


class SkippedBlock(nn.Identity):
    """What a removed residual block becomes: its input, whatever else its parent
    passes it (EfficientNet-Lite's blocks are called with ``drop_connect_rate``)."""

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:  # noqa: ARG002
        return x
