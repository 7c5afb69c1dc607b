"""ONNX export: the checked ONNX file (dynamo exporter first, TorchScript as the
fallback; onnx.checker, shape inference, ONNX Runtime parity against PyTorch;
:mod:`latprune.runtime.onnx`), and a runner for ONNX bundles.

No graph simplifier runs: onnxslim 0.1.98 changed no measured ORT CPU latency
(default, MobileNetV2, EfficientNet-B0 within ±2%; ORT's own graph optimiser
already folds what it removes), so it is not a dependency.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from latprune.latency_lut.timing import Latency, TimingConfig, time_callable
from latprune.runtime.large_onnx import write_onnx
from latprune.runtime.onnx import (  # noqa: F401
    EXPORTERS,
    PARITY_TOL,
    OnnxReport,
    checked_onnx,
    parity,
    parity_inputs,
    to_onnx_bytes,
)
from latprune.runtime.ort import make_session


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path, threads: int = 1,
                tol: float = PARITY_TOL, samples: int = 3, exporter: str = "torchscript",
                dynamic_batch: bool = False, max_batch: int = 64) -> OnnxReport:
    """:func:`~latprune.runtime.onnx.checked_onnx`, then write ``path`` atomically
    (nothing is written when a check fails), and its weights beside it
    (``report.external_data``) for a model past protobuf's 2 GiB."""
    report, data = checked_onnx(model, input_shape, threads, tol, samples, exporter, dynamic_batch, max_batch,
                                str(path))
    written = write_onnx(path, data)
    return replace(report, external_data=written[1].name) if len(written) > 1 else report


class OnnxRunner:
    """An ONNX file on ONNX Runtime's CPU provider with a fixed thread count:
    ``runner(x)`` maps a float32 array to the list of output arrays."""

    def __init__(self, path: str | os.PathLike[str], threads: int) -> None:
        self.threads = threads
        self.session = make_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        return list(self.session.run(None, {self.input_name: x}))

    def measure(self, x: np.ndarray, timing: TimingConfig) -> Latency:
        """Wall-clock latency of one ``session.run`` on ``x`` (warm-up, repeats, median, p10/p90)."""
        feeds = {self.input_name: x}
        return time_callable(lambda: self.session.run(None, feeds), timing)

    def fingerprint(self) -> dict[str, Any]:
        """ort-cpu's fingerprint at this thread count (as in every LUT)."""
        from latprune.latency_lut.backends import get_backend

        return get_backend("ort-cpu", self.threads).fingerprint()
