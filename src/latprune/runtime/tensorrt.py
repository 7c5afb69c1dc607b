"""TensorRT: ONNX → engine (fp32/fp16/int8, timing cache, optimisation profile), and
a runner over PyTorch CUDA tensors timed with CUDA events.

Kept thin, written against the TensorRT 10 Python API (name-based tensors,
``build_serialized_network``, ``execute_async_v3``, an
``IInt8EntropyCalibrator2`` subclass for int8). ``tensorrt`` is imported
here only, lazily; without it every entry point raises
:class:`~latprune.errors.MissingDependency` saying how to install it.
PyTorch owns the CUDA context and the I/O buffers (calibration batches too),
so no other CUDA bindings are needed.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from latprune._io import atomic_write_bytes
from latprune.errors import BackendError, ExportError, MissingDependency, SpecError
from latprune.runtime.large_onnx import ExternalOnnx, write_onnx


def trt() -> Any:
    """The ``tensorrt`` module, or an error that says how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise MissingDependency("tensorrt", "tensorrt", "the TensorRT backend and exporter") from None
    return tensorrt


def require_tensorrt() -> Any:
    """``tensorrt`` and a visible CUDA GPU, or the error that says what is missing."""
    import torch

    module = trt()
    if not torch.cuda.is_available():
        raise BackendError("TensorRT needs a CUDA GPU, and torch.cuda.is_available() is False here; "
                           "build and run TensorRT bundles on the target machine")
    return module


@dataclass(frozen=True)
class EngineConfig:
    fp16: bool = False
    int8: bool = False                  # needs calibration batches (see build_engine)
    tf32: bool = True                   # TensorRT's default; off for a strict fp32 parity check
    workspace_mb: int = 1024
    timing_cache: str | None = None     # file read before and written after the build (kept beside the LUT)
    calibration_cache: str | None = None  # int8 scales: read if present (skips calibration), written after
    dynamic_batch: tuple[int, int, int] | None = None  # (min, opt, max) batch for an optimisation profile

    @property
    def precision(self) -> str:
        """The lowest precision the builder may choose: int8, fp16 or fp32."""
        return "int8" if self.int8 else "fp16" if self.fp16 else "fp32"


def make_calibrator(batches: Iterable[Any], cache_path: str | None = None, device: str = "cuda") -> Any:
    """An ``IInt8EntropyCalibrator2`` that feeds ``batches`` (torch tensors, all of
    one shape) to TensorRT as device pointers of PyTorch CUDA tensors, and keeps
    its scales in ``cache_path`` (written atomically)."""
    t = trt()
    import torch

    items = list(batches)
    if not items:
        raise SpecError("int8 calibration needs at least one batch")
    shape = tuple(items[0].shape)
    if any(tuple(b.shape) != shape for b in items):
        raise SpecError("int8 calibration batches must all have one shape")

    class _Calibrator(t.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            t.IInt8EntropyCalibrator2.__init__(self)
            self.batch_shape = shape
            self._iter = iter(items)
            self._current: Any = None  # keeps the batch fed last alive while TensorRT reads it

        def get_batch_size(self) -> int:
            return int(shape[0])

        def get_batch(self, names: Sequence[str]) -> list[int] | None:
            batch = next(self._iter, None)
            if batch is None:
                return None
            self._current = batch.to(device=device, dtype=torch.float32).contiguous()
            return [int(self._current.data_ptr())] * len(names)

        def read_calibration_cache(self) -> bytes | None:
            if cache_path and os.path.exists(cache_path):
                return Path(cache_path).read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            if cache_path:
                atomic_write_bytes(cache_path, bytes(cache))

    return _Calibrator()


def _parse(parser: Any, onnx_model: bytes) -> bool:
    """``parser.parse`` of the ONNX bytes; of a model with external data, given the path of
    the graph written beside its data, from which the parser reads the weights."""
    if not isinstance(onnx_model, ExternalOnnx):
        return bool(parser.parse(onnx_model))
    with tempfile.TemporaryDirectory(prefix="latprune-trt-") as tmp:
        graph = write_onnx(Path(tmp) / "model.onnx", onnx_model)[0]
        return bool(parser.parse(onnx_model, str(graph)))


def build_engine(onnx_model: bytes, config: EngineConfig = EngineConfig(),
                 calibration: Iterable[Any] | None = None) -> bytes:
    """Parse ONNX, build and return the serialised engine. ``calibration``: the
    int8 calibration batches (torch tensors at the engine's input shape)."""
    t = trt()
    cached_scales = bool(config.calibration_cache and os.path.exists(config.calibration_cache))
    if config.int8 and calibration is None and not cached_scales:
        raise SpecError("an int8 engine needs calibration batches or an existing calibration cache")
    logger = t.Logger(t.Logger.WARNING)
    builder = t.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = t.OnnxParser(network, logger)
    if not _parse(parser, onnx_model):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT's ONNX parser rejected the model: {errors}")
    cfg = builder.create_builder_config()
    cfg.set_memory_pool_limit(t.MemoryPoolType.WORKSPACE, config.workspace_mb << 20)
    if config.fp16:
        cfg.set_flag(t.BuilderFlag.FP16)
    if not config.tf32:
        cfg.clear_flag(t.BuilderFlag.TF32)
    has_cache = bool(config.timing_cache and os.path.exists(config.timing_cache))
    cache_bytes = Path(config.timing_cache).read_bytes() if has_cache else b""  # type: ignore[arg-type]
    cache = cfg.create_timing_cache(cache_bytes)
    cfg.set_timing_cache(cache, ignore_mismatch=False)
    profile = None
    if config.dynamic_batch is not None:
        profile = builder.create_optimization_profile()
        lo, opt, hi = config.dynamic_batch
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            rest = tuple(tensor.shape)[1:]
            profile.set_shape(tensor.name, (lo, *rest), (opt, *rest), (hi, *rest))
        cfg.add_optimization_profile(profile)
    if config.int8:
        cfg.set_flag(t.BuilderFlag.INT8)
        # without batches the scales come from the calibration cache; the placeholder is never read
        batches = list(calibration) if calibration is not None else [_zeros_like_input(network)]
        cfg.int8_calibrator = make_calibrator(batches, config.calibration_cache)
        if profile is not None:
            cfg.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, cfg)
    if serialized is None:
        raise ExportError("TensorRT failed to build an engine (see the TensorRT log above)")
    if config.timing_cache:
        atomic_write_bytes(config.timing_cache, bytes(cfg.get_timing_cache().serialize()))
    return bytes(serialized)


