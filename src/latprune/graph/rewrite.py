"""The rewrites that make a model prunable by latprune, in place and keeping its function:
self-attention into :class:`~latprune.graph.transformer.Attention`, Swin's patch merging into
:class:`~latprune.graph.transformer.PatchMerge`, ShuffleNetV2's units into
:class:`~latprune.graph.shuffle.ShuffleUnit`; the Torch-Pruning pruners of those leaves; and
the attributes a slimmed model's ``forward`` reads."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch_pruning as tp
from torch import nn

from latprune.graph.shuffle import ChannelShuffle, ChannelShufflePruner, ShuffleUnit
from latprune.graph.transformer import (
    Attention,
    AttentionPruner,
    GridAttention,
    PartitionedWindowAttention,
    PatchMerge,
    PatchMergePruner,
    SelfAttention,
    WindowAttention,
    WindowAttentionV2,
)


def _is_torchvision(module: nn.Module, name: str) -> bool:
    return type(module).__name__ == name and type(module).__module__.startswith("torchvision.")


def _is_timm_swin(module: nn.Module, name: str) -> bool:
    return type(module).__name__ == name and type(module).__module__ == "timm.models.swin_transformer"


def _is_timm_attention(module: nn.Module) -> bool:
    return type(module).__module__.startswith("timm.") and type(module).__name__ == "Attention"


def _timm_convertible(module: nn.Module) -> bool:
    """timm's plain ``Attention``: a qkv and an output projection over whole heads, no q/k norms, no
    output norm, no gate, and no parameters of its own (BEiT's separate q/v biases and position bias)."""
    plain = all(isinstance(getattr(module, n, nn.Identity()), nn.Identity) for n in ("q_norm", "k_norm", "norm"))
    own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    return (plain and getattr(module, "gate", None) is None and not own
            and isinstance(getattr(module, "head_dim", None), int)
            and all(isinstance(getattr(module, n, None), nn.Linear) for n in ("qkv", "proj")))


def _from_timm(module: nn.Module) -> Attention:
    qkv, proj = module.qkv, module.proj
    drop = getattr(module, "attn_drop", None)
    att = Attention(qkv.in_features, module.num_heads, module.head_dim, bias=qkv.bias is not None,
                    proj_bias=proj.bias is not None, dropout=float(getattr(drop, "p", 0.0)))
    att.load_state_dict({f"qkv.{k}": v for k, v in qkv.state_dict().items()}
                        | {f"proj.{k}": v for k, v in proj.state_dict().items()})
    return att.to(qkv.weight.device, qkv.weight.dtype).train(module.training)


def rewrite_(model: nn.Module) -> list[str]:
    """Replace, in place, every self-attention that :class:`Attention` computes
    (``nn.MultiheadAttention`` in self-attention, timm's ``Attention``, torchvision's Swin
    ``ShiftedWindowAttention`` and ``ShiftedWindowAttentionV2``, MaxViT's
    ``RelativePositionalMultiHeadAttention``, timm's Swin ``WindowAttention``), Swin's
    ``PatchMerging`` (torchvision's and timm's) and ``PatchMergingV2`` with :class:`PatchMerge`, and
    ShuffleNetV2's units with :class:`ShuffleUnit`; returns the names of the attentions it
    cannot compute (left as they are, :func:`left_attentions`)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.MultiheadAttention) and SelfAttention.convertible(module):
            model.set_submodule(name, SelfAttention.from_mha(module))
        elif _is_torchvision(module, "ShiftedWindowAttention"):
            model.set_submodule(name, WindowAttention.from_torchvision(module))
        elif _is_torchvision(module, "ShiftedWindowAttentionV2"):
            model.set_submodule(name, WindowAttentionV2.from_torchvision(module))
        elif _is_torchvision(module, "RelativePositionalMultiHeadAttention"):  # MaxViT's
            model.set_submodule(name, GridAttention.from_torchvision(module))
        elif _is_torchvision(module, "PatchMerging"):
            model.set_submodule(name, PatchMerge(module.norm, module.reduction))
        elif _is_torchvision(module, "PatchMergingV2"):
            model.set_submodule(name, PatchMerge(module.norm, module.reduction, norm_after=True))
        elif _is_torchvision(module, "InvertedResidual") and hasattr(module, "branch2"):  # ShuffleNetV2's
            model.set_submodule(name, ShuffleUnit(module.stride, module.branch1, module.branch2))
        elif _is_timm_swin(module, "WindowAttention"):
            model.set_submodule(name, PartitionedWindowAttention.from_timm(module))
        elif _is_timm_swin(module, "PatchMerging"):  # the same four copies, in the same order
            model.set_submodule(name, PatchMerge(module.norm, module.reduction))
        elif _is_timm_attention(module) and _timm_convertible(module):
            model.set_submodule(name, _from_timm(module))
    return list(left_attentions(model))


def why_left(module: nn.Module) -> str | None:
    """What keeps latprune from computing attention ``module`` (once :func:`rewrite_` has run),
    or None where ``module`` is no such attention."""
    if isinstance(module, nn.MultiheadAttention):
        return "keys and values of their own widths, or a bias or zero attention added to them"
    if _is_timm_attention(module):
        return "q/k norms, an output norm, a gate, or biases of its own"
    return None


def branch_end(module: nn.Module) -> nn.Module:
    """Where a residual branch whose output ``module`` computes ends, for zeroing it: an
    attention's output projection, where the attention calls it as a module (latprune's
    ``proj``, timm's ``proj``); any other module itself."""
    if isinstance(module, Attention):
        return module.proj
    if _is_timm_attention(module) and isinstance(getattr(module, "proj", None), nn.Linear):
        return module.proj
    return module


def left_attentions(model: nn.Module) -> dict[str, nn.Module]:
    """The attentions of ``model`` that latprune does not compute (once :func:`rewrite_` has run),
    by name: Torch-Pruning sees each as one leaf (:func:`~latprune.graph.leaf.hidden`) whose
    channels keep their width."""
    return {name: m for name, m in model.named_modules() if why_left(m) is not None}


def sync_attributes_(model: nn.Module) -> nn.Module:
    """Bring the attributes a model's ``forward`` reads back in line with its slimmed layers
    (torchvision's ViT reshapes by ``hidden_dim``)."""
    for module in model.modules():
        conv_proj = getattr(module, "conv_proj", None)
        if isinstance(getattr(module, "hidden_dim", None), int) and isinstance(conv_proj, nn.Conv2d):
            module.hidden_dim = conv_proj.out_channels
        attention = getattr(module, "self_attention", None)
        if isinstance(attention, Attention) and isinstance(getattr(module, "num_heads", None), int):
            module.num_heads = attention.num_heads
    return model


class KeptWholePruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning's view of an attention latprune does not compute: a leaf whose input and
    output channels (``widths``, recorded as it ran) keep their width, so it never asks to prune them."""

    def __init__(self, widths: dict[nn.Module, tuple[int, int]]) -> None:
        super().__init__()
        self.widths = widths

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        raise NotImplementedError("the channels through an attention latprune does not rewrite keep their width")

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        raise NotImplementedError("the channels through an attention latprune does not rewrite keep their width")

    def get_out_channels(self, layer: nn.Module) -> int | None:
        return self.widths.get(layer, (None, None))[1]

    def get_in_channels(self, layer: nn.Module) -> int | None:
        return self.widths.get(layer, (None, None))[0]


def customized_pruners(kept: Iterable[nn.Module] = (), widths: dict[nn.Module, tuple[int, int]] | None = None
                       ) -> dict[type, tp.pruner.function.BasePruningFunc]:
    """Torch-Pruning's pruners of latprune's leaves, and of the types of the attentions ``kept``
    whole (:func:`left_attentions`), whose channels ``widths`` records."""
    pruner, whole = AttentionPruner(), KeptWholePruner(widths if widths is not None else {})
    return {Attention: pruner, SelfAttention: pruner, WindowAttention: pruner, WindowAttentionV2: pruner,
            GridAttention: pruner, PartitionedWindowAttention: pruner,
            PatchMerge: PatchMergePruner(), ChannelShuffle: ChannelShufflePruner()} | {type(m): whole for m in kept}
