"""Which ops the runtime fuses into the convolution before them, found by measuring.

For a canonical convolution (64→64 channels, 1×1, 28×28, batch 1: little compute,
so a follower's cost is not lost in the convolution's noise) the probe
times the convolution alone, each follower op alone (BatchNorm, ReLU, a
residual Add), and the convolution with the follower attached, each as its
own session. After removing one session call's fixed cost from every
timing, a follower counts as *fused* when attaching it costs less than half
of what it costs alone. The rules found are stored in the LUT's metadata
(``fusion_rules``) and shown by ``latprune lut show``; the unit builder's
rule (conv + BN + add + activation = one unit) can be checked against them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from latprune.latency_lut.units import LayerKey

CANONICAL = LayerKey("conv", 64, 64, (1, 1), (1, 1), (0, 0), in_hw=(28, 28))  # cheap compute, real data movement
FOLLOWERS = {"bn": {"bn": True}, "relu": {"act": "relu"}, "add": {"add": True}}


def _single_op_onnx(op: str, shape: list[int]) -> bytes:
    """A graph holding one op (or none: ``Identity``) on an input of ``shape``."""
    from onnx import TensorProto, helper, numpy_helper

    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)]
    inits = []
    if op == "Add":
        inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, shape))
        node = helper.make_node("Add", ["x", "r"], ["y"])
    elif op == "BatchNormalization":
        c = shape[1]
        names = ["s", "b", "m", "v"]
        values = [np.ones(c), np.zeros(c), np.zeros(c), np.ones(c)]
        inits = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in zip(names, values)]
        node = helper.make_node("BatchNormalization", ["x", *names], ["y"])
    else:
        node = helper.make_node(op, ["x"], ["y"])
    graph = helper.make_graph([node], "probe", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def discover_fusions(backend: Any) -> dict[str, Any]:
    """Measure the fusion rules of an ONNX-Runtime-like backend (one with ``measure_session``)."""
    from latprune.latency_lut.backends.ort_cpu import make_session

    def onnx_ms(data: bytes) -> float:
        return float(backend.measure_session(make_session(data, backend.threads)).median_ms)

    shape = [CANONICAL.batch, CANONICAL.cout, *CANONICAL.in_hw]
    call_ms = onnx_ms(_single_op_onnx("Identity", [1, 1]))  # a session call that moves no data
    conv_ms = backend.measure_unit(CANONICAL).median_ms - call_ms
    ops = {"bn": "BatchNormalization", "relu": "Relu", "add": "Add"}
    rules: dict[str, Any] = {"probe": CANONICAL.text, "call_overhead_ms": call_ms, "conv_ms": conv_ms}
    for name, flags in FOLLOWERS.items():
        alone_ms = max(onnx_ms(_single_op_onnx(ops[name], shape)) - call_ms, 1e-6)
        attached_ms = backend.measure_unit(replace(CANONICAL, **flags)).median_ms - call_ms - conv_ms
        rules[f"conv+{name}"] = {"fused": attached_ms < 0.5 * alone_ms, "alone_ms": alone_ms,
                                 "attached_ms": attached_ms}
    return rules
