"""Which ops the runtime fuses into the convolution before them, found by measuring.

For a canonical convolution (64→64 channels, 1×1, 56×56, batch 1: little
compute, so a follower's cost is not lost in the convolution's noise) the
probe profiles, with the runtime's own profiler, the convolution alone,
each follower op alone (BatchNorm, ReLU, a residual Add) and the
convolution with the follower attached. A follower is *fused* when the
convolution with it attached still runs as the convolution's kernels only
(no kernel of its own), and the profile records what attaching it cost
against what it costs alone. The residual of the Add comes from another
convolution, as in a whole model: ONNX Runtime fuses an add into an NCHWc
convolution only when the residual is an NCHWc tensor too, and keeps it
apart when the residual is a plain graph input (what an earlier probe fed,
which reported the add as separate). The rules are stored in the LUT's
metadata (``fusion_rules``) and shown by ``latprune lut show``; they are
what the unit builder assumes (conv + BN + add + activation = one unit).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from latprune.graph.units import LayerKey
from latprune.latency_lut.timing import Latency, fastest_over_passes

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
    """Measure the fusion rules of a backend that profiles ONNX graphs kernel by kernel (``profile_graph``)."""
    from latprune.latency_lut.backends.ort_cpu import unit_onnx

    shape = [CANONICAL.batch, CANONICAL.cout, *CANONICAL.in_hw]
    ops = {"bn": "BatchNormalization", "relu": "Relu", "add": "Add"}
    graphs = {"conv": unit_onnx(CANONICAL)}
    for name, flags in FOLLOWERS.items():
        graphs[name] = _single_op_onnx(ops[name], shape)
        graphs[f"conv+{name}"] = unit_onnx(replace(CANONICAL, **flags), aux_inputs=True)
    names = list(graphs)
    kernels: dict[str, tuple[str, ...]] = {}

    def measure(i: int) -> Latency:
        profile = backend.profile_graph(graphs[names[i]])
        kernels[names[i]] = profile.ops
        return profile.latency

    timed = fastest_over_passes(measure, len(names), PASSES)
    best = {name: lat.median_ms for name, lat in zip(names, timed)}
    rules: dict[str, Any] = {"probe": CANONICAL.text, "method": "profiler kernels", "conv_ms": best["conv"],
                             "conv_kernels": list(kernels["conv"])}
    for name in FOLLOWERS:
        rules[f"conv+{name}"] = {"fused": kernels[f"conv+{name}"] == kernels["conv"],
                                 "kernels": list(kernels[f"conv+{name}"]), "alone_ms": best[name],
                                 "attached_ms": best[f"conv+{name}"] - best["conv"]}
    return rules
