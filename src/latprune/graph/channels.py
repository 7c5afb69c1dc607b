"""Coupled channel groups and latency units of a model, over Torch-Pruning's DependencyGraph.

A *group* is a set of channels that must be removed together: a conv's
output channels with its BatchNorm and the next conv's inputs, or, through
residual adds, a whole "highway" shared by every block of a stage. Each group
gets one width in a plan.

>>> from latprune.models import ResNetCifar
>>> graph = ChannelGraph.build(ResNetCifar(), (1, 1, 28, 28))
>>> [g.size for g in graph.groups][:4]   # stage-1 highway, then each block's inner width
[32, 32, 32, 32]
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import traceback
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence
from unittest import mock

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from latprune.errors import SpecError
from latprune.graph.blocks import Block, SkippedBlock, find_blocks, inside
from latprune.graph.leaf import hidden, opaque
from latprune.graph.rewrite import (
    branch_end,
    customized_pruners,
    left_attentions,
    rewrite_,
    sync_attributes_,
    why_left,
)
from latprune.graph.shuffle import ChannelShuffle, passing_blocks
from latprune.graph.transformer import Attention, Heads, PatchMerge
from latprune.graph.units import ACTIVATIONS, LayerKey, Unit

PRUNABLE = (nn.Conv2d, nn.Linear)
NORMS = (nn.LayerNorm,)  # normalise over a group's channels: a gate there keeps the kept channels' statistics


@dataclass(frozen=True)
class Group:
    """A coupled channel group: ``root`` is the module whose output channels
    define it (name stable across fresh copies of the base model), ``size`` its
    full channel count; ``producers`` the modules (BN, or conv/linear without
    a BN) whose output channel c is zero once the group loses channel c."""

    id: int
    root: str
    size: int
    producers: tuple[str, ...]
    members: tuple[str, ...] = field(default=())
    outs: tuple[str, ...] = field(default=())   # modules whose output channels are this group's
    norms: tuple[str, ...] = field(default=())  # LayerNorms over the group's channels
    heads: bool = False                         # the heads of the attention ``root``: a width counts heads
    offsets: tuple[tuple[str, int], ...] = ()   # producers whose channels start past 0 (BNs over concatenations)
    blocks: int = 1                             # the groups of a grouped convolution its channels split into
    same_offsets: bool = False                  # it feeds a grouped convolution: each block keeps the same offsets

    def offset(self, producer: str) -> int:
        """Where this group's channels start among ``producer``'s output channels."""
        return dict(self.offsets).get(producer, 0)

    def step(self, align: int) -> int:
        """The width multiple the group is pruned in: ``align`` channels (:func:`group_align`), or
        one head; for the channels of a grouped convolution, a multiple of its groups (aligned
        too where that leaves the group at least two widths)."""
        if self.heads:
            return 1
        aligned = group_align(self.size, align)
        if self.blocks == 1:
            return aligned
        both = math.lcm(aligned, self.blocks)
        return both if 2 * both <= self.size else self.blocks

    def top(self, scores: np.ndarray, width: int) -> list[int]:
        """The ``width`` channels to keep by ``scores`` (sorted indices), as the group's grouped
        convolution can take them: the same offsets of every block where the group feeds it,
        as many channels of each block where it writes it."""
        if self.blocks == 1:
            return sorted(int(i) for i in np.argsort(-scores, kind="stable")[:width])
        per_block, size = width // self.blocks, self.size // self.blocks
        by_block = np.asarray(scores).reshape(self.blocks, size)
        if self.same_offsets:
            kept = np.argsort(-by_block.sum(0), kind="stable")[:per_block]
            return sorted(int(b * size + o) for b in range(self.blocks) for o in kept)
        return sorted(int(b * size + o) for b in range(self.blocks)
                      for o in np.argsort(-by_block[b], kind="stable")[:per_block])


def _output_layers(dg: tp.DependencyGraph, modules: Sequence[nn.Module]) -> list[nn.Module]:
    """Conv/linear modules whose output reaches the model output without passing
    through another conv/linear: their output width is fixed (the classes)."""
    outputs = []
    for module in modules:
        stack, seen, reaches_end = [dg.module2node[module]], set(), False
        while stack and not reaches_end:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if not node.outputs:
                reaches_end = True
            for nxt in node.outputs:
                if not isinstance(nxt.module, PRUNABLE):
                    stack.append(nxt)
        if reaches_end:
            outputs.append(module)
    return outputs


def _effective_padding(m: nn.Conv2d, in_hw: Sequence[int], out_hw: Sequence[int]) -> tuple[int, int]:
    """The symmetric padding that gives the observed output size.

    Equal to ``m.padding`` for a plain conv; differs for convs that pad inside
    ``forward`` (TensorFlow-style "same" padding, as in EfficientNet ports)."""
    pads = []
    for axis in range(2):
        k, s, d = m.kernel_size[axis], m.stride[axis], m.dilation[axis]
        declared = m.padding[axis] if isinstance(m.padding, tuple) else 0
        candidates = [declared] + [p for p in range(k + 1) if p != declared]
        for p in candidates:
            if (in_hw[axis] + 2 * p - d * (k - 1) - 1) // s + 1 == out_hw[axis]:
                pads.append(p)
                break
        else:
            raise SpecError(f"cannot model the padding of conv {m}: input {tuple(in_hw)} gives output {tuple(out_hw)}")
    return pads[0], pads[1]


def _producer_behind(node: tp.dependency.Node, hops: int = 4) -> Any:
    """The module whose output reaches ``node`` (an add's input) through elementwise steps
    alone, each with one input besides parameters (ConvNeXt scales its branch by a parameter and
    permutes it back before the add): the node's own module where it is a layer."""
    for _ in range(hops):
        if not isinstance(node.module, tp.ops._ElementWiseOp):
            return node.module
        inputs = [i for i in node.inputs if not isinstance(i.module, nn.Parameter)]
        if len(inputs) != 1:
            return node.module
        node = inputs[0]
    return node.module


def _grad_fn_name(node: tp.dependency.Node) -> str:
    fn = getattr(node, "grad_fn", None)
    return type(fn).__name__ if fn is not None else ""


class ChannelGraph:
    """Groups and units of one model at one input shape. Build with :meth:`build`."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...],
                 groups: list[Group], units: list[Unit], names: dict[nn.Module, str],
                 blocks: list[Block] | None = None, kept_full: dict[str, str] | None = None) -> None:
        self.model = model
        self.input_shape = tuple(input_shape)
        self.groups = groups
        self.units = units
        self.blocks = blocks or []
        self.kept_full = dict(kept_full or {})  # layer -> why its channels are not pruned (yet)
        self._names = names
        self._block_of_group = {b.group: b for b in self.blocks}
        self._removed_memo: dict[frozenset[int], frozenset[str]] = {}

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def build(cls, model: nn.Module, input_shape: tuple[int, ...],
              refused: dict[str, str] | None = None) -> ChannelGraph:
        """The graph of ``model``, which it takes over: :func:`~latprune.graph.rewrite.rewrite_`
        rewrites its attention, patch merging and shuffle units in place (the same function).
        The groups rooted at the modules ``refused`` names keep their width, for the reason it
        gives (:func:`~latprune.graph.check.checked_graph` finds them)."""
        model.eval()
        left = rewrite_(model)
        names = {m: n for n, m in model.named_modules()}
        example = torch.randn(*input_shape)
        shapes = _run_recording_shapes(model, example, input_shape)
        with dismantled(_traced(model, example)) as dg:
            return cls._built(model, input_shape, example, left, names, shapes, dg, refused or {})

    @classmethod
    def _built(cls, model: nn.Module, input_shape: tuple[int, ...], example: torch.Tensor, left: list[str],
               names: dict[Any, str], shapes: dict[nn.Module, tuple[tuple[int, ...], tuple[int, ...]]],
               dg: tp.DependencyGraph, refused: dict[str, str]) -> ChannelGraph:
        """:meth:`build` from the traced dependency graph ``dg``, which the graph does not keep."""
        names.update({p: n for p, n in dg._param_to_name.items()})  # unwrapped parameters (ViT's class token)
        layers = [m for m in model.modules() if isinstance(m, PRUNABLE) and m in dg.module2node]
        attentions = [m for m in model.modules() if isinstance(m, Attention) and m in dg.module2node]
        merges = [m for m in model.modules() if isinstance(m, PatchMerge) and m in dg.module2node]
        fixed = _output_layers(dg, layers)
        # Attentions latprune does not rewrite and channel shuffles keep their widths, and so do
        # the groups they share channels with. A grouped (non-depthwise) conv's channels prune in
        # patterns its grouping can take (Group.blocks, Group.top).
        kept_full = {name: f"an attention latprune does not rewrite yet ({why_left(model.get_submodule(name))})"
                     for name in left}
        shuffles = {m for m in model.modules() if isinstance(m, ChannelShuffle)}
        whole = shuffles | {model.get_submodule(name) for name in left}
        groups, ins, out_group = _channel_groups(dg, model, names, fixed, whole, kept_full, refused=refused)
        # A layer that reads a slice or a chunk of its input's channels keeps the groups feeding it
        # whole: which of their channels it reads is not traced.
        feeding = {m: sum(groups[g].size for g in set(ins.get(m, []))) for m in layers}
        sliced = [m for m in layers if _reads_part(m, feeding[m])]
        if sliced:
            for m in sliced:
                kept_full[names[m]] = (f"its input stays whole: it reads {_in_width(m)} of the {feeding[m]} "
                                       "channels feeding it (a slice or chunk that latprune does not follow)")
            groups, ins, out_group = _channel_groups(dg, model, names, fixed, whole, kept_full, frozenset(sliced),
                                                     refused)
        in_group = {m: max(dict.fromkeys(gids), key=lambda g: groups[g].size) for m, gids in ins.items()}
        parts = {m: [(g, groups[g].size) for g in dict.fromkeys(ins.get(m, []))] for m in layers}
        units = []
        for m in layers:
            unit, bn = cls._unit(dg, m, names[m], shapes.get(m), in_group.get(m), out_group.get(m))
            unit = _input_parts(unit, parts[m])
            units.append(unit)
            # A conv/linear with no BN after it produces its group's channels itself.
            if bn is None and unit.out_group is not None:
                g = groups[unit.out_group]
                groups[unit.out_group] = replace(g, producers=g.producers + (names[m],))
        _add_leaves(groups, units, attentions, merges, names, shapes, in_group, out_group)
        units += _concat_units(dg, names, shapes, set(layers) - set(sliced), parts)
        units += _scale_units(dg, names, shapes, out_group)
        adds = [_producer_behind(i) for n in dg.module2node.values() if _grad_fn_name(n) == "AddBackward0"
                for i in n.inputs]
        adds = [branch_end(m) for m in adds if m is not None]
        group_modules, unit_names = [(g.id, g.members + g.producers) for g in groups], [u.name for u in units]
        blocks = find_blocks(model, example, adds, names, group_modules, unit_names)
        blocks += passing_blocks(model, group_modules, unit_names)
        return cls(model, input_shape, _rooted_outside(groups, blocks), units, names, blocks, kept_full)

    @staticmethod
    def _unit(dg: tp.DependencyGraph, m: nn.Module, name: str,
              shapes: tuple[tuple[int, ...], tuple[int, ...]] | None,
              gin: int | None, gout: int | None) -> tuple[Unit, nn.Module | None]:
        if shapes is None:
            raise SpecError(f"layer {name!r} did not run in the forward pass; latprune cannot time it")
        in_shape, out_shape = shapes
        node = dg.module2node[m]
        bn: nn.Module | None = None
        add, act = False, ""
        nxt = node.outputs[0] if len(node.outputs) == 1 else None
        if nxt is not None and isinstance(nxt.module, nn.modules.batchnorm._BatchNorm):
            bn = nxt.module
            nxt = nxt.outputs[0] if len(nxt.outputs) == 1 else None
        if nxt is not None and _grad_fn_name(nxt) == "AddBackward0" and bn is not None:
            # Fuse the add into the largest producer feeding it (the main branch).
            producers = [i for i in nxt.inputs if isinstance(i.module, nn.modules.batchnorm._BatchNorm)]
            convs = [p.inputs[0].module for p in producers if p.inputs and isinstance(p.inputs[0].module, PRUNABLE)]
            if convs and max(convs, key=lambda c: c.weight.numel()) is m:
                add = True
                nxt = nxt.outputs[0] if len(nxt.outputs) == 1 else None
            else:
                nxt = None
        if nxt is not None:
            act = ACTIVATIONS.get(_grad_fn_name(nxt), "")
        if isinstance(m, nn.Conv2d):
            depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            padding = _effective_padding(m, in_shape[2:], out_shape[2:])
            key = LayerKey(op="conv", cin=m.in_channels, cout=m.out_channels, kernel=tuple(m.kernel_size),
                           stride=tuple(m.stride), padding=padding,  # type: ignore[arg-type]
                           dilation=tuple(m.dilation), groups=m.groups, in_hw=tuple(in_shape[2:]),
                           batch=in_shape[0], bias=m.bias is not None, bn=bn is not None, add=add, act=act)
            if depthwise:
                gin = gout
            return Unit(name, key, gin, gout, depthwise), bn
        key = LayerKey(op="linear", cin=m.in_features, cout=m.out_features, in_hw=tuple(in_shape[1:-1]),
                       batch=in_shape[0], bias=m.bias is not None, bn=bn is not None, act=act)
        return Unit(name, key, gin, gout), bn

    # -- queries ------------------------------------------------------------------------------
    def signature(self) -> str:
        """A short hash of the model's unit structure and input shape (calibrations are per signature)."""
        text = "|".join(f"{u.name}:{u.base.text}:{u.in_group}:{u.out_group}{_input_text(u)}" for u in self.units)
        return hashlib.sha256(f"{self.input_shape}|{text}".encode()).hexdigest()[:16]

    def mark_cold(self, names: frozenset[str]) -> ChannelGraph:
        """Key the units ``names`` as timed with their weights out of the caches
        (:attr:`LayerKey.cold`, what :meth:`Backend.cold_units` finds); this graph, changed."""
        self.units = [replace(u, base=replace(u.base, cold=True)) if u.name in names else u for u in self.units]
        return self

    def full_widths(self) -> dict[int, int]:
        return {g.id: g.size for g in self.groups}

    def options(self, grid: Grid, blocks: bool = False) -> dict[int, list[int]]:
        """Width options of every group on ``grid``; with ``blocks``, a block's
        inner group also offers width 0: the block removed."""
        opts = {g.id: [w for w in grid.widths(g.size, g.root, g.step(grid.align)) if w % g.blocks == 0]
                for g in self.groups}
        if blocks:
            for b in self.blocks:
                opts[b.group] = [0] + opts[b.group]
        return opts

    def removed_blocks(self, widths: dict[int, int]) -> list[Block]:
        """Blocks removed by ``widths`` (their inner group at width 0)."""
        return [b for b in self.blocks if widths.get(b.group) == 0]

    def removed_units(self, widths: dict[int, int]) -> frozenset[str]:
        """Names of the latency units that ``widths`` removes with their blocks."""
        zeros = frozenset(g for g, w in widths.items() if w == 0)
        if zeros not in self._removed_memo:
            bad = zeros - set(self._block_of_group)
            if bad:
                raise SpecError(f"width 0 for group(s) {sorted(bad)}, which are no removable block's inner group")
            self._removed_memo[zeros] = frozenset(u for g in zeros for u in self._block_of_group[g].units)
        return self._removed_memo[zeros]

    def slim_to_widths(self, widths: dict[int, int]) -> nn.Module:
        """A slimmed copy keeping the first ``widths[g]`` channels of each group, to time or run
        (latency does not depend on which channels are kept): it shares with the graph's model
        the tensors the surgery leaves whole (:meth:`slim` with ``share``), so a configuration at
        full width costs no copy of the model's weights."""
        return self.slim({g: list(range(w)) for g, w in widths.items()}, share=True)

    def module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def verify(self) -> None:
        """Refuse a model whose groups do not describe it (:meth:`disagreement` of every group)."""
        why = self.disagreement(range(len(self.groups)))
        if why is not None:
            raise structure_refusal(why)

    def disagreement(self, gids: Iterable[int]) -> str | None:
        """Why the groups ``gids`` do not describe the model, or None where they do: slimmed to
        every other channel of those groups, it must run and compute what the model with those
        channels zeroed computes (:meth:`mask`). Torch-Pruning's tracer can misread a structure
        without failing (a channel shuffle written with ``view`` and ``transpose``), and a model's
        own code can contradict its groups (a reshape by a width it stored when built)."""
        halves = {g: _every_other(self.groups[g]) for g in gids}
        keep = {g: idx for g, idx in halves.items() if idx is not None}
        example = torch.randn(*self.input_shape, generator=torch.Generator().manual_seed(0))
        outputs = []
        for make, what in ((lambda: self.slim(keep, share=True), "slimming it"),
                           (lambda: self.mask(keep), "zeroing its channels")):
            try:
                model = make()  # Torch-Pruning traces with autograd: not under no_grad
                with torch.no_grad():
                    outputs.append(model(example))
            except Exception as exc:  # the user's model, its layers changed as the groups say
                return f"{what} as its channel groups say failed ({type(exc).__name__}: {str(exc)[:200]})"
        a, b = outputs
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            scale = float(b.abs().max()) or 1.0
            if a.shape != b.shape or not torch.allclose(a, b, atol=1e-4 * scale, rtol=1e-3):
                gap = float((a - b).abs().max()) if a.shape == b.shape else float("nan")
                return ("slimmed, it computes something else than with the same channels zeroed (largest "
                        f"difference {gap:.3g} of {scale:.3g}); Torch-Pruning's tracer misread it (a channel "
                        "shuffle written with view and transpose does this)")
        return None

    def over(self, model: nn.Module) -> ChannelGraph:
        """The same groups, units and blocks over ``model``, another instance of this network
        (e.g. a copy on a GPU, or with other weights): after :meth:`build` the graph finds
        modules by name alone."""
        twin = copy.copy(self)
        twin.model = model
        return twin

    # -- surgery ------------------------------------------------------------------------------
    def split_keep(self, keep: dict[int, Sequence[int]]) -> tuple[list[Block], dict[int, Sequence[int]]]:
        """Blocks that ``keep`` removes (an empty keep list for their inner group), and the
        channel keeps of the groups that survive them."""
        removed = self.removed_blocks({g: len(idx) for g, idx in keep.items()})
        def dropped(g: int) -> bool:  # every module of the group goes with a removed block
            mods = self.groups[g].members + self.groups[g].producers
            return bool(mods) and all(any(inside(m, b.name) for b in removed) for m in mods)

        return removed, {g: idx for g, idx in keep.items() if not dropped(g)}

    def slim(self, keep: dict[int, Sequence[int]], share: bool = False) -> nn.Module:
        """A physically slimmed copy, sharing no tensor with the graph's model: group ``g`` keeps
        channels ``keep[g]``; an empty list for a block's inner group removes the block.

        The surgery runs on a copy of the modules that shares the model's tensors (it replaces
        tensors, never writes them), and only what it left shared is copied after: the model is
        never held twice (ViT-H/14's 2.4 GB at each configuration a calibration measures).
        ``share`` leaves those tensors shared: a copy to time or run, never to train."""
        model = shared_copy(self.model)
        removed, channels = self.split_keep(keep)
        apply_plan_(model, self.input_shape, [b.name for b in removed],
                    {self.groups[g].root: idx for g, idx in channels.items()},
                    {self.groups[g].root: self.groups[g].size for g in channels})
        return model if share else _own_tensors_(model, self.model)

    def mask(self, keep: dict[int, Sequence[int]]) -> nn.Module:
        """A deep copy where every removed channel is zeroed at its producers (and left out of
        its LayerNorms' statistics), every removed head's values are zeroed, and every removed
        block's branches at their last producers (the hard-gated model): it computes the same
        function as :meth:`slim`."""
        model = copy.deepcopy(self.model)
        removed, keep = self.split_keep(keep)
        with torch.no_grad():
            for block in removed:
                if block.passes:  # zeroed, it would write zeros; removed, its input passes on
                    model.set_submodule(block.name, SkippedBlock())
                for end in block.branch_ends:
                    zero_channels_(model, end, None)
            for gid, idx in keep.items():
                group = self.groups[gid]
                drop = sorted(set(range(group.size)) - set(int(i) for i in idx))
                if not drop:
                    continue
                for name in group.producers:
                    zero_channels_(model, name, [c + group.offset(name) for c in drop])
                for name in group.norms:
                    norm = model.get_submodule(name)
                    copies = norm.normalized_shape[-1] // group.size  # Swin's patch merging: four
                    kept = [i + k * group.size for k in range(copies) for i in sorted(set(idx))]
                    model.set_submodule(name, KeptLayerNorm(norm, kept))
        return model


def structure_refusal(why: str) -> SpecError:
    """The one-line refusal of a model whose channel groups latprune cannot follow, for ``why``."""
    return SpecError(f"latprune cannot prune this model's structure yet: {why}")


def _every_other(group: Group) -> list[int] | None:
    """Every other channel of ``group``, as its grouped convolution can keep them (half of each
    block), or None where it cannot be narrowed at all (one channel per block)."""
    if group.blocks == 1:
        return list(range(0, group.size, 2))
    width = group.size // 2 // group.blocks * group.blocks
    return group.top((np.arange(group.size) % 2 == 0).astype(float), width) if width else None


def _tensors(model: nn.Module) -> Iterator[torch.Tensor]:
    yield from model.parameters()
    yield from model.buffers()


def shared_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s modules that shares its parameters and buffers: changing the copy's
    structure, or replacing its tensors, leaves ``model`` as it is; writing them does not."""
    return copy.deepcopy(model, {id(t): t for t in _tensors(model)})


def _own_tensors_(model: nn.Module, base: nn.Module) -> nn.Module:
    """``model`` with a copy of each parameter and buffer that shares memory with ``base``'s
    (tied ones stay tied), in place."""
    shared = {t.untyped_storage().data_ptr() for t in _tensors(base) if t.numel()}
    copies: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for tensors in (module._parameters, module._buffers):
            for name, t in tensors.items():
                if t is None or not t.numel() or t.untyped_storage().data_ptr() not in shared:
                    continue
                if id(t) not in copies:
                    own = t.detach().clone()
                    copies[id(t)] = nn.Parameter(own, t.requires_grad) if isinstance(t, nn.Parameter) else own
                tensors[name] = copies[id(t)]
    return model


def parameter_of(model: nn.Module, name: str) -> tuple[nn.Module, str] | None:
    """The module owning parameter ``name`` and the parameter's attribute name, where
    ``name`` names a parameter rather than a module (ViT's ``class_token``)."""
    owner, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(owner)
    except AttributeError:
        return None
    return (module, attr) if isinstance(module._parameters.get(attr), nn.Parameter) else None


def zero_channels_(model: nn.Module, producer: str, channels: Sequence[int] | None) -> None:
    """Zero the output ``channels`` (all with None) of a group's producer: a layer, a
    BatchNorm, a parameter outside layers (:func:`channel_dim`), or an attention's heads."""
    found = parameter_of(model, producer)
    if found is not None:
        param = found[0]._parameters[found[1]]
        assert param is not None
        index: list[Any] = [slice(None)] * param.dim()
        index[channel_dim(param)] = channels if channels is not None else slice(None)
        param[tuple(index)] = 0
        return
    module = model.get_submodule(producer)
    if isinstance(module, Heads):
        attention = model.get_submodule(producer.rpartition(".")[0])
        attention.zero_heads(channels if channels is not None else range(attention.num_heads))
        return
    rows = channels if channels is not None else slice(None)
    module.weight[rows] = 0
    if getattr(module, "bias", None) is not None:
        module.bias[rows] = 0


class KeptLayerNorm(nn.Module):
    """A LayerNorm whose statistics cover the channels ``keep`` alone and whose other channels
    are zero: what the slimmed LayerNorm computes, at full width."""

    def __init__(self, norm: nn.LayerNorm, keep: Sequence[int]) -> None:
        super().__init__()
        self.norm = norm
        mask = torch.zeros(norm.normalized_shape[-1])
        mask[list(keep)] = 1
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return masked_layer_norm(self.norm, x, self.mask)


def masked_layer_norm(norm: nn.LayerNorm, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` with its statistics weighted by ``gate`` over the channels, and its output
    multiplied by it: with a 0/1 gate, exactly the LayerNorm of the kept channels. A LayerNorm
    over several copies of the gated channels takes the gate once per copy. The channels are
    the last dimension, or the second for a ``LayerNorm2d`` or a subclass of one (ConvNeXt's and
    MetaFormer's, on ``(N, C, H, W)``)."""
    dim = 1 if any(c.__name__.startswith("LayerNorm2d") for c in type(norm).__mro__) else -1
    width = x.shape[dim]
    if gate.numel() != width:
        gate = gate.repeat(width // gate.numel())
    shape = [1] * x.dim()
    shape[dim] = width
    gate = gate.view(shape)
    count = gate.sum().clamp_min(1e-6)
    mean = (x * gate).sum(dim, keepdim=True) / count
    var = (((x - mean) ** 2) * gate).sum(dim, keepdim=True) / count
    y = (x - mean) / torch.sqrt(var + norm.eps)
    if norm.weight is not None:
        y = y * norm.weight.view(shape)
    if norm.bias is not None:
        y = y + norm.bias.view(shape)
    return y * gate


def channel_dim(param: torch.Tensor) -> int:
    """The dimension of a parameter outside layers that holds channels: its last that is not
    1, as Torch-Pruning prunes it (a class token ``(1, 1, C)``, ConvNeXt's scale ``(C, 1, 1)``)."""
    return max((i for i, n in enumerate(param.shape) if n > 1), default=param.dim() - 1)


def _add_leaves(groups: list[Group], units: list[Unit], attentions: Sequence[Attention], merges: Sequence[PatchMerge],
                names: dict[Any, str], shapes: dict[nn.Module, tuple[tuple[int, ...], tuple[int, ...]]],
                in_group: dict[nn.Module, int], out_group: dict[nn.Module, int]) -> None:
    """Add the units of the leaves Torch-Pruning does not look into, and what they do to groups:
    an attention's heads become a group of their own and its projection writes its output
    group; a patch merging's reduction writes its output group, and its norm covers four
    copies of its input group (or, Swin V2's, the output group)."""
    def extend(gid: int | None, **fields: tuple[str, ...]) -> None:
        if gid is not None:
            g = groups[gid]
            groups[gid] = replace(g, **{k: getattr(g, k) + v for k, v in fields.items()})

    for m in attentions:
        units.append(_attention_unit(m, names[m], shapes.get(m), in_group.get(m), len(groups)))
        groups.append(Group(len(groups), names[m], m.num_heads, (f"{names[m]}.heads",), (names[m],), heads=True))
        extend(out_group.get(m), producers=(f"{names[m]}.proj",))
    for m in merges:
        units.append(_merge_unit(m, names[m], shapes.get(m), in_group.get(m), out_group.get(m)))
        extend(out_group.get(m) if m.norm_after else in_group.get(m), norms=(f"{names[m]}.norm",))
        extend(out_group.get(m), producers=(f"{names[m]}.reduction",))


def _concat_units(dg: tp.DependencyGraph, names: dict[Any, str],
                  shapes: dict[nn.Module, tuple[tuple[int, ...], tuple[int, ...]]],
                  layers: set[nn.Module], parts: dict[nn.Module, list[tuple[int, int]]]) -> list[Unit]:
    """A unit for each concatenation of feature maps along channels: its input width is the
    sum of the groups it joins, as the first layer it feeds reads them (``parts``, of the
    ``layers`` that read all they are fed); a BatchNorm it feeds alone, and the activation
    after that, are its (DenseNet's pre-activation). A concatenation whose size or reader
    the trace does not show is left to the calibration's constant."""
    units = []
    for node in dg.module2node.values():
        fn = getattr(node, "grad_fn", None)
        if type(fn).__name__ != "CatBackward0" or getattr(fn, "_saved_dim", None) not in (1, -3):
            continue
        shape = _concat_shape(node, shapes)
        reader = _first_reader(node, layers)
        if shape is None or len(shape) != 4 or reader is None:
            continue
        bn, act, anchor = False, "", reader
        if len(node.outputs) == 1 and isinstance(node.outputs[0].module, nn.modules.batchnorm._BatchNorm):
            bn, anchor, after = True, node.outputs[0].module, node.outputs[0].outputs
            act = ACTIVATIONS.get(_grad_fn_name(after[0]), "") if len(after) == 1 else ""
        inputs = [i for i in node.inputs if not isinstance(i.module, nn.Parameter)]
        key = LayerKey(op="concat", cin=shape[1], cout=shape[1], groups=len(inputs), in_hw=tuple(shape[2:]),
                       batch=shape[0], bn=bn, act=act)
        joined = parts[reader]
        if sum(n for _, n in joined) > shape[1]:
            continue
        first = max(joined, key=lambda p: p[1])[0] if joined else None
        units.append(_input_parts(Unit(f"{names[anchor]}:cat", key, first, None), joined))
    return units


def _scale_units(dg: tp.DependencyGraph, names: dict[Any, str],
                 shapes: dict[nn.Module, tuple[tuple[int, ...], tuple[int, ...]]],
                 out_group: dict[nn.Module, int]) -> list[Unit]:
    """A unit for each squeeze-and-excitation's scaling: a feature map that a layer writes
    (behind its norm and activation) times a gate that a layer computes at 1×1 (``(B, C, 1,
    1)``, behind its activation, or timm's ``relu6(x + 3) / 6``). Its width is the group of
    the map's layer (none where that layer writes no group: the unit is then a fixed cost), its
    name the gate layer's parent module's (the squeeze-and-excitation's). A product the trace
    does not show so is left to the calibration's constant."""
    units = []
    for node in dg.module2node.values():
        if _grad_fn_name(node) != "MulBackward0" or len(node.inputs) != 2:
            continue
        gates = [g for g in (_layer_behind(i, GATE_STEPS) for i in node.inputs)
                 if g in shapes and shapes[g][1][2:] == (1, 1)]
        maps = [m for m in (_layer_behind(i, MAP_STEPS) for i in node.inputs)
                if m in shapes and len(shapes[m][1]) == 4 and math.prod(shapes[m][1][2:]) > 1]
        if len(gates) != 1 or len(maps) != 1 or shapes[gates[0]][1] != (*shapes[maps[0]][1][:2], 1, 1):
            continue
        shape = shapes[maps[0]][1]
        key = LayerKey(op="scale", cin=shape[1], cout=shape[1], in_hw=tuple(shape[2:]), batch=shape[0])
        name = names[gates[0]].rpartition(".")[0] or names[gates[0]]
        units.append(Unit(f"{name}:scale", key, out_group.get(maps[0]), None))
    return units


# What a squeeze-and-excitation's inputs pass through from the layers that write them: the gate its
# activation (timm's hard sigmoid as an add, a clamp and a division by constants); the map a norm and
# an activation. Each keeps its input's shape.
GATE_STEPS = frozenset(ACTIVATIONS) | {"AddBackward0", "DivBackward0", "MulBackward0"}
MAP_STEPS = frozenset(ACTIVATIONS) | {"NativeBatchNormBackward0", "CudnnBatchNormBackward0"}


def _layer_behind(node: tp.dependency.Node, steps: frozenset[str], hops: int = 4) -> nn.Module | None:
    """The layer (conv/linear) that ``node`` is, or that it reads through at most ``hops``
    single-input ``steps`` (grad_fn names); None otherwise."""
    for _ in range(hops + 1):
        if isinstance(node.module, PRUNABLE):
            return node.module
        if len(node.inputs) != 1 or _grad_fn_name(node) not in steps:
            return None
        node = node.inputs[0]
    return None


def _concat_shape(node: tp.dependency.Node, shapes: dict[nn.Module, tuple[tuple[int, ...], tuple[int, ...]]]
                  ) -> tuple[int, ...] | None:
    """The output shape of a concatenation: the input of a module it feeds, or else the sum of
    its inputs' channels, each the output of a module behind activations (None where unknown)."""
    for out in node.outputs:
        if out.module in shapes:
            return shapes[out.module][0]
    found = []
    for i in node.inputs:
        while i.module not in shapes and _grad_fn_name(i) in ACTIVATIONS and len(i.inputs) == 1:
            i = i.inputs[0]
        if i.module not in shapes:
            return None
        found.append(shapes[i.module][1])
    if not found or any(len(s) != 4 or s[2:] != found[0][2:] for s in found):
        return None
    return (found[0][0], sum(s[1] for s in found), *found[0][2:])


def _first_reader(node: tp.dependency.Node, layers: set[nn.Module], hops: int = 6) -> nn.Module | None:
    """The first layer of ``layers`` that reads a concatenation's channels through steps that
    keep them (norms, activations, pooling, flattening), breadth first; None past another
    concatenation or an add."""
    frontier = list(node.outputs)
    for _ in range(hops):
        for n in frontier:
            if n.module in layers:
                return n.module
        frontier = [o for n in frontier if _grad_fn_name(n) not in ("CatBackward0", "AddBackward0")
                    and not isinstance(n.module, (*PRUNABLE, Attention, PatchMerge)) for o in n.outputs]
    return None


def _rooted_outside(groups: list[Group], blocks: Sequence[Block]) -> list[Group]:
    """Each group rooted outside every removable block it is not inner to, so that a plan
    dropping that block can still name it."""
    rooted = []
    for g in groups:
        inner = any(b.group == g.id for b in blocks)
        if not inner and any(inside(g.root, b.name) for b in blocks):
            free = [o for o in g.outs if not any(inside(o, b.name) for b in blocks)]
            g = replace(g, root=free[0]) if free else g
        rooted.append(g)
    return rooted

def dependency_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model``, with attention modules as leaves (those
    latprune does not compute too, kept whole), and parameters outside layers (ViT's class
    token) pruned along :func:`channel_dim`."""
    kept = list(left_attentions(model).values())
    widths: dict[nn.Module, tuple[int, int]] = {}
    before = _attributes(model)
    with warnings.catch_warnings(), opaque(), hidden(kept, widths), _unknown_not_zero():
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example,
                                                   customized_pruners=customized_pruners(kept, widths))
    _drop_traced_caches_(model, before)
    return dg


def _attributes(model: nn.Module) -> dict[tuple[int, str, Any], int]:
    """The identity of every plain attribute of ``model``'s modules, and of each entry of an
    attribute that is a dict (a cache), by (module, attribute, key)."""
    seen: dict[tuple[int, str, Any], int] = {}
    for module in model.modules():
        for name, value in vars(module).items():
            if name in ("_parameters", "_buffers", "_modules"):
                continue
            seen[(id(module), name, None)] = id(value)
            if isinstance(value, dict):
                seen.update({(id(module), name, key): id(item) for key, item in value.items()})
    return seen


def _drop_traced_caches_(model: nn.Module, before: dict[tuple[int, str, Any], int]) -> None:
    """Undo what a trace with autograd left in ``model``'s attributes: a tensor it computed from
    the parameters and kept (timm's LeViT and EfficientFormer cache their attention biases so in
    eval mode) holds autograd history, which ``copy.deepcopy`` refuses. Such a dict entry goes
    (the module fills it again at its next forward pass); such an attribute is detached."""
    def traced(key: tuple[int, str, Any], value: Any) -> bool:
        return isinstance(value, torch.Tensor) and value.grad_fn is not None and before.get(key) != id(value)

    for module in model.modules():
        for name, value in list(vars(module).items()):
            if name in ("_parameters", "_buffers", "_modules"):
                continue
            if traced((id(module), name, None), value):
                module.__dict__[name] = value.detach()
            elif isinstance(value, dict):
                for key in [k for k, item in value.items() if traced((id(module), name, k), item)]:
                    del value[key]


@contextlib.contextmanager
def dismantled(dg: tp.DependencyGraph) -> Iterator[tp.DependencyGraph]:
    """``dg``, its reference cycles broken on exit: its nodes point at each other, at autograd
    functions and at the model's modules, so left whole, a dropped graph would keep its model alive
    until the next full garbage collection (4.8 GB of slimmed copies at the end of a ViT-L/16 profile)."""
    try:
        yield dg
    finally:
        for node in dg.module2node.values():
            node.__dict__.clear()
        dg.__dict__.clear()


@contextlib.contextmanager
def _unknown_not_zero() -> Iterator[None]:
    """Torch-Pruning 1.6 infers 0 input channels behind a reshape it cannot follow (a ViT with
    every layer removed: patches flattened into tokens, then a class-token slice) and divides
    by it; 0 there means "unknown", which its reshape mapping already treats as no mapping."""
    update = tp.dependency.index_mapping.update_reshape_index_mapping

    def update_known(graph: Any, node: Any) -> None:
        try:
            update(graph, node)
        except ZeroDivisionError:
            pass

    with mock.patch.object(tp.dependency.index_mapping, "update_reshape_index_mapping", update_known):
        yield


def _run_recording_shapes(model: nn.Module, example: torch.Tensor, input_shape: tuple[int, ...]
                          ) -> dict[nn.Module, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Run ``model`` once, recording the input and output shape of each layer and of every other
    module that takes and returns a tensor (but one called at several shapes, a shared
    activation); refuse a model that does not run."""
    shapes: dict[nn.Module, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    shared: set[nn.Module] = set()

    def record(mod: nn.Module, inp: tuple, out: object) -> None:
        out = out[0] if isinstance(out, tuple) else out
        shapes[mod] = (tuple(inp[0].shape), tuple(out.shape))  # type: ignore[union-attr]

    def record_tensors(mod: nn.Module, inp: tuple, out: object) -> None:
        if inp and isinstance(inp[0], torch.Tensor) and isinstance(out, torch.Tensor):
            seen = (tuple(inp[0].shape), tuple(out.shape))
            if shapes.setdefault(mod, seen) != seen:
                shared.add(mod)

    hooks = [m.register_forward_hook(record if isinstance(m, (*PRUNABLE, Attention, PatchMerge)) else record_tensors)
             for m in model.modules()]
    try:
        with torch.no_grad():
            model(example)
    except Exception as exc:  # the user's model, at the user's input shape
        raise SpecError(f"the model does not run on an input of shape {input_shape} ({type(exc).__name__}: "
                        f"{str(exc)[:200]}); check that the example input has the shape the model expects") from None
    finally:
        for h in hooks:
            h.remove()
    return {m: s for m, s in shapes.items() if m not in shared}


def _traced(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """:func:`dependency_graph`, or a clear refusal where the model's structure defeats the tracer."""
    try:
        dg = dependency_graph(model, example)
    except Exception as exc:  # it runs, but its structure defeats the tracer (e.g. a channel shuffle)
        raise _untraceable(exc) from None
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    rejoined = min(_rejoined_slices(dg), key=lambda name: order.get(name, len(order)), default=None)
    if rejoined is not None:
        raise structure_refusal(f"slices of {rejoined} are concatenated back together along the axis they were "
                                "cut from (a residual added to part of the channels, as in ReXNet), which "
                                "Torch-Pruning's grouping cannot follow in reasonable time")
    return dg


def _slice_sources(node: Any, hops: int = 3) -> set[Any]:
    """The tensors (Torch-Pruning nodes) that ``node`` is a slice of, looking back through up to
    ``hops`` element-wise operations (a slice with a residual added to it): ``(source, slice dim)``."""
    if node.type == tp.ops.OPTYPE.SLICE:
        return {(src, node.module.dim) for src in node.inputs}
    if hops == 0 or node.type != tp.ops.OPTYPE.ELEMENTWISE:
        return set()
    return set().union(*(_slice_sources(i, hops - 1) for i in node.inputs))


def _rejoined_slices(dg: tp.DependencyGraph) -> list[str]:
    """The tensors (their producers' names) of which a concatenation joins two slices along the
    axis they were cut from, each perhaps with something added to it first. ReXNet's blocks do
    this (``cat([x[:, :k] + shortcut, x[:, k:]])``): Torch-Pruning's grouping follows every set
    of indices through each such pair, block after block, and runs for many minutes."""
    found = []
    for node in dg.module2node.values():
        dim = getattr(getattr(node, "grad_fn", None), "_saved_dim", None)
        if node.type != tp.ops.OPTYPE.CONCAT or dim is None:
            continue
        seen: set[Any] = set()
        for inp in node.inputs:
            cut = {src for src, d in _slice_sources(inp) if d == dim}
            found += [src._name for src in cut & seen]
            seen |= cut
    return found


def _untraceable(exc: Exception) -> SpecError:
    where = traceback.extract_tb(exc.__traceback__)[-1]
    return structure_refusal(f"Torch-Pruning's dependency tracer failed on it ({type(exc).__name__} in "
                             f"{Path(where.filename).name}:{where.lineno}; an operation it does not model, such as "
                             "a hand-written channel shuffle, does this)")


def _channel_groups(dg: tp.DependencyGraph, model: nn.Module, names: dict[Any, str], fixed: list[nn.Module],
                    whole: set[nn.Module], kept_full: dict[str, str], sliced: frozenset[nn.Module] = frozenset(),
                    refused: dict[str, str] | None = None
                    ) -> tuple[list[Group], dict[nn.Module, list[int]], dict[nn.Module, int]]:
    """The channel groups Torch-Pruning finds, in module order, which groups set each
    layer's input width (more than one where a concatenation feeds it) and which its
    output width; groups that share channels with a module of ``whole`` (a channel shuffle,
    an attention not rewritten) or feed a layer of ``sliced`` (one that reads a slice of
    them) keep their width and are left out (``kept_full``), as are groups between grouped
    convolutions of different group counts and those rooted at a module ``refused`` names."""
    refused = refused or {}
    groups: list[Group] = []
    out_group: dict[nn.Module, int] = {}
    in_group: dict[nn.Module, list[int]] = {}
    order = {m: i for i, m in enumerate(model.modules())}
    try:
        with _unknown_not_zero():
            tp_groups = sorted(dg.get_all_groups(ignored_layers=fixed, root_module_types=PRUNABLE),
                               key=lambda grp: order[grp[0].dep.target.module])
    except Exception as exc:
        raise _untraceable(exc) from None
    outward = (tp.prune_conv_out_channels, tp.prune_linear_out_channels, tp.prune_depthwise_conv_out_channels)
    inward = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
    for tp_group in tp_groups:
        feeds = [dep.target.module for dep, _ in tp_group if dep.target.module in whole
                 or (dep.target.module in sliced and dep.handler in inward)]
        if feeds:
            why = "passes through the channel shuffle" if isinstance(feeds[0], ChannelShuffle) else \
                "shares channels with"
            for dep, _ in tp_group:
                if isinstance(dep.target.module, PRUNABLE) and dep.target.module not in whole:
                    kept_full.setdefault(names[dep.target.module], f"{why} {names[feeds[0]]}")
            continue
        # a graph names a group by its root or, for a removable block's sake, by another of its outputs
        outputs = {names[tp_group[0].dep.target.module]} | {names[dep.target.module] for dep, _ in tp_group
                                                             if dep.handler in outward}
        hit = sorted(outputs & refused.keys())
        if hit:  # the layers that write its channels keep their width; those reading them prune their own
            for dep, _ in tp_group:
                if isinstance(dep.target.module, PRUNABLE) and dep.handler in outward:
                    kept_full.setdefault(names[dep.target.module], refused[hit[0]])
            continue
        size = len(tp_group[0].idxs)
        pattern = _grouped_pattern(tp_group, size)
        if pattern is None:
            for dep, _ in tp_group:
                if isinstance(dep.target.module, PRUNABLE):
                    kept_full.setdefault(names[dep.target.module],
                                         "shares channels with grouped convolutions of different group counts")
            continue
        gid = len(groups)
        producers, members, outs, norms, offsets = [], [], [], [], []
        for dep, idxs in tp_group:
            target, handler = dep.target.module, dep.handler
            name = getattr(handler, "__name__", "")
            leaf = isinstance(target, (Attention, PatchMerge))
            if handler in outward or (leaf and name == "prune_out_channels"):
                out_group[target] = gid
                members.append(names[target])
                if handler is not tp.prune_depthwise_conv_out_channels and not isinstance(target, Attention):
                    outs.append(names[target])
            elif handler in inward or leaf:
                in_group.setdefault(target, []).append(gid)
                members.append(names[target])
            elif isinstance(target, nn.modules.batchnorm._BatchNorm):
                producers.append(names[target])
                if int(idxs[0]):  # a BN over a concatenation: the group's channels sit past the others'
                    offsets.append((names[target], int(idxs[0])))
            elif isinstance(target, NORMS):
                norms.append(names[target])
            elif isinstance(target, nn.Parameter) and target in names:  # added into the channels (a class token)
                producers.append(names[target])
        groups.append(Group(gid, names[tp_group[0].dep.target.module], size, tuple(producers),
                            tuple(dict.fromkeys(members)), tuple(dict.fromkeys(outs)), tuple(dict.fromkeys(norms)),
                            offsets=tuple(dict.fromkeys(offsets)), blocks=pattern[0], same_offsets=pattern[1]))
    return groups, in_group, out_group


def _grouped_pattern(tp_group: Any, size: int) -> tuple[int, bool] | None:
    """How a group's channels split among the groups of the grouped (not depthwise) convolutions
    it touches: (their group count, whether it feeds one, so every block keeps the same offsets);
    (1, False) for none, None where two of them disagree on the count."""
    counts, feeds = set(), False
    for dep, _ in tp_group:
        m = dep.target.module
        if isinstance(m, nn.Conv2d) and m.groups > 1 and not (m.groups == m.in_channels == m.out_channels):
            counts.add(m.groups)
            feeds = feeds or getattr(dep.handler, "__name__", "") == "prune_in_channels"
    if not counts:
        return 1, False
    if len(counts) > 1 or size % next(iter(counts)):
        return None
    return counts.pop(), feeds


def _in_width(m: nn.Module) -> int:
    """The input channels of a conv or linear."""
    return m.in_features if isinstance(m, nn.Linear) else m.in_channels  # type: ignore[return-value]


def _reads_part(m: nn.Module, feeding: int) -> bool:
    """Whether ``m`` (not depthwise) reads fewer channels than the groups feeding it hold (``feeding``,
    0 for none): a slice or chunk of them, where :func:`_input_parts` could not tell which."""
    depthwise = isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
    return not depthwise and 0 < feeding and _in_width(m) < feeding


def _input_text(unit: Unit) -> str:
    """How a unit's input splits among groups, where it is more than its one input group
    (empty otherwise: signatures of models without such units stay as they were)."""
    if unit.in_copies == 1 and not unit.in_others and not unit.in_fixed:
        return ""
    return f":{unit.in_copies}:{unit.in_others}:{unit.in_fixed}"


def _input_parts(unit: Unit, parts: list[tuple[int, int]]) -> Unit:
    """``unit`` with its input split among the groups that feed it (``parts``: id and full
    size, the primary ``unit.in_group`` among them): copies of one group (a Linear after a
    flatten reads each channel once per position), a concatenation of several, and the
    channels no group prunes (:class:`~latprune.graph.units.Unit`)."""
    if unit.in_group is None or unit.depthwise:
        return unit
    size = dict(parts)[unit.in_group]
    others = tuple((g, n) for g, n in parts if g != unit.in_group)
    rest = unit.base.cin - sum(n for _, n in others)
    assert rest >= size, f"{unit.name} reads a slice of its input: ChannelGraph.build keeps such groups whole"
    if rest % size == 0:
        return replace(unit, in_copies=rest // size, in_others=others)
    return replace(unit, in_others=others, in_fixed=rest - size)


def _attention_unit(m: Attention, name: str, shapes: tuple[tuple[int, ...], tuple[int, ...]] | None,
                    gin: int | None, heads_group: int) -> Unit:
    """One latency unit for a whole attention: qkv projection, attention, output projection.
    Its key's ``cin`` is the embedding width and its ``cout`` the head count."""
    if shapes is None:
        raise SpecError(f"attention {name!r} did not run in the forward pass; latprune cannot time it")
    batch, tokens = m.token_shape(shapes[0])
    key = LayerKey(op="attention", cin=m.qkv.in_features, cout=m.num_heads, in_hw=(tokens,), batch=batch,
                   bias=m.qkv.bias is not None, head_dim=m.head_dim)
    return Unit(name, key, gin, heads_group)


def _merge_unit(m: PatchMerge, name: str, shapes: tuple[tuple[int, ...], tuple[int, ...]] | None,
                gin: int | None, gout: int | None) -> Unit:
    """A patch merging's reduction, a linear layer over four copies of its input group."""
    if shapes is None:
        raise SpecError(f"patch merging {name!r} did not run in the forward pass; latprune cannot time it")
    tokens = m.merged_shape(shapes[0])
    key = LayerKey(op="linear", cin=m.reduction.in_features, cout=m.reduction.out_features, in_hw=tokens[1:],
                   batch=tokens[0], bias=m.reduction.bias is not None)
    return Unit(f"{name}.reduction", key, gin, gout, in_copies=4)


def apply_plan_(model: nn.Module, input_shape: tuple[int, ...], removed_blocks: Sequence[str],
                keep_by_root: dict[str, Sequence[int]], sizes: dict[str, int] | None = None) -> nn.Module:
    """Slim ``model`` in place: replace each of ``removed_blocks`` by :class:`SkippedBlock` (an identity),
    then keep channels as :func:`apply_keep_` does. Self-attention is rewritten first, as
    :meth:`ChannelGraph.build` does."""
    rewrite_(model)
    for name in removed_blocks:
        try:
            model.get_submodule(name)
        except AttributeError:
            raise SpecError(f"the model has no block {name!r}; the plan was made for another model") from None
        model.set_submodule(name, SkippedBlock())
    return apply_keep_(model, input_shape, keep_by_root, sizes)


def apply_keep_(model: nn.Module, input_shape: tuple[int, ...], keep_by_root: dict[str, Sequence[int]],
                sizes: dict[str, int] | None = None) -> nn.Module:
    """Slim ``model`` in place: the group rooted at module ``root`` keeps channels
    ``keep_by_root[root]`` (indices into the base model's channels; into its heads where
    ``root`` is an attention)."""
    model.eval()
    with _unknown_not_zero(), dismantled(dependency_graph(model, torch.randn(*input_shape))) as dg:
        _keep_(model, dg, keep_by_root, sizes)
    return sync_attributes_(model)


def _keep_(model: nn.Module, dg: tp.DependencyGraph, keep_by_root: dict[str, Sequence[int]],
           sizes: dict[str, int] | None) -> None:
    """:func:`apply_keep_`'s surgery, group by group, on ``model``'s dependency graph ``dg``."""
    for root_name, idx in keep_by_root.items():
        try:
            root = model.get_submodule(root_name)
        except AttributeError:
            raise SpecError(f"the model has no module {root_name!r}; the plan was made for another model") from None
        if isinstance(root, Attention):
            size = root.num_heads
        elif isinstance(root, PatchMerge):
            size = root.reduction.out_features
        elif isinstance(root, PRUNABLE):
            size = root.out_channels if isinstance(root, nn.Conv2d) else root.out_features
        else:
            raise SpecError(f"module {root_name!r} is a {type(root).__name__}, not a layer a plan can slim")
        if sizes is not None and sizes.get(root_name, size) != size:
            raise SpecError(f"module {root_name!r} has {size} channels, the plan expects {sizes[root_name]}")
        kept = set(int(i) for i in idx)
        if not kept or max(kept) >= size or min(kept) < 0:
            raise SpecError(f"plan keeps channels outside 0..{size - 1} of {root_name!r} (or none)")
        drop = [i for i in range(size) if i not in kept]
        if not drop:
            continue
        if isinstance(root, Attention):
            root.keep_heads(sorted(kept))
            continue
        handler = (tp.prune_conv_out_channels if isinstance(root, nn.Conv2d) else
                   dg.get_pruner_of_module(root).prune_out_channels if isinstance(root, PatchMerge) else
                   tp.prune_linear_out_channels)
        dg.get_pruning_group(root, handler, idxs=drop).prune()


def group_align(size: int, align: int) -> int:
    """The channel multiple a group of ``size`` channels is pruned in: ``align``,
    or 1 for a group no wider than one block (it cannot be aligned below its size)."""
    return align if size > align else 1


@dataclass(frozen=True)
class Grid:
    """The widths a group may take: ``levels`` evenly spaced steps up to its size,
    each rounded to a multiple of ``align`` (the runtime's vector width: a
    width between two multiples costs as much as the next one up, and
    unaligned widths force layout conversions that a unit timed alone does not
    pay: with MobileNetV2's 16-channel group at 10 channels the whole model
    measured slower than at 16, and the LUT predicted 14% below it), the full
    size always included;
    plus, per group root, the ``extra`` widths that adaptive sampling added
    where the group's latency jumps (``latency_lut.staircase``). Below one
    block nothing is offered: on AVX-512 half a 16-channel block measured
    5–8% cheaper than a whole one, but offering it bought no accuracy at a
    0.3x budget (``benchmarks/results/width_steps_zen5.json``,
    ``benchmarks/results/accuracy_vs_latency_zen5_halfblock.json``).

    >>> Grid(8).widths(32)
    [4, 8, 12, 16, 20, 24, 28, 32]
    >>> Grid(8, align=8).widths(144)
    [16, 32, 56, 72, 88, 112, 128, 144]
    >>> Grid(8, align=8).widths(16)
    [8, 16]
    >>> Grid(8, align=8).widths(6)
    [1, 2, 3, 4, 5, 6]
    >>> Grid(2, extra=(("conv1", (10, 12)),)).widths(16, "conv1")
    [8, 10, 12, 16]
    """

    levels: int = 8
    align: int = 1
    extra: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def widths(self, size: int, root: str | None = None, align: int | None = None) -> list[int]:
        """The widths of a group of ``size`` (rooted at ``root``), in multiples of ``align``
        (default: the grid's, :func:`group_align`)."""
        align = group_align(size, self.align) if align is None else align
        raw = (size * i / self.levels for i in range(1, self.levels + 1))
        widths = {max(align, align * round(w / align)) for w in raw} if align > 1 else {max(1, round(w)) for w in raw}
        widths |= set(dict(self.extra).get(root, ())) if root is not None else set()
        return sorted(w for w in widths | {size} if 0 < w <= size)

    def with_extra(self, extra: dict[str, list[int]]) -> Grid:
        """This grid with ``extra`` widths per group root (sorted, canonical: equal grids compare equal)."""
        return Grid(self.levels, self.align,
                    tuple(sorted((root, tuple(sorted(set(ws)))) for root, ws in extra.items() if ws)))