def _zeros_like_input(network: Any) -> Any:
    """A placeholder batch for a calibrator that reads its scales from the cache."""
    import torch

    return torch.zeros(tuple(max(1, d) for d in network.get_input(0).shape))


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
        self._dtypes = {t.DataType.FLOAT: torch.float32, t.DataType.HALF: torch.float16, t.DataType.INT32: torch.int32,
                        t.DataType.INT64: torch.int64, t.DataType.BOOL: torch.bool}
        self._input_mode = t.TensorIOMode.INPUT
        self.inputs: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}
        shapes = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(name))
            if self.engine.get_tensor_mode(name) == self._input_mode and any(d < 0 for d in shape):
                shape = tuple(self.engine.get_tensor_profile_shape(name, 0)[1])  # dynamic: the profile's opt shape
            shapes[name] = shape
        self._allocate({n: s for n, s in shapes.items() if self.engine.get_tensor_mode(n) == self._input_mode})

    def _allocate(self, input_shapes: dict[str, tuple[int, ...]]) -> None:
        """(Re)allocate the I/O buffers for these input shapes and bind them."""
        torch = self._torch
        for name, shape in input_shapes.items():
            self.context.set_input_shape(name, shape)
            dtype = self._dtypes[self.engine.get_tensor_dtype(name)]
            self.inputs[name] = torch.zeros(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, self.inputs[name].data_ptr())
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            if self.engine.get_tensor_mode(name) != self._input_mode:
                shape = tuple(self.context.get_tensor_shape(name))
                self.outputs[name] = torch.zeros(shape, dtype=self._dtypes[self.engine.get_tensor_dtype(name)],
                                                 device="cuda")
                self.context.set_tensor_address(name, self.outputs[name].data_ptr())

    def enqueue(self) -> None:
        """Launch one inference on the current CUDA stream (no synchronisation)."""
        stream = self._torch.cuda.current_stream().cuda_stream
        if not self.context.execute_async_v3(stream_handle=stream):
            raise ExportError("TensorRT execution failed")

    def __call__(self, **feeds: Any) -> dict[str, Any]:
        """Copy ``feeds`` (name → tensor) into the input buffers, reshaping them
        within the optimisation profile when a batch size changes; run; return
        copies of the outputs."""
        changed = {n: tuple(v.shape) for n, v in feeds.items() if tuple(v.shape) != tuple(self.inputs[n].shape)}
        if changed:
            self._allocate({**{n: tuple(b.shape) for n, b in self.inputs.items()}, **changed})
        for name, value in feeds.items():
            self.inputs[name].copy_(value)
        self.enqueue()
        self._torch.cuda.current_stream().synchronize()
        return {k: v.clone() for k, v in self.outputs.items()}

    def fingerprint(self, precision: str) -> dict[str, Any]:
        """Device + runtime + settings, with the same match fields as a LUT's."""
        from latprune.runtime.fingerprint import host_fingerprint

        torch = self._torch
        return {"backend": "tensorrt", "runtime": "tensorrt", "runtime_version": trt().__version__, "threads": 1,
                "precision": precision, "device": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
                **host_fingerprint()}
