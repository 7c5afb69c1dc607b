"""ONNX Runtime sessions on the CPU provider, shared by the ort-cpu latency backend
and the ONNX exporter."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from latprune.errors import BackendError, MissingDependency
from latprune.runtime.large_onnx import ExternalOnnx


def onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependency("onnxruntime", "onnx", "the ort-cpu backend") from None
    return onnxruntime


def make_session(model: bytes | str | os.PathLike[str], threads: int, profile_prefix: str | None = None,
                 spinning: bool = True, affinities: str | None = None) -> Any:
    """An ONNX Runtime CPU session with a fixed thread count and full graph optimisation
    (and ONNX Runtime's profiler on, writing to ``profile_prefix``, when given); ``model``
    is a file, ONNX bytes, or :class:`~latprune.runtime.large_onnx.ExternalOnnx` with its weights.
    ``spinning=False`` stops idle intra-op threads spinning (ONNX Runtime spins by
    default, as deployments run); ``affinities`` pins the intra-op threads other than
    the caller's (ONNX Runtime's ``session.intra_op_thread_affinities``: one entry per
    thread, ``;``-separated, of 1-based logical processors, e.g. ``"2"`` for the second
    of two threads on the second CPU). ``benchmarks/results/thread_scaling_zen5_s24.json`` compares both."""
    ort = onnxruntime()
    opts = ort.SessionOptions()
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if affinities is not None:
        opts.add_session_config_entry("session.intra_op_thread_affinities", affinities)
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if isinstance(model, ExternalOnnx):  # the graph's initializers point into this file, held in memory
        opts.add_external_initializers_from_files_in_memory([model.location], [model.data], [len(model.data)])
    source = model if isinstance(model, bytes) else os.fspath(model)
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise BackendError(f"ONNX Runtime could not load the model: {exc}") from None


def random_feeds(session: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for every graph input (fixed shapes required)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}
    for inp in session.get_inputs():
        shape = inp.shape
        if any(not isinstance(d, int) for d in shape):
            raise BackendError(f"input {inp.name!r} has a dynamic shape {shape}; export with a fixed batch to time it")
        dtype = dtypes.get(inp.type)
        if dtype is None:
            raise BackendError(f"input {inp.name!r} has type {inp.type}, which latprune cannot generate")
        feeds[inp.name] = rng.standard_normal(shape).astype(dtype) if dtype != np.int64 else np.zeros(shape, np.int64)
    return feeds
