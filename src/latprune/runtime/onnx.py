"""ONNX bytes from PyTorch: the TorchScript and dynamo exporters, onnx.checker and
shape inference, and the parity check of ONNX Runtime against PyTorch. Shared by
the latency backends (a unit or model per measurement) and the exporters (the
deliverable).

- :func:`to_onnx_bytes`: the fast path for the pruner's closed loop, which
  exports a model per iteration (TorchScript exporter, fixed shape, no checks);
- :func:`checked_onnx`: the checked bytes of the deliverable, in memory.

A model whose weights pass protobuf's 2 GiB limit is exported with external data
(:mod:`latprune.runtime.large_onnx`): the bytes are its graph, its weights beside them.
An adaptive average pooling whose output size does not divide its input (VGG's and
AlexNet's at inputs under 224×224) exports as two products with its averaging matrices
(:func:`exportable_pooling`), which ONNX has no pooling for.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import re
import warnings
from dataclasses import dataclass, replace
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from latprune.errors import BackendError, ExportError, SpecError
from latprune.parity import PARITY_TOL, Parity
from latprune.runtime.large_onnx import (
    ExternalOnnx,
    check_external,
    exported_external,
    needs_external_data,
    onnx_size,
    with_graph,
)
from latprune.runtime.ort import make_session

OPSET = 17           # TorchScript exporter
DYNAMO_OPSET = 18    # the dynamo exporter's lowest implemented opset (it up-converts anything lower)
EXPORTERS = ("auto", "dynamo", "torchscript")
INPUT_NAME, OUTPUT_NAME = "input", "output"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters' warnings, log records and progress prints (stdout may
    carry --json); failures still raise, and are reported by the caller."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def failure_reason(exc: BaseException) -> str:
    """One line on why an exporter failed: the underlying exception where it wraps one."""
    cause = exc.__cause__ or exc
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(cause)).splitlines() if ln.strip()]
    return f"{type(cause).__name__}: {lines[0][:300] if lines else ''}"


def averaging_matrix(size: int, out: int) -> torch.Tensor:
    """The ``out`` × ``size`` matrix of adaptive average pooling along one axis: row i averages
    the inputs from floor(i·size/out) to ceil((i+1)·size/out), as PyTorch's pooling does.

    >>> averaging_matrix(2, 3)
    tensor([[1.0000, 0.0000],
            [0.5000, 0.5000],
            [0.0000, 1.0000]])
    """
    matrix = torch.zeros(out, size)
    for i in range(out):
        start, end = (i * size) // out, math.ceil((i + 1) * size / out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def _pooled_by_products(pool: nn.AdaptiveAvgPool2d, x: torch.Tensor) -> torch.Tensor:
    """``pool(x)``, as products with its averaging matrices where its output size does not
    divide the input's (ONNX's pooling takes one kernel size), as the pooling itself otherwise."""
    size = tuple(int(s) for s in x.shape[-2:])
    wanted = pool.output_size if isinstance(pool.output_size, tuple) else (pool.output_size,) * 2
    out = tuple(s if o is None else int(o) for s, o in zip(size, wanted))
    if all(s % o == 0 for s, o in zip(size, out)):
        return nn.functional.adaptive_avg_pool2d(x, out)
    rows, cols = (averaging_matrix(s, o).to(x) for s, o in zip(size, out))
    return rows @ x @ cols.T


@contextlib.contextmanager
def exportable_pooling(model: nn.Module) -> Iterator[None]:
    """While it lasts, each :class:`~torch.nn.AdaptiveAvgPool2d` of ``model`` pools through
    :func:`_pooled_by_products`: the same result, in ops ONNX has at every input size."""
    pools = {m: vars(m).get("forward") for m in model.modules() if type(m) is nn.AdaptiveAvgPool2d}
    for pool in pools:
        pool.forward = lambda x, pool=pool: _pooled_by_products(pool, x)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for pool, own in pools.items():  # a forward set on the instance before is set back
            if own is None:
                del pool.forward
            else:
                pool.forward = own


def to_onnx_bytes(model: nn.Module, input_shape: tuple[int, ...], opset: int = OPSET,
                  dynamic_batch: bool = False) -> bytes:
    """Serialise ``model`` to ONNX with the TorchScript-based exporter.

    This is the fast path: ~30x faster than the dynamo exporter (0.1 s vs 4 s
    for the embedded ResNet-20), which matters when the closed loop exports a
    model per iteration, and it produces the same graph for these conv nets.
    ``dynamic_batch`` makes dimension 0 of input and output symbolic (``batch``).
    A model whose weights pass protobuf's limit comes back as :class:`ExternalOnnx`.
    """
    model = model.eval()
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None

    def export_to(f: str | io.BytesIO) -> None:
        torch.onnx.export(model, (torch.randn(*input_shape),), f, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
                          dynamic_axes=axes)

    with quiet(), exportable_pooling(model):
        try:
            if needs_external_data(model):
                return exported_external(export_to)
            buf = io.BytesIO()
            export_to(buf)
        except Exception as exc:
            raise ExportError(f"torch.onnx.export failed: {failure_reason(exc)}") from None
    return buf.getvalue()


def dynamo_onnx_bytes(model: nn.Module, input_shape: tuple[int, ...], dynamic_batch: bool = False,
                      max_batch: int = 64) -> bytes:
    """Serialise ``model`` with the dynamo-based exporter (``torch.export`` underneath), opset 18."""
    model = model.eval()
    shapes = ({0: torch.export.Dim("batch", min=1, max=max_batch)},) if dynamic_batch else None
    with quiet(), exportable_pooling(model):
        try:
            program = torch.onnx.export(model, (torch.randn(*input_shape),), dynamo=True, opset_version=DYNAMO_OPSET,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes=shapes, verbose=False)
        except Exception as exc:
            raise ExportError(f"the dynamo ONNX exporter failed: {failure_reason(exc)}") from None
    if program is None:
        raise ExportError("the dynamo ONNX exporter returned no program")
    if needs_external_data(model):
        return exported_external(lambda path: program.save(path, external_data=True))
    return program.model_proto.SerializeToString()


@dataclass(frozen=True)
class OnnxReport:
    """What an ONNX export produced and how it was checked.

    ``max_abs_diff`` is the worst |ONNX Runtime - PyTorch| over the parity
    samples (fp32), ``max_abs_ref`` the largest |PyTorch output| (:class:`~latprune.parity.Parity`); ``exporter`` is ``"dynamo"`` or ``"torchscript"``, and
    ``fallback_reason`` says why the dynamo exporter was not used when
    ``exporter="auto"`` fell back."""

    path: str
    opset: int
    max_abs_diff: float
    size_bytes: int
    exporter: str = "torchscript"
    dynamic_batch: bool = False
    fallback_reason: str | None = None
    input_shape: tuple[Any, ...] = ()     # as in the graph: ints, or "batch" for a dynamic dimension
    output_shape: tuple[Any, ...] = ()    # from ONNX shape inference
    parity_batches: tuple[int, ...] = ()  # batch sizes the parity check ran at
    external_data: str | None = None      # the weights' file beside the graph (a model past 2 GiB)
    max_abs_ref: float = 0.0              # the largest |PyTorch output|, which scales the tolerance

    @property
    def parity(self) -> Parity:
        return Parity(self.max_abs_diff, self.max_abs_ref)


def _dims(value_info: Any) -> tuple[Any, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)


def check_onnx(data: bytes) -> tuple[bytes, tuple[Any, ...], tuple[Any, ...]]:
    """onnx.checker (full check) and strict shape inference; returns the model with
    inferred shapes (with its external data, :class:`ExternalOnnx`), and the input and output shapes."""
    import onnx

    try:
        model = onnx.load_from_string(data)
        if isinstance(data, ExternalOnnx):
            check_external(data)
        else:
            onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker or shape inference rejected the export: {type(exc).__name__}: "
                          f"{str(exc)[:500]}") from None
    if len(inferred.graph.input) != 1 or len(inferred.graph.output) < 1:
        raise ExportError(f"expected one graph input and at least one output, got {len(inferred.graph.input)} "
                          f"and {len(inferred.graph.output)}")
    graph = with_graph(data, inferred.SerializeToString())
    return graph, _dims(inferred.graph.input[0]), _dims(inferred.graph.output[0])


def parity_inputs(input_shape: tuple[int, ...], dynamic_batch: bool, max_batch: int,
                  samples: int = 3, seed: int = 0) -> list[torch.Tensor]:
    """Random inputs for a parity check: ``samples`` at the nominal shape, and,
    for a dynamic batch, one more at another batch size."""
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(*input_shape, generator=gen) for _ in range(samples)]
    if dynamic_batch:
        other = min(max_batch, input_shape[0] + 2)
        if other != input_shape[0]:
            xs.append(torch.randn(other, *input_shape[1:], generator=gen))
    return xs


def parity(model: nn.Module, run: Any, inputs: list[torch.Tensor], device: str = "cpu") -> Parity:
    """Compare ``run`` with ``model`` over ``inputs``; ``run`` maps a float32 array to the
    first output array; the reference ``model`` runs on ``device``."""
    worst, scale = 0.0, 0.0
    for x in inputs:
        with torch.no_grad():
            ref = model(x.to(device)).cpu().numpy()
        got = np.asarray(run(x.numpy()))
        if got.shape != ref.shape:
            raise ExportError(f"exported model returns shape {got.shape} where PyTorch returns {ref.shape}")
        worst = max(worst, float(np.max(np.abs(ref - got))))
        scale = max(scale, float(np.max(np.abs(ref))))
    return Parity(worst, scale)


def checked_onnx(model: nn.Module, input_shape: tuple[int, ...], threads: int = 1, tol: float = PARITY_TOL,
                 samples: int = 3, exporter: str = "torchscript", dynamic_batch: bool = False,
                 max_batch: int = 64, path: str = "") -> tuple[OnnxReport, bytes]:
    """Export ``model`` to ONNX bytes, check them, and compare ONNX Runtime with PyTorch.

    ``exporter``: ``"auto"`` (dynamo, falling back to TorchScript when the dynamo
    exporter fails or its graph fails the checks), ``"dynamo"`` or
    ``"torchscript"`` (the default: the graph the pruner's closed loop measured).
    ``dynamic_batch`` exports dimension 0 as symbolic, up to ``max_batch``.
    Parity runs on ``samples`` random inputs (and one more at another batch
    size when the batch is dynamic). Raises :class:`ExportError` when a check
    fails or the max abs diff exceeds ``tol`` plus :data:`~latprune.parity.PARITY_RTOL` of the largest
    output (:class:`~latprune.parity.Parity`). ``path`` is only recorded in the report.
    """
    if exporter not in EXPORTERS:
        raise SpecError(f"unknown ONNX exporter {exporter!r}; known: {', '.join(EXPORTERS)}")
    if dynamic_batch and max_batch < input_shape[0]:
        raise SpecError(f"max_batch {max_batch} is below the model's batch {input_shape[0]}")
    model = model.eval()
    inputs = parity_inputs(input_shape, dynamic_batch, max_batch, samples)

    def attempt(name: str) -> tuple[OnnxReport, bytes]:
        raw = (dynamo_onnx_bytes(model, input_shape, dynamic_batch, max_batch) if name == "dynamo"
               else to_onnx_bytes(model, input_shape, dynamic_batch=dynamic_batch))
        data, in_shape, out_shape = check_onnx(raw)
        session = make_session(data, threads)
        feed = session.get_inputs()[0].name
        found = parity(model, lambda x: session.run(None, {feed: x})[0], inputs)
        if not found.within(tol):
            raise ExportError(f"ONNX Runtime output differs from PyTorch by {found.describe(tol)}; "
                              "the exported graph is not faithful")
        import onnx

        opset = next(o.version for o in onnx.load_from_string(data).opset_import if o.domain in ("", "ai.onnx"))
        external = data.location if isinstance(data, ExternalOnnx) else None
        return OnnxReport(path, int(opset), found.max_abs_diff, onnx_size(data), name, dynamic_batch, None,
                          in_shape, out_shape, tuple(sorted({int(x.shape[0]) for x in inputs})), external,
                          found.max_abs_ref), data

    if exporter == "auto":
        try:
            return attempt("dynamo")
        except (ExportError, BackendError) as exc:  # export, checks, ONNX Runtime loading, or parity
            report, data = attempt("torchscript")
            return replace(report, fallback_reason=str(exc)), data
    return attempt(exporter)
