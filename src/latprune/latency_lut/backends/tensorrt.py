"""TensorRT on a CUDA GPU: each unit is built into its own engine from the same
one-unit ONNX graph as ort-cpu, so TensorRT applies its own fusions, and timed
with CUDA events. Needs the ``tensorrt`` package (optional extra)."""

from __future__ import annotations

from typing import Any

from torch import nn

from latprune.errors import BackendError
from latprune.graph.units import LayerKey
from latprune.latency_lut.backends import Backend
from latprune.latency_lut.backends.ort_cpu import unit_onnx
from latprune.latency_lut.timing import Latency, TimingConfig, time_cuda
from latprune.runtime.fingerprint import host_fingerprint
from latprune.runtime.tensorrt import EngineConfig, TrtRunner, build_engine, trt


class TensorRTBackend(Backend):
    name = "tensorrt"
    preferred_align = 8

    def __init__(self, threads: int | None = None, timing: TimingConfig | None = None, fp16: bool = False,
                 timing_cache: str | None = None) -> None:
        import torch

        trt()  # fail early, with the install hint, if tensorrt is absent
        if not torch.cuda.is_available():
            raise BackendError("the tensorrt backend needs a CUDA GPU; none is visible here")
        super().__init__(threads=threads or 1, timing=timing)
        self.engine_config = EngineConfig(fp16=fp16, timing_cache=timing_cache)

    def fingerprint(self) -> dict[str, Any]:
        import torch

        return {"backend": self.name, "runtime": "tensorrt", "runtime_version": trt().__version__,
                "threads": self.threads, "precision": "fp16" if self.engine_config.fp16 else "fp32",
                "device": torch.cuda.get_device_name(), "cuda": torch.version.cuda, **host_fingerprint()}

    def measure_onnx(self, onnx_model: bytes, timing: TimingConfig) -> Latency:
        runner = TrtRunner(build_engine(onnx_model, self.engine_config))
        return time_cuda(runner.enqueue, timing)

    def measure_unit(self, key: LayerKey) -> Latency:
        return self.measure_onnx(unit_onnx(key), self.timing)

    def measure_model(self, model: nn.Module, input_shape: tuple[int, ...]) -> Latency:
        from latprune.runtime.onnx import to_onnx_bytes

        return self.measure_onnx(to_onnx_bytes(model, input_shape), self.model_timing)

    def measure_export(self, onnx: bytes) -> Latency:
        return self.measure_onnx(onnx, self.model_timing)

    def measure_artifact(self, path: str) -> Latency:
        if path.endswith(".onnx"):  # with its external data, where it has some
            from latprune.runtime.large_onnx import read_onnx

            return self.measure_onnx(read_onnx(path), self.model_timing)
        with open(path, "rb") as fh:  # a serialised engine
            return time_cuda(TrtRunner(fh.read()).enqueue, self.model_timing)


