"""PyTorch on a CUDA GPU, timed with CUDA events; CUDA graphs where they cut launch overhead.

With ``cuda_graphs`` (the default) every unit and every whole model is
captured into a CUDA graph and timed by replay: at batch 1 small kernels are
launch-bound, a deployment that cares about latency captures graphs too, and
units and models must be timed the same way for their sum to predict the
model. A module that cannot be captured is timed eagerly instead; the mode of
the last measurement is in ``last_mode``.

A unit's graph holds the unit ``UNIT_REPEATS`` times in a row, and its time is
the replay's over ``UNIT_REPEATS``. At batch 1 a unit's kernels take a few
microseconds, less than the fixed cost of launching a graph and recording its
events (about 10 µs on an H100): timed alone, every unit would measure about
that floor whatever its width, and the LUT would rank widths by noise. Back to
back in one stream, as in the whole model's graph, the floor is paid once.

Convolutions run as cuDNN picks them by default (TF32 allowed on Ampere and
newer); both settings are in the fingerprint.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from latprune.errors import BackendError
from latprune.graph.units import LayerKey
from latprune.latency_lut.backends import Backend
from latprune.latency_lut.backends.torch_cpu import _UnitModule, unit_inputs
from latprune.latency_lut.timing import Latency, TimingConfig, time_cuda
from latprune.runtime.fingerprint import host_fingerprint


class TorchCudaBackend(Backend):
    name = "torch-cuda"
    preferred_align = 8  # tensor-core tiles
    UNIT_REPEATS = 16    # a unit's copies per captured graph (see the module docstring)

    def __init__(self, threads: int | None = None, timing: TimingConfig | None = None,
                 cuda_graphs: bool = True) -> None:
        if not torch.cuda.is_available():
            raise BackendError("the torch-cuda backend needs a CUDA GPU, and torch.cuda.is_available() is False "
                               "here; profile on the target machine, or use the ort-cpu backend")
        super().__init__(threads=threads or 1, timing=timing)
        self.cuda_graphs = cuda_graphs
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.last_mode = ""

    def fingerprint(self) -> dict[str, Any]:
        props = torch.cuda.get_device_properties(self.device)
        return {
            "backend": self.name, "runtime": "torch", "runtime_version": torch.__version__,
            "threads": self.threads, "precision": "fp32", "device": props.name,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "capability": f"{props.major}.{props.minor}", "gpu_memory_gb": round(props.total_memory / 2**30, 1),
            "cuda_graphs": self.cuda_graphs, "unit_repeats": self.UNIT_REPEATS if self.cuda_graphs else 1,
            "tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_tf32": torch.backends.cudnn.allow_tf32, "cudnn_benchmark": torch.backends.cudnn.benchmark,
            **host_fingerprint(),
        }

    def _time(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], timing: TimingConfig,
              copies: int = 1) -> Latency:
        """Latency of one ``module(*inputs)``; a captured graph holds ``copies`` of it
        and its replay time is divided by ``copies`` (eagerly, one copy is timed)."""
        module = module.to(self.device).eval()
        inputs = tuple(t.to(self.device) for t in inputs)
        with torch.inference_mode():
            captured = _Repeated(module, copies) if copies > 1 else module
            graphed = self._graph_replay(captured, inputs) if self.cuda_graphs else None
            self.last_mode = "eager" if graphed is None else "cuda-graph"
            if graphed is None:
                return time_cuda(lambda: module(*inputs), timing)
            lat = time_cuda(graphed, timing)
        return Latency(lat.median_ms / copies, lat.p10_ms / copies, lat.p90_ms / copies, lat.repeats)

    @staticmethod
    def _graph_replay(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Callable[[], None] | None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm up on a side stream before capture, as the CUDA graph docs require
                module(*inputs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                module(*inputs)
        except RuntimeError:  # some ops cannot be captured: time eagerly
            return None
        return graph.replay

    def measure_unit(self, key: LayerKey) -> Latency:
        unit = _UnitModule(key)
        return self._time(unit, unit_inputs(key, unit), self.timing, copies=self.UNIT_REPEATS)

    def measure_model(self, model: nn.Module, input_shape: tuple[int, ...]) -> Latency:
        import copy

        return self._time(copy.deepcopy(model), (torch.randn(*input_shape),), self.model_timing)


class _Repeated(nn.Module):
    """``module`` applied ``copies`` times to the same inputs, one after the other on the stream."""

    def __init__(self, module: nn.Module, copies: int) -> None:
        super().__init__()
        self.module, self.copies = module, copies

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        for _ in range(self.copies - 1):
            self.module(*inputs)
        return self.module(*inputs)
