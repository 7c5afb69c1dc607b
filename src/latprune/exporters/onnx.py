"""ONNX export with onnx.checker and an ONNX Runtime parity check against PyTorch."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from latprune._io import atomic_write_bytes
from latprune.errors import ExportError

OPSET = 17
PARITY_TOL = 1e-4


def to_onnx_bytes(model: nn.Module, input_shape: tuple[int, ...], opset: int = OPSET) -> bytes:
    """Serialise ``model`` at a fixed input shape to ONNX.

    Uses the TorchScript-based exporter: it is ~30x faster than the dynamo one
    (0.1 s vs 4 s for the embedded ResNet-20), which matters when the closed
    loop exports a model per iteration, and produces the same graph for these
    conv nets.
    """
    model = model.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (torch.randn(*input_shape),), buf, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["output"], do_constant_folding=True)
        except Exception as exc:
            raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from None
    return buf.getvalue()


@dataclass(frozen=True)
class OnnxReport:
    path: str
    opset: int
    max_abs_diff: float
    size_bytes: int


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path, threads: int = 1,
                tol: float = PARITY_TOL, samples: int = 3) -> OnnxReport:
    """Export, check with onnx.checker, compare ONNX Runtime with PyTorch on
    ``samples`` random inputs, then write ``path`` atomically. Raises
    :class:`ExportError` (and writes nothing) when the max abs diff exceeds ``tol``."""
    import onnx

    from latprune.latency_lut.backends.ort_cpu import make_session

    data = to_onnx_bytes(model, input_shape)
    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejected the export: {exc}") from None
    session = make_session(data, threads)
    name = session.get_inputs()[0].name
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for _ in range(samples):
        x = torch.randn(*input_shape, generator=gen)
        with torch.no_grad():
            ref = model(x).numpy()
        got = session.run(None, {name: x.numpy()})[0]
        worst = max(worst, float(np.max(np.abs(ref - got))))
    if not worst <= tol:
        raise ExportError(f"ONNX Runtime output differs from PyTorch by {worst:.2e} (> {tol:.0e}); "
                          "the exported graph is not faithful, nothing was written")
    atomic_write_bytes(path, data)
    return OnnxReport(str(path), OPSET, worst, len(data))
