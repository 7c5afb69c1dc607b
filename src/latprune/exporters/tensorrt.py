"""TensorRT: ONNX → engine (fp32/fp16, timing cache), and a runner over PyTorch CUDA tensors.

Kept thin, written against the TensorRT 10 Python API (name-based tensors,
``build_serialized_network``, ``execute_async_v3``). ``tensorrt`` is imported
here only, lazily; without it every entry point raises
:class:`~latprune.errors.MissingDependency` saying how to install it.
PyTorch owns the CUDA context and the I/O buffers, so no other CUDA bindings
are needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latprune.errors import ExportError, MissingDependency


def trt() -> Any:
    """The ``tensorrt`` module, or an error that says how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise MissingDependency("tensorrt", "tensorrt", "the TensorRT backend and exporter") from None
    return tensorrt


@dataclass(frozen=True)
class EngineConfig:
    fp16: bool = False
    workspace_mb: int = 1024
    timing_cache: str | None = None     # file read before and written after the build (kept beside the LUT)
    dynamic_batch: tuple[int, int, int] | None = None  # (min, opt, max) batch for an optimisation profile


def build_engine(onnx_model: bytes, config: EngineConfig = EngineConfig()) -> bytes:
    """Parse ONNX, build and return the serialised engine."""
    t = trt()
    logger = t.Logger(t.Logger.WARNING)
    builder = t.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = t.OnnxParser(network, logger)
    if not parser.parse(onnx_model):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT's ONNX parser rejected the model: {errors}")
    cfg = builder.create_builder_config()
    cfg.set_memory_pool_limit(t.MemoryPoolType.WORKSPACE, config.workspace_mb << 20)
    if config.fp16:
        cfg.set_flag(t.BuilderFlag.FP16)
    cache_bytes = Path(config.timing_cache).read_bytes() if config.timing_cache and os.path.exists(config.timing_cache) else b""
    cache = cfg.create_timing_cache(cache_bytes)
    cfg.set_timing_cache(cache, ignore_mismatch=False)
    if config.dynamic_batch is not None:
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            rest = tuple(tensor.shape)[1:]
            lo, opt, hi = config.dynamic_batch
            profile.set_shape(tensor.name, (lo, *rest), (opt, *rest), (hi, *rest))
        cfg.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, cfg)
    if serialized is None:
        raise ExportError("TensorRT failed to build an engine (see the TensorRT log above)")
    if config.timing_cache:
        from latprune._io import atomic_write_bytes

        atomic_write_bytes(config.timing_cache, bytes(cfg.get_timing_cache().serialize()))
    return bytes(serialized)


class TrtRunner:
    """Runs a serialised engine with PyTorch CUDA tensors as I/O buffers on the current stream."""

    def __init__(self, engine: bytes) -> None:
        import torch

        t = trt()
        self._torch = torch
        self._runtime = t.Runtime(t.Logger(t.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(engine)
        if self.engine is None:
            raise ExportError("TensorRT could not deserialise the engine (built by another TensorRT version?)")
        self.context = self.engine.create_execution_context()
        dtypes = {t.DataType.FLOAT: torch.float32, t.DataType.HALF: torch.float16, t.DataType.INT32: torch.int32,
                  t.DataType.INT64: torch.int64, t.DataType.BOOL: torch.bool}
        self.inputs: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):  # dynamic batch: run at the profile's opt shape
                shape = tuple(self.engine.get_tensor_profile_shape(name, 0)[1])
                self.context.set_input_shape(name, shape)
            buf = torch.zeros(shape, dtype=dtypes[self.engine.get_tensor_dtype(name)], device="cuda")
            is_input = self.engine.get_tensor_mode(name) == t.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs)[name] = buf
            self.context.set_tensor_address(name, buf.data_ptr())

    def enqueue(self) -> None:
        """Launch one inference on the current CUDA stream (no synchronisation)."""
        stream = self._torch.cuda.current_stream().cuda_stream
        if not self.context.execute_async_v3(stream_handle=stream):
            raise ExportError("TensorRT execution failed")

    def __call__(self, **feeds: Any) -> dict[str, Any]:
        for name, value in feeds.items():
            self.inputs[name].copy_(value)
        self.enqueue()
        self._torch.cuda.current_stream().synchronize()
        return {k: v.clone() for k, v in self.outputs.items()}
