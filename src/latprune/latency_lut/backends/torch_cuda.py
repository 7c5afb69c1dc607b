"""PyTorch on a CUDA GPU, timed with CUDA events; CUDA graphs where they cut launch overhead.

Each unit or model is first timed eagerly, then captured into a CUDA graph
and timed by replay; the faster is kept, and which one won is recorded per
measurement in ``last_mode`` (at batch 1 small kernels are launch-bound, and
a deployment that cares about latency captures graphs too).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from latprune.errors import BackendError
from latprune.latency_lut.backends import Backend
from latprune.latency_lut.backends.torch_cpu import _UnitModule
from latprune.latency_lut.fingerprint import host_fingerprint
from latprune.latency_lut.timing import Latency, TimingConfig, time_cuda
from latprune.latency_lut.units import LayerKey


class TorchCudaBackend(Backend):
    name = "torch-cuda"
    preferred_align = 8  # tensor-core tiles

    def __init__(self, threads: int | None = None, timing: TimingConfig | None = None,
                 cuda_graphs: bool = True) -> None:
        if not torch.cuda.is_available():
            raise BackendError("the torch-cuda backend needs a CUDA GPU, and torch.cuda.is_available() is False "
                               "here; profile on the target machine, or use --backend ort-cpu")
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
            "cuda_graphs": self.cuda_graphs, "tf32": torch.backends.cuda.matmul.allow_tf32, **host_fingerprint(),
        }

    def _time(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], timing: TimingConfig) -> Latency:
        module = module.to(self.device).eval()
        inputs = tuple(t.to(self.device) for t in inputs)
        with torch.inference_mode():
            eager = time_cuda(lambda: module(*inputs), timing)
            self.last_mode = "eager"
            if not self.cuda_graphs:
                return eager
            graphed = self._graph_replay(module, inputs)
            if graphed is None:
                return eager
            replayed = time_cuda(graphed, timing)
        if replayed.median_ms < eager.median_ms:
            self.last_mode = "cuda-graph"
            return replayed
        return eager

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
        module = _UnitModule(key)
        x = torch.randn(key.batch, key.cin, *key.in_hw) if key.op == "conv" else torch.randn(key.batch, *key.in_hw, key.cin)
        if key.add:
            with torch.inference_mode():
                r = torch.randn_like(module(x))
            return self._time(module, (x, r), self.timing)
        return self._time(module, (x,), self.timing)

    def measure_model(self, model: nn.Module, input_shape: tuple[int, ...]) -> Latency:
        import copy

        return self._time(copy.deepcopy(model), (torch.randn(*input_shape),), self.model_timing)
