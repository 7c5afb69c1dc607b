"""Modules Torch-Pruning sees as one leaf: while it traces, their output depends on their
input by a single autograd step, so it never maps channels through what they do inside
(an attention's reshapes by heads, a channel shuffle's permutation). Each such module
also registers a pruner with Torch-Pruning for its input and output channels. latprune's
own modules call :func:`leaf` in their ``forward``; a module of the user's model that
latprune does not rewrite is made one from outside, by :func:`hidden`."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

_OPAQUE = [False]  # set while Torch-Pruning traces: an attention is then one step of the autograd graph


class _Opaque(torch.autograd.Function):
    """``out``, as one autograd step from ``inputs``: hides an attention's inside from the tracer."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.inputs = len(inputs)
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, ...]:  # type: ignore[override]
        return (None,) * (1 + ctx.inputs)


def leaf(compute: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``compute(x)``; while Torch-Pruning traces, as one autograd step from ``x``."""
    if not _OPAQUE[0]:
        return compute(x)
    with torch.no_grad():
        out = compute(x)
    return _Opaque.apply(out, x)


@contextlib.contextmanager
def opaque() -> Iterator[None]:
    """Within it, each attention's output depends on its input by one autograd step, so
    Torch-Pruning sees the module as a leaf whose inside (reshapes by heads) it need not map."""
    _OPAQUE[0] = True
    try:
        yield
    finally:
        _OPAQUE[0] = False


@contextlib.contextmanager
def hidden(modules: Sequence[nn.Module], widths: dict[nn.Module, tuple[int, int]]) -> Iterator[None]:
    """Within it, and within :func:`opaque`, each of ``modules`` (an attention latprune does not
    rewrite) returns its output as one autograd step from its tensor inputs, as :func:`leaf`
    makes latprune's own modules do; ``widths`` records each one's input and output channels
    (last dimensions) for its pruner. Torch-Pruning then never maps channels through its
    inside, where an attention's reshapes can make its index mapping grow without bound."""
    def step(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        first = out[0] if isinstance(out, tuple) else out
        inputs = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if not _OPAQUE[0] or not inputs or not isinstance(first, torch.Tensor):
            return None
        widths[module] = (inputs[0].shape[-1], first.shape[-1])
        first = _Opaque.apply(first.detach(), *inputs)
        return (first, *out[1:]) if isinstance(out, tuple) else first

    handles = [m.register_forward_hook(step, with_kwargs=True) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
