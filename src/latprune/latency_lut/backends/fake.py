"""A deterministic backend for tests: latency from a formula, no timing noise.

Unit latency is a staircase in channels (widths round up to multiples of 4,
as SIMD kernels do) plus a per-kernel launch cost; a whole model costs the
sum of its units times 1.1 plus 0.02 ms, so calibration has something to fit.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from latprune.graph.units import MOVES, LayerKey
from latprune.latency_lut.backends import Backend
from latprune.latency_lut.timing import Latency

STEP = 4
LAUNCH_MS = 0.002
MS_PER_MMAC = 0.01
_MODEL_MS: dict[tuple[Any, ...], float] = {}


def fake_unit_ms(key: LayerKey) -> float:
    def up(c: int) -> int:
        return int(math.ceil(c / STEP) * STEP)

    if key.op in MOVES:  # a copy of every element it joins or scales
        return LAUNCH_MS + MS_PER_MMAC * replace(key, cout=up(key.cout)).elements / 1e6
    if key.op == "attention":  # its cout counts heads
        return LAUNCH_MS * 4 + MS_PER_MMAC * replace(key, cin=up(key.cin)).macs / 1e6
    padded = replace(key, cin=up(key.cin), cout=up(key.cout),
                     groups=up(key.groups) if key.groups > 1 else 1)
    return LAUNCH_MS + MS_PER_MMAC * padded.macs / 1e6


class FakeBackend(Backend):
    name = "fake"

    def fingerprint(self) -> dict[str, Any]:
        return {"backend": self.name, "runtime": "formula", "runtime_version": "1",
                "threads": self.threads, "precision": "fp32", "device": "fake"}

    def measure_unit(self, key: LayerKey) -> Latency:
        ms = fake_unit_ms(key)
        return Latency(ms, ms, ms, 1)

    def measure_model(self, model: nn.Module, input_shape: tuple[int, ...]) -> Latency:
        from latprune.graph.channels import ChannelGraph

        shapes = tuple((name, type(m).__name__, tuple(getattr(m, "weight", None).shape)
                        if isinstance(getattr(m, "weight", None), torch.Tensor) else ())
                       for name, m in model.named_modules())
        # the same structure costs the same under the same formula: trace it once
        key = (shapes, tuple(input_shape), STEP, LAUNCH_MS, MS_PER_MMAC)
        if key not in _MODEL_MS:
            graph = ChannelGraph.build(model, input_shape)
            _MODEL_MS[key] = 1.1 * sum(fake_unit_ms(u.base) for u in graph.units) + 0.02
        ms = _MODEL_MS[key]
        return Latency(ms, ms, ms, 1)
