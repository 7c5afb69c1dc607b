"""AOTInductor: ``torch.export`` + an AOTInductor package (``.pt2``) of the slimmed model.

The package holds compiled kernels and weights; it loads with
``torch._inductor.aoti_load_package(path)`` and runs with nothing but PyTorch
(no latprune, no model code). On the CPU the generated kernels use the thread
count fixed at compile time (inductor's ``cpp.threads``), so the package
records it, and it is part of the fingerprint.

>>> report = export_aoti(model, (1, 3, 224, 224), "model.pt2", device="cpu", threads=1)  # doctest: +SKIP
>>> report.max_abs_diff <= 1e-4  # doctest: +SKIP
True
"""

from __future__ import annotations

import copy
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from latprune._io import atomic_write_bytes
from latprune.errors import BackendError, ExportError, SpecError
from latprune.latency_lut.timing import Latency, TimingConfig, time_callable, time_cuda
from latprune.parity import Parity
from latprune.runtime.fingerprint import host_fingerprint
from latprune.runtime.onnx import PARITY_TOL, failure_reason, parity, parity_inputs, quiet

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class AotiReport:
    """What an AOTInductor export produced; ``max_abs_diff`` is the worst
    |package - eager PyTorch| over the parity inputs (fp32), ``max_abs_ref`` the
    largest |eager output| (:class:`~latprune.parity.Parity`)."""

    path: str
    device: str
    threads: int
    max_abs_diff: float
    size_bytes: int
    dynamic_batch: bool
    input_shape: tuple[Any, ...]     # ints, "batch" for a dynamic dimension
    output_shape: tuple[Any, ...]
    parity_batches: tuple[int, ...]
    compile_s: float
    torch_version: str
    max_abs_ref: float = 0.0

    @property
    def parity(self) -> Parity:
        return Parity(self.max_abs_diff, self.max_abs_ref)


def check_device(device: str) -> None:
    """Refuse unknown devices and a CUDA device on a machine without one."""
    if device not in DEVICES:
        raise SpecError(f"unknown device {device!r} for AOTInductor; known: {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendError("an AOTInductor package for CUDA needs a CUDA GPU here, and torch.cuda.is_available() "
                           "is False; build it on the target machine, or for device 'cpu'")


def export_aoti(model: nn.Module, input_shape: tuple[int, ...], path: str | Path, device: str = "cpu",
                threads: int = 1, dynamic_batch: bool = False, max_batch: int = 64, tol: float = PARITY_TOL,
                samples: int = 3) -> AotiReport:
    """``torch.export`` the model, compile and package it with AOTInductor for
    ``device``, load the package back, compare it with eager PyTorch, then write
    ``path`` atomically. ``threads``: CPU threads compiled into the kernels.
    Raises :class:`ExportError` (and writes nothing) on failure or when the max
    abs diff exceeds ``tol`` plus a share of the largest output (:class:`~latprune.parity.Parity`)."""
    check_device(device)
    if threads < 1:
        raise SpecError(f"threads must be at least 1, got {threads}")
    if dynamic_batch and max_batch < input_shape[0]:
        raise SpecError(f"max_batch {max_batch} is below the model's batch {input_shape[0]}")
    eager = copy.deepcopy(model).eval().to(device)
    # A dimension of size 1 is specialised by torch.export: trace a dynamic batch at 2.
    example = torch.randn(max(2, input_shape[0]) if dynamic_batch else input_shape[0], *input_shape[1:], device=device)
    shapes = ({0: torch.export.Dim("batch", min=1, max=max_batch)},) if dynamic_batch else None
    t0 = time.time()
    with quiet():
        try:
            program = torch.export.export(eager, (example,), dynamic_shapes=shapes)
        except Exception as exc:
            raise ExportError(f"torch.export failed: {failure_reason(exc)}") from None
        configs: dict[str, Any] = {"cpp.threads": threads} if device == "cpu" else {}
        buf = io.BytesIO()
        try:
            torch._inductor.aoti_compile_and_package(program, package_path=buf, inductor_configs=configs)
        except Exception as exc:
            raise ExportError(f"AOTInductor compilation failed: {failure_reason(exc)} "
                              "(on the CPU it needs a C++ compiler, e.g. g++)") from None
    compile_s = time.time() - t0
    data = buf.getvalue()
    staged = Path(path).with_name(f".{Path(path).name}.check.pt2")
    try:
        atomic_write_bytes(staged, data)
        runner = AotiRunner(staged, device, threads)
        inputs = parity_inputs(input_shape, dynamic_batch, max_batch, samples)
        found = parity(eager, lambda x: runner(x)[0], inputs, device)
        out_shape = runner(inputs[0].numpy())[0].shape
    finally:
        if staged.exists():
            staged.unlink()
    if not found.within(tol):
        raise ExportError(f"the AOTInductor package differs from eager PyTorch by {found.describe(tol)}; "
                          "nothing was written")
    atomic_write_bytes(path, data)
    in_shape = (("batch",) if dynamic_batch else (input_shape[0],)) + tuple(input_shape[1:])
    out = (("batch",) if dynamic_batch else (int(out_shape[0]),)) + tuple(int(d) for d in out_shape[1:])
    return AotiReport(str(path), device, threads, found.max_abs_diff, len(data), dynamic_batch, in_shape, out,
                      tuple(sorted({int(x.shape[0]) for x in inputs})), round(compile_s, 2), torch.__version__,
                      found.max_abs_ref)


