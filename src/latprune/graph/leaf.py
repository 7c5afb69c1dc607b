"""Modules Torch-Pruning sees as one leaf: while it traces, their output depends on their
input by a single autograd step, so it never maps channels through what they do inside
(an attention's reshapes by heads, a channel shuffle's permutation). Each such module
also registers a pruner with Torch-Pruning for its input and output channels."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

_OPAQUE = [False]  # set while Torch-Pruning traces: an attention is then one step of the autograd graph


class _Opaque(torch.autograd.Function):
    """``out``, as one autograd step from ``x``: hides an attention's inside from the tracer."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return out.clone()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple[None, None]:  # type: ignore[override]
        return None, None


def leaf(compute: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``compute(x)``; while Torch-Pruning traces, as one autograd step from ``x``."""
    if not _OPAQUE[0]:
        return compute(x)
    with torch.no_grad():
        out = compute(x)
    return _Opaque.apply(x, out)


@contextlib.contextmanager
def opaque() -> Iterator[None]:
    """Within it, each attention's output depends on its input by one autograd step, so
    Torch-Pruning sees the module as a leaf whose inside (reshapes by heads) it need not map."""
    _OPAQUE[0] = True
    try:
        yield
    finally:
        _OPAQUE[0] = False
