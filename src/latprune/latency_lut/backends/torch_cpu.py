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
         "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


class _UnitModule(nn.Module):
    def __init__(self, key: LayerKey) -> None:
        super().__init__()
        if key.op == "conv":
            self.layer: nn.Module = nn.Conv2d(key.cin, key.cout, key.kernel, key.stride, key.padding,
                                              key.dilation, key.groups, bias=key.bias)
        elif key.op == "attention":
            self.layer = attention_unit(key)
        else:
            self.layer = nn.Linear(key.cin, key.cout, bias=key.bias)
        self.bn = nn.BatchNorm2d(key.cout) if key.bn and key.op == "conv" else nn.Identity()
        self.act = _ACTS[key.act]() if key.act else nn.Identity()
        self.add = key.add

    def forward(self, x: torch.Tensor, r: torch.Tensor | None = None) -> torch.Tensor:
        y = self.bn(self.layer(x))
        if r is not None:
            y = y + r
        return self.act(y)


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
        if key.op == "conv":
            x = torch.randn(key.batch, key.cin, *key.in_hw)
        else:
            x = torch.randn(key.batch, *key.in_hw, key.cin)
        if key.add:
            with torch.inference_mode():
                r = torch.randn_like(module(x))
            return self._time(module, x, r)
        return self._time(module, x)

    def measure_model(self, model: nn.Module, input_shape: tuple[int, ...]) -> Latency:
        return self._time(model, torch.randn(*input_shape), timing=self.model_timing)
