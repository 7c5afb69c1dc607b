"""Which ops the runtime fuses into the convolution before them, found by measuring.

For a canonical convolution (64→64 channels, 1×1, 56×56, batch 1: little compute,
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

from latprune.latency_lut.timing import fastest_over_passes
from latprune.latency_lut.units import LayerKey

CANONICAL = LayerKey("conv", 64, 64, (1, 1), (1, 1), (0, 0), in_hw=(56, 56))  # cheap compute, real data movement
PASSES = 3  # each timing is the fastest of this many medians taken at different moments
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
    from latprune.latency_lut.backends.ort_cpu import make_session, unit_onnx

    shape = [CANONICAL.batch, CANONICAL.cout, *CANONICAL.in_hw]
    ops = {"bn": "BatchNormalization", "relu": "Relu", "add": "Add"}
    graphs = {"call": _single_op_onnx("Identity", [1, 1]),  # a session call that moves no data
              "conv": unit_onnx(CANONICAL)}
    for name, flags in FOLLOWERS.items():
        graphs[name] = _single_op_onnx(ops[name], shape)
        graphs[f"conv+{name}"] = unit_onnx(replace(CANONICAL, **flags))
    names = list(graphs)
    timed = fastest_over_passes(lambda i: backend.measure_session(make_session(graphs[names[i]], backend.threads)),
                                len(names), PASSES)
    best = {name: lat.median_ms for name, lat in zip(names, timed)}
    call_ms = best["call"]
    conv_ms = best["conv"] - call_ms
    rules: dict[str, Any] = {"probe": CANONICAL.text, "call_overhead_ms": call_ms, "conv_ms": conv_ms}
    for name in FOLLOWERS:
        alone_ms = max(best[name] - call_ms, 1e-6)
        attached_ms = best[f"conv+{name}"] - call_ms - conv_ms
        rules[f"conv+{name}"] = {"fused": attached_ms < 0.5 * alone_ms, "alone_ms": alone_ms,
                                 "attached_ms": attached_ms}
    return rules
