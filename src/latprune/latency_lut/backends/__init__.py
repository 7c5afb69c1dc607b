"""Latency backends: one file per runtime, one registry.

>>> sorted(BACKENDS)
['fake', 'ort-cpu', 'tensorrt', 'torch-cpu', 'torch-cuda']
>>> get_backend("ort-cpu", threads=1).name
'ort-cpu'
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import replace
from typing import Any

from torch import nn

from latprune.errors import BackendError
from latprune.graph.units import LayerKey
from latprune.latency_lut.timing import Latency, SpeedGuard, TimingConfig

# name -> "module:Class", imported only when asked for (onnxruntime is heavy).
BACKENDS: dict[str, str] = {
    "ort-cpu": "latprune.latency_lut.backends.ort_cpu:OrtCpuBackend",
    "torch-cpu": "latprune.latency_lut.backends.torch_cpu:TorchCpuBackend",
    "torch-cuda": "latprune.latency_lut.backends.torch_cuda:TorchCudaBackend",
    "tensorrt": "latprune.latency_lut.backends.tensorrt:TensorRTBackend",
    "fake": "latprune.latency_lut.backends.fake:FakeBackend",
}


class Backend(ABC):
    """Times latency units and whole models on one runtime with fixed settings."""

    name: str = ""
    preferred_align: int = 1   # channel multiple the runtime's kernels are built for (width grid default)

    def __init__(self, threads: int | None = None, timing: TimingConfig | None = None) -> None:
        if threads is not None and threads < 1:
            raise BackendError(f"threads must be at least 1, got {threads}")
        self.threads = threads or default_threads()
        self.timing = timing or TimingConfig()
        # Whole models are timed longer: a decision (budget held or not) rests on each one.
        self.model_timing = replace(self.timing, warmup=max(self.timing.warmup, 20),
                                    repeats=max(self.timing.repeats, 100), min_time_s=max(self.timing.min_time_s, 0.5))

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """Device + runtime + settings; see :mod:`latprune.runtime.fingerprint`."""

    @abstractmethod
    def measure_unit(self, key: LayerKey) -> Latency:
        """Latency of one unit, built alone at the widths in ``key``."""

    @abstractmethod
    def measure_model(self, model: nn.Module, input_shape: tuple[int, ...]) -> Latency:
        """End-to-end latency of a whole model as this runtime executes it."""

    def cold_units(self, graph: Any) -> frozenset[str]:
        """The units of ``graph`` (a :class:`~latprune.graph.channels.ChannelGraph`) whose weights
        this device streams from memory on every run of the whole model, to be keyed and timed
        ``cold`` (:attr:`~latprune.graph.units.LayerKey.cold`); none unless the backend says."""
        return frozenset()

    def keyed(self, graph: Any) -> Any:
        """``graph`` with its units keyed as this backend times them (:meth:`cold_units`): the
        graph, changed. Every graph that meets a LUT of this backend is keyed so."""
        return graph.mark_cold(self.cold_units(graph))

    def speed_guard(self) -> SpeedGuard | None:
        """The guard that holds whole-model timings to the machine's usual speed, if
        this backend has one (:class:`~latprune.latency_lut.timing.SpeedGuard`)."""
        return None

    def measure_export(self, onnx: bytes) -> Latency | None:
        """End-to-end latency of a model exported to ONNX, where this backend runs ONNX
        itself; None where it times the PyTorch model instead (:meth:`measure_model`)."""
        return None

    def measure_artifact(self, path: str) -> Latency:
        """End-to-end latency of an exported artifact (ONNX file, ...)."""
        raise BackendError(f"backend {self.name!r} cannot time {path!r}; the ort-cpu backend times ONNX files")


def default_threads() -> int:
    """Physical cores are not visible portably; use the logical CPU count, capped at 8."""
    import os

    return max(1, min(os.cpu_count() or 1, 8))


def get_backend(name: str, threads: int | None = None, timing: TimingConfig | None = None) -> Backend:
    """Instantiate backend ``name``; unknown names list the known ones."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; known backends: {', '.join(sorted(BACKENDS))}")
    module_name, cls_name = BACKENDS[name].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(threads=threads, timing=timing)
