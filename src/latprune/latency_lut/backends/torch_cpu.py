"""PyTorch eager on the CPU: for users who deploy the nn.Module itself."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from latprune.graph.transformer import attention_unit
from latprune.graph.units import LayerKey
from latprune.latency_lut.backends import Backend
from latprune.latency_lut.timing import Latency, TimingConfig, time_callable
from latprune.runtime.fingerprint import host_fingerprint

_ACTS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "hardswish": nn.Hardswish,
         "sigmoid": nn.Sigmoid, "hardsigmoid": nn.Hardsigmoid, "gelu": nn.GELU}


class _Concat(nn.Module):
    def forward(self, *pieces: torch.Tensor) -> torch.Tensor:
        return torch.cat(pieces, dim=1)


class _Scale(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x.mean((2, 3), keepdim=True)


class _UnitModule(nn.Module):
    """One unit at ``key``'s widths: its layer, then BatchNorm, residual add and activation."""

    def __init__(self, key: LayerKey) -> None:
        super().__init__()
        if key.op == "conv":
            self.layer: nn.Module = nn.Conv2d(key.cin, key.cout, key.kernel, key.stride, key.padding,
                                              key.dilation, key.groups, bias=key.bias)
        elif key.op == "attention":
            self.layer = attention_unit(key)
        elif key.op == "concat":
            self.layer = _Concat()
        elif key.op == "scale":
            self.layer = _Scale()
        else:
            self.layer = nn.Linear(key.cin, key.cout, bias=key.bias)
        self.bn = nn.BatchNorm2d(key.cout) if key.bn and key.op in ("conv", "concat") else nn.Identity()
        self.act = _ACTS[key.act]() if key.act else nn.Identity()
        self.pieces = len(key.pieces()) if key.op == "concat" else 1

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The unit on its input (a concatenation's: its pieces), then the residual, if any."""
        y = self.bn(self.layer(*inputs[:self.pieces]))
        if len(inputs) > self.pieces:
            y = y + inputs[self.pieces]
        return self.act(y)


def unit_inputs(key: LayerKey, module: nn.Module) -> tuple[torch.Tensor, ...]:
    """Random inputs of ``module`` (a :class:`_UnitModule` at ``key``): a convolution's or a
    concatenation's or a scaling's feature maps, a linear layer's tokens, and a residual where
    it adds one."""
    if key.op == "concat":
        return tuple(torch.randn(key.batch, width, *key.in_hw) for width in key.pieces())
    spatial = key.op in ("conv", "scale")
    x = torch.randn(key.batch, key.cin, *key.in_hw) if spatial else torch.randn(key.batch, *key.in_hw, key.cin)
    if not key.add:
        return (x,)
    with torch.inference_mode():
        return x, torch.randn_like(module(x))


class TorchCpuBackend(Backend):
    """torch eager, ``torch.set_num_threads(threads)``, inference mode."""

    name = "torch-cpu"
    preferred_align = 8

    def fingerprint(self) -> dict[str, Any]:
        return {
            "backend": self.name, "runtime": "torch", "runtime_version": torch.__version__,
            "threads": self.threads, "precision": "fp32", "device": host_fingerprint()["cpu"],
            **host_fingerprint(),
        }

    def _time(self, module: nn.Module, *inputs: torch.Tensor, timing: TimingConfig | None = None) -> Latency:
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        module.eval()
        try:
            with torch.inference_mode():
                return time_callable(lambda: module(*inputs), timing or self.timing)
        finally:
            torch.set_num_threads(previous)

    def measure_unit(self, key: LayerKey) -> Latency:
        module = _UnitModule(key)
        return self._time(module, *unit_inputs(key, module))

    def measure_model(self, model: nn.Module, input_shape: tuple[int, ...]) -> Latency:
        return self._time(model, torch.randn(*input_shape), timing=self.model_timing)
