"""ONNX Runtime on the CPU: the default backend.

A unit is measured as a one-kernel ONNX graph built directly with
``onnx.helper`` (Conv -> BatchNormalization -> Add -> activation), so ONNX
Runtime applies the same fusions it applies inside the whole model. Whole
models are exported to ONNX and timed the same way.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from torch import nn

from latprune.errors import BackendError, MissingDependency
from latprune.latency_lut.backends import Backend
from latprune.latency_lut.fingerprint import host_fingerprint
from latprune.latency_lut.timing import Latency, TimingConfig, time_callable
from latprune.latency_lut.units import LayerKey

OPSET = 17


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependency("onnxruntime", "onnx", "the ort-cpu backend") from None
    return onnxruntime


def make_session(model: bytes | str | os.PathLike[str], threads: int) -> Any:
    """An ONNX Runtime CPU session with a fixed thread count and full graph optimisation."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
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


def unit_onnx(key: LayerKey, seed: int = 0) -> bytes:
    """A one-unit ONNX model for ``key`` with random weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits: list[Any] = []
    nodes: list[Any] = []
    inputs: list[Any] = []

    def init(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    if key.op == "conv":
        h, w = key.in_hw
        inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, [key.batch, key.cin, h, w]))
        weight = rng.standard_normal((key.cout, key.cin // key.groups, *key.kernel)) * 0.1
        conv_in = ["x", init("w", weight)] + ([init("b", rng.standard_normal(key.cout))] if key.bias else [])
        nodes.append(helper.make_node(
            "Conv", conv_in, ["y0"], kernel_shape=list(key.kernel), strides=list(key.stride),
            pads=[key.padding[0], key.padding[1], key.padding[0], key.padding[1]],
            dilations=list(key.dilation), group=key.groups))
        out_shape = [key.batch, key.cout,
                     (h + 2 * key.padding[0] - key.dilation[0] * (key.kernel[0] - 1) - 1) // key.stride[0] + 1,
                     (w + 2 * key.padding[1] - key.dilation[1] * (key.kernel[1] - 1) - 1) // key.stride[1] + 1]
    elif key.op == "linear":
        shape = [key.batch, *key.in_hw, key.cin]
        inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, shape))
        weight = rng.standard_normal((key.cin, key.cout)) * 0.1
        nodes.append(helper.make_node("MatMul", ["x", init("w", weight)], ["y_mm"]))
        bias_name = init("b", rng.standard_normal(key.cout)) if key.bias else init("b", np.zeros(key.cout))
        nodes.append(helper.make_node("Add", ["y_mm", bias_name], ["y0"]))
        out_shape = [key.batch, *key.in_hw, key.cout]
    else:
        raise BackendError(f"ort-cpu cannot build a unit for op {key.op!r}")
    last = "y0"
    if key.bn:
        c = key.cout
        bn_in = [last, init("bn_s", rng.uniform(0.5, 1.5, c)), init("bn_b", rng.standard_normal(c)),
                 init("bn_m", rng.standard_normal(c)), init("bn_v", rng.uniform(0.5, 1.5, c))]
        nodes.append(helper.make_node("BatchNormalization", bn_in, ["y_bn"], epsilon=1e-5))
        last = "y_bn"
    if key.add:
        inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, out_shape))
        nodes.append(helper.make_node("Add", [last, "r"], ["y_add"]))
        last = "y_add"
    last = _activation(key.act, last, nodes, init)
    graph = helper.make_graph(nodes, "unit", inputs,
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="latprune")
    model.ir_version = 8
    return model.SerializeToString()


def _activation(act: str, last: str, nodes: list[Any], init: Any) -> str:
    from onnx import helper

    if not act:
        return last
    if act == "relu":
        nodes.append(helper.make_node("Relu", [last], ["y_act"]))
    elif act == "relu6":
        nodes.append(helper.make_node("Clip", [last, init("lo", np.array(0.0)), init("hi", np.array(6.0))], ["y_act"]))
    elif act == "sigmoid":
        nodes.append(helper.make_node("Sigmoid", [last], ["y_act"]))
    elif act == "silu":
        nodes.append(helper.make_node("Sigmoid", [last], ["y_sig"]))
        nodes.append(helper.make_node("Mul", [last, "y_sig"], ["y_act"]))
    elif act == "hardswish":
        nodes.append(helper.make_node("HardSwish", [last], ["y_act"]))
    elif act == "gelu":
        nodes.append(helper.make_node("Div", [last, init("sqrt2", np.array(np.sqrt(2.0)))], ["g0"]))
        nodes.append(helper.make_node("Erf", ["g0"], ["g1"]))
        nodes.append(helper.make_node("Add", ["g1", init("one", np.array(1.0))], ["g2"]))
        nodes.append(helper.make_node("Mul", [last, "g2"], ["g3"]))
        nodes.append(helper.make_node("Mul", ["g3", init("half", np.array(0.5))], ["y_act"]))
    else:
        raise BackendError(f"ort-cpu cannot build activation {act!r}")
    return "y_act"


class OrtCpuBackend(Backend):
    """ONNX Runtime, CPUExecutionProvider, fixed intra-op threads, sequential execution."""

    name = "ort-cpu"

    @property
    def preferred_align(self) -> int:  # type: ignore[override]
        """ONNX Runtime's NCHWc convolutions block channels by the SIMD width: 16 floats with AVX-512, else 8."""
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                return 16 if " avx512f" in fh.read() else 8
        except OSError:
            return 8

    def fingerprint(self) -> dict[str, Any]:
        ort = _ort()
        return {
            "backend": self.name, "runtime": "onnxruntime", "runtime_version": ort.__version__,
            "threads": self.threads, "precision": "fp32", "device": host_fingerprint()["cpu"],
            **host_fingerprint(),
        }

    def measure_session(self, session: Any, timing: TimingConfig | None = None) -> Latency:
        feeds = random_feeds(session)
        return time_callable(lambda: session.run(None, feeds), timing or self.timing)

    def measure_unit(self, key: LayerKey) -> Latency:
        return self.measure_session(make_session(unit_onnx(key), self.threads))

    def measure_model(self, model: nn.Module, input_shape: tuple[int, ...]) -> Latency:
        from latprune.exporters.onnx import to_onnx_bytes

        return self.measure_session(make_session(to_onnx_bytes(model, input_shape), self.threads), self.model_timing)

    def measure_artifact(self, path: str) -> Latency:
        if not str(path).endswith(".onnx"):
            raise BackendError(f"ort-cpu times .onnx files; {path!r} is not one")
        return self.measure_session(make_session(path, self.threads), self.model_timing)