class AotiRunner:
    """A loaded AOTInductor package: ``runner(x)`` maps a float32 array to the list
    of output arrays; :meth:`enqueue` runs on a prepared device tensor (for timing)."""

    def __init__(self, path: str | os.PathLike[str], device: str = "cpu", threads: int = 1) -> None:
        check_device(device)
        self.device, self.threads = device, threads
        try:
            with quiet():
                self.model = torch._inductor.aoti_load_package(os.fspath(path))
        except Exception as exc:
            raise ExportError(f"AOTInductor could not load {path}: {type(exc).__name__}: {str(exc)[:300]} "
                              "(built by another PyTorch version or for another device?)") from None

    def _outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.inference_mode():
            out = self.model(x)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        return [o.detach().cpu().numpy() for o in self._outputs(self.prepare(x))]

    def prepare(self, x: np.ndarray) -> torch.Tensor:
        """``x`` as a tensor on the package's device, for :meth:`enqueue`."""
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    def enqueue(self, x: torch.Tensor) -> None:
        """One inference; on CUDA it only enqueues (time it with CUDA events)."""
        self._outputs(x)

    def measure(self, x: np.ndarray, timing: TimingConfig) -> Latency:
        """Latency of one call on ``x``: wall clock on the CPU (torch threads set to the
        compiled count), CUDA events on a GPU."""
        tensor = self.prepare(x)
        if self.device == "cuda":
            return time_cuda(lambda: self.enqueue(tensor), timing)
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return time_callable(lambda: self.enqueue(tensor), timing)
        finally:
            torch.set_num_threads(previous)

    def fingerprint(self) -> dict[str, Any]:
        """Device + runtime + settings, with the same match fields as a LUT's."""
        host = host_fingerprint()
        if self.device == "cuda":
            props = torch.cuda.get_device_properties(torch.cuda.current_device())
            return {"backend": "aoti-cuda", "runtime": "torch-aoti", "runtime_version": torch.__version__,
                    "threads": self.threads, "precision": "fp32", "device": props.name, "cuda": torch.version.cuda,
                    "capability": f"{props.major}.{props.minor}", **host}
        return {"backend": "aoti-cpu", "runtime": "torch-aoti", "runtime_version": torch.__version__,
                "threads": self.threads, "precision": "fp32", "device": host["cpu"], **host}
