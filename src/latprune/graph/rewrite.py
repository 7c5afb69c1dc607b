"""The rewrites that make a model prunable by latprune, in place and keeping its function:
self-attention into :class:`~latprune.graph.transformer.Attention`, Swin's patch merging into
:class:`~latprune.graph.transformer.PatchMerge`, ShuffleNetV2's units into
:class:`~latprune.graph.shuffle.ShuffleUnit`; the Torch-Pruning pruners of those leaves; and
the attributes a slimmed model's ``forward`` reads."""

from __future__ import annotations

import torch_pruning as tp
from torch import nn

from latprune.graph.shuffle import ChannelShuffle, ChannelShufflePruner, ShuffleUnit
from latprune.graph.transformer import (
    Attention,
    AttentionPruner,
    PatchMerge,
    PatchMergePruner,
    SelfAttention,
    WindowAttention,
)


def _is_torchvision(module: nn.Module, name: str) -> bool:
    return type(module).__name__ == name and type(module).__module__.startswith("torchvision.")


def _is_timm_attention(module: nn.Module) -> bool:
    return type(module).__module__.startswith("timm.") and type(module).__name__ == "Attention"


def _timm_convertible(module: nn.Module) -> bool:
    """timm's plain ``Attention``: no q/k norms, no output norm, no gate."""
    plain = all(isinstance(getattr(module, n, nn.Identity()), nn.Identity) for n in ("q_norm", "k_norm", "norm"))
    return plain and getattr(module, "gate", None) is None and isinstance(getattr(module, "qkv", None), nn.Linear)


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
    ``ShiftedWindowAttention``), Swin's ``PatchMerging`` with :class:`PatchMerge`, and
    ShuffleNetV2's units with :class:`ShuffleUnit`; returns the names
    of the attentions it cannot compute (left as they are)."""
    left = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.MultiheadAttention):
            if SelfAttention.convertible(module):
                model.set_submodule(name, SelfAttention.from_mha(module))
            else:
                left.append(name)
        elif _is_torchvision(module, "ShiftedWindowAttention"):
            model.set_submodule(name, WindowAttention.from_torchvision(module))
        elif _is_torchvision(module, "PatchMerging"):
            model.set_submodule(name, PatchMerge(module.norm, module.reduction))
        elif _is_torchvision(module, "InvertedResidual") and hasattr(module, "branch2"):  # ShuffleNetV2's
            model.set_submodule(name, ShuffleUnit(module.stride, module.branch1, module.branch2))
        elif _is_timm_attention(module):
            if _timm_convertible(module):
                model.set_submodule(name, _from_timm(module))
            else:
                left.append(name)
    return left


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


def customized_pruners() -> dict[type, tp.pruner.function.BasePruningFunc]:
    pruner = AttentionPruner()
    return {Attention: pruner, SelfAttention: pruner, WindowAttention: pruner, PatchMerge: PatchMergePruner(),
            ChannelShuffle: ChannelShufflePruner()}
