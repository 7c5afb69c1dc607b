"""ONNX Runtime on the CPU: the default backend.

A unit is measured as a one-kernel ONNX graph built directly with
``onnx.helper`` (Conv -> BatchNormalization -> Add -> activation), so ONNX
Runtime applies the same fusions it applies inside the whole model. Whole
models are exported to ONNX and timed on the wall clock.

A unit's latency is its **kernel time**, read from ONNX Runtime's own
profiler, not the wall time of its one-unit session. Alone, a unit pays
what it does not pay inside the whole model: the conversions of its input
and output to and from the NCHWc layout (``ReorderInput`` /
``ReorderOutput``: 28% of a 96-channel depthwise unit at 56×56, measured),
and the session call. Inside the whole model the convolutions pass NCHWc
tensors to each other and one ``ReorderOutput`` remains (measured on
MobileNetV2, EfficientNet-Lite0 and ResNet-18). These costs scale with
tensor sizes, not with the convolution's work, so a linear calibration of
summed wall times cannot remove them; summed kernel times leave the
calibration only the per-run constant. A residual add is fused into the
convolution only when the residual is itself an NCHWc tensor, as it is in
the whole model, so a unit's residual comes from an auxiliary convolution
whose time is left out.

A squeeze-and-excitation's ``Mul`` is no NCHWc op, so in a model ONNX
Runtime converts the feature map and the gate out of the layout for it and
the product back in: a scaling unit's time holds those conversions (of
tensors at its own shapes, :func:`scale_layouts`), and its input and output
come from auxiliary convolutions, as in a model.

A model whose weights overflow the last-level cache streams each layer's
weights from memory on every run, while a unit timed alone keeps its
weights cached. Its units holding a 256th of the cache or more
(:meth:`OrtCpuBackend.cold_units`) are keyed ``cold`` and timed after twice
the cache has been written and read (:func:`flushed`). Timed warm, a knapsack keeps the heavy layers it thinks
cheap and its picks measured 9% over their prediction on ResNet-101 at
64×64, against −2% for random configurations of the same prediction
(``benchmarks/results/pick_bias_ort-cpu_1t_warm.json``; ``_cold.json`` after).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from latprune.errors import BackendError
from latprune.graph.transformer import attention_unit
from latprune.graph.units import LayerKey
from latprune.latency_lut.backends import Backend
from latprune.latency_lut.timing import Latency, SpeedGuard, TimingConfig, time_callable
from latprune.runtime.fingerprint import host_fingerprint, last_level_cache_bytes
from latprune.runtime.ort import make_session, onnxruntime, random_feeds

OPSET = 17
AUX = "aux_"  # name prefix of the nodes a unit graph needs but whose time is not the unit's
LAYOUT_OPS = ("ReorderInput", "ReorderOutput")  # NCHWc layout conversions, absent between units in a whole model
# What a LUT entry is: "kernel" (profiler kernel time). LUTs from before it ("session" wall time, no field) are refused.
UNIT_TIMING = "kernel"
# Profiled runs per measurement, at most: reading the profiler's JSON trace took more than half of a
# small unit's measurement at ~1300 runs (ResNet-20 units: 3.2x the time of a wall-clock measurement).
KERNEL_MAX_RUNS = 300
# In a model whose weights overflow the cache, units holding a 256th of it or more (128 KiB of 32 MiB) are timed
# cold. Lighter ones' weights cost little to stream: timed cold, they mostly pay what the flush leaves behind.
COLD_UNIT_SHARE = 256
# Channels of the input that a concatenation unit's auxiliary convolutions turn into its inputs, and of the
# tensors around a scaling unit (:func:`_around`).
CONCAT_SOURCE = 16
# Runs of a cold unit: each one writes and reads twice the cache first (~8 ms with 32 MiB).
COLD_WARMUP, COLD_REPEATS = 3, 20


def unit_onnx(key: LayerKey, seed: int = 0, aux_inputs: bool = False) -> bytes:
    """A one-unit ONNX model for ``key`` with random weights.

    The residual of an ``add`` unit and the pieces a concatenation joins are
    graph inputs, or with ``aux_inputs`` the outputs of auxiliary
    convolutions (nodes named ``aux_...``), so that ONNX Runtime sees NCHWc
    tensors and fuses the add into the convolution, or runs the
    concatenation and the BatchNorm after it, as it does in a whole model."""
    from onnx import TensorProto, helper, numpy_helper

    if key.op == "attention":  # as the exporter writes it inside the whole model
        from latprune.runtime.onnx import to_onnx_bytes

        torch.manual_seed(seed)
        return to_onnx_bytes(attention_unit(key), (key.batch, *key.in_hw, key.cin))
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
    elif key.op == "concat":
        h, w = key.in_hw
        if aux_inputs:
            inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, [key.batch, CONCAT_SOURCE, h, w]))
            writers = _aux_pieces(key, init, rng)
            nodes.extend(writers)
            pieces = [node.output[0] for node in writers]
        else:
            pieces = [f"x{i}" for i in range(len(key.pieces()))]
            inputs.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, [key.batch, width, h, w])
                          for name, width in zip(pieces, key.pieces()))
        nodes.append(helper.make_node("Concat", pieces, ["y0"], axis=1))
        out_shape = [key.batch, key.cout, h, w]
    elif key.op == "scale":
        nodes.extend(_scale_nodes(key, inputs, init, rng, aux_inputs))
        out_shape = [key.batch, key.cout, *key.in_hw]
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
    if key.add and aux_inputs and key.op == "conv":
        nodes.insert(0, _aux_residual_conv(key, out_shape, init, rng))
        nodes.append(helper.make_node("Add", [last, f"{AUX}r"], ["y_add"]))
        last = "y_add"
    elif key.add:
        inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, out_shape))
        nodes.append(helper.make_node("Add", [last, "r"], ["y_add"]))
        last = "y_add"
    last = _activation(key.act, last, nodes, init)
    if key.op == "scale" and aux_inputs:
        nodes.append(_aux_reader(key, last, init, rng))
        last, out_shape = f"{AUX}z", [key.batch, _around(key), *((n + 1) // 2 for n in key.in_hw)]
    graph = helper.make_graph(nodes, "unit", inputs,
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="latprune")
    model.ir_version = 8
    return model.SerializeToString()


def flushed(unit: bytes, cache_bytes: int) -> bytes:
    """The one-unit graph with twice the cache written and read back before the unit runs, by
    auxiliary nodes (their time is left out): the unit finds its weights out of the caches, as
    a layer does inside a model whose weights exceed them, and its input freshly written, as a
    layer finds the output of the one before it. Nothing is constant, so nothing is folded away:
    the flush is an expansion of a sum of the input."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(unit)
    graph = model.graph
    x = graph.input[0].name
    fresh = f"{AUX}x"
    for node in graph.node:
        node.input[:] = [fresh if name == x else name for name in node.input]
    n = max(1, 2 * cache_bytes // 4)
    zero = helper.make_tensor(f"{AUX}zero", TensorProto.FLOAT, [], [0.0])
    size = helper.make_tensor(f"{AUX}size", TensorProto.INT64, [1], [n])
    flush = [
        helper.make_node("ReduceSum", [x], [f"{AUX}s"], name=f"{AUX}seed", keepdims=0),
        helper.make_node("Expand", [f"{AUX}s", f"{AUX}size"], [f"{AUX}big"], name=f"{AUX}write"),
        helper.make_node("ReduceSum", [f"{AUX}big"], [f"{AUX}f"], name=f"{AUX}read", keepdims=0),
        helper.make_node("Mul", [f"{AUX}f", f"{AUX}zero"], [f"{AUX}z"], name=f"{AUX}nothing"),
        helper.make_node("Add", [x, f"{AUX}z"], [fresh], name=f"{AUX}fresh"),
    ]
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(flush + nodes)
    graph.initializer.extend([zero, size])
    return model.SerializeToString()


def _aux_pieces(key: LayerKey, init: Any, rng: np.random.Generator) -> list[Any]:
    """Auxiliary 1×1 convolutions of the input ``x`` that write a concatenation's inputs
    (:meth:`LayerKey.pieces`): in a model, convolutions write them, in ONNX Runtime's NCHWc
    layout, and the concatenation and a BatchNorm after it run on that layout."""
    from onnx import helper

    return [helper.make_node("Conv", ["x", init(f"{AUX}w{i}", rng.standard_normal((width, CONCAT_SOURCE, 1, 1)))],
                             [f"{AUX}p{i}"], name=f"{AUX}piece{i}", kernel_shape=[1, 1])
            for i, width in enumerate(key.pieces())]


def _scale_nodes(key: LayerKey, inputs: list[Any], init: Any, rng: np.random.Generator, aux_inputs: bool) -> list[Any]:
    """A squeeze-and-excitation's scaling: the feature map times its global average (the
    gate's convolutions are units of their own). With ``aux_inputs`` an auxiliary stride-2
    convolution of an input at twice the size (:func:`_around`) writes the feature map
    in ONNX Runtime's NCHWc layout, as a convolution does in a model, so that the runtime
    converts it and the gate out of that layout for the ``Mul`` (and back, for
    :func:`_aux_reader`) as it does there; its tensors at other shapes tell its own layout
    conversions apart (:func:`scale_layouts`)."""
    from onnx import TensorProto, helper

    h, w = key.in_hw
    if not aux_inputs:
        inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, [key.batch, key.cin, h, w]))
        source, writer = "x", []
    else:
        around = _around(key)
        inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, [key.batch, around, 2 * h, 2 * w]))
        weight = init(f"{AUX}w", rng.standard_normal((key.cin, around, 1, 1)) * 0.1)
        source = f"{AUX}x2"
        writer = [helper.make_node("Conv", ["x", weight], [source], name=f"{AUX}writer", kernel_shape=[1, 1],
                                   strides=[2, 2])]
    return writer + [helper.make_node("GlobalAveragePool", [source], ["gate"], name="squeeze"),
                     helper.make_node("Mul", [source, "gate"], ["y0"], name="scale")]


def _aux_reader(key: LayerKey, last: str, init: Any, rng: np.random.Generator) -> Any:
    """An auxiliary stride-2 1×1 convolution that reads a scaling unit's output, as the
    convolution after a squeeze-and-excitation does: the runtime converts the output back
    into its NCHWc layout for it."""
    from onnx import helper

    weight = init(f"{AUX}wz", rng.standard_normal((_around(key), key.cout, 1, 1)) * 0.1)
    return helper.make_node("Conv", [last, weight], [f"{AUX}z"], name=f"{AUX}reader", kernel_shape=[1, 1],
                            strides=[2, 2])


def _around(key: LayerKey) -> int:
    """Channels of the tensors around a scaling unit: never its own, so that no layout
    conversion of theirs passes for one of its own."""
    return CONCAT_SOURCE if key.cin != CONCAT_SOURCE else 2 * CONCAT_SOURCE


def scale_layouts(key: LayerKey) -> frozenset[tuple[int, ...]]:
    """The shapes whose NCHWc layout conversions a scaling unit's time holds: its feature
    map's and its gate's (ONNX Runtime converts both for the ``Mul``, in a model as alone)."""
    if key.op != "scale":
        return frozenset()
    return frozenset({(key.batch, key.cin, *key.in_hw), (key.batch, key.cin, 1, 1)})


def _aux_residual_conv(key: LayerKey, out_shape: list[int], init: Any, rng: np.random.Generator) -> Any:
    """A convolution of the unit's input ``x`` with the unit's output shape: 1×1 with the
    unit's stride where that gives the shape ("same" padding), else the unit's geometry."""
    from onnx import helper

    h, w = key.in_hw
    one_by_one = all((size - 1) // s + 1 == out
                     for size, s, out in zip((h, w), key.stride, out_shape[2:]))
    kernel = (1, 1) if one_by_one else key.kernel
    pads = [0, 0, 0, 0] if one_by_one else [key.padding[0], key.padding[1], key.padding[0], key.padding[1]]
    dilations = [1, 1] if one_by_one else list(key.dilation)
    weight = init(f"{AUX}w", rng.standard_normal((key.cout, key.cin, *kernel)) * 0.1)
    return helper.make_node("Conv", ["x", weight], [f"{AUX}r"], name=f"{AUX}conv", kernel_shape=list(kernel),
                            strides=list(key.stride), pads=pads, dilations=dilations)


@dataclass(frozen=True)
class KernelProfile:
    """What ONNX Runtime's profiler saw of a graph: the latency of its kept kernels
    and the ops they ran as (one run's kernels, in order)."""

    latency: Latency
    ops: tuple[str, ...]


def profile_kernels(model: bytes, threads: int, timing: TimingConfig,
                    layouts: frozenset[tuple[int, ...]] = frozenset()) -> KernelProfile:
    """Per-run latency of ``model``'s kernels from ONNX Runtime's profiler, leaving out
    auxiliary nodes and NCHWc layout conversions, but those of tensors shaped as one of
    ``layouts`` (see the module docstring).

    The runs are those of :func:`time_callable` (warm-up first, dropped), at
    most ``KERNEL_MAX_RUNS`` of them; each run's sample is the sum of its
    kept kernels' durations."""
    timing = replace(timing, max_repeats=min(timing.max_repeats, KERNEL_MAX_RUNS))
    with tempfile.TemporaryDirectory(prefix="latprune-ort-prof-") as tmp:
        session = make_session(model, threads, profile_prefix=os.path.join(tmp, "unit"))
        feeds = random_feeds(session)
        time_callable(lambda: session.run(None, feeds), timing)
        path = session.end_profiling()
        with open(path, encoding="utf-8") as fh:
            events = json.load(fh)
    runs, kernels = _runs(events), _kept_kernels(events, layouts)
    last = [op for ts, _, op in kernels if runs[-1][0] <= ts <= runs[-1][1]]
    return KernelProfile(Latency.from_samples(_sum_per_run(runs, kernels)[timing.warmup:]), tuple(last))


def kernel_latency(model: bytes, threads: int, timing: TimingConfig,
                   layouts: frozenset[tuple[int, ...]] = frozenset()) -> Latency:
    """:func:`profile_kernels`'s latency."""
    return profile_kernels(model, threads, timing, layouts).latency


def _runs(events: list[dict[str, Any]]) -> list[tuple[int, int]]:
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    if not runs:
        raise BackendError("ONNX Runtime's profile holds no model_run event; cannot read kernel times")
    return runs


def _kept_kernels(events: list[dict[str, Any]], layouts: frozenset[tuple[int, ...]] = frozenset()
                  ) -> list[tuple[int, int, str]]:
    """(start µs, duration µs, op) of every kernel that is not ``aux_``, nor a layout conversion
    but of a tensor shaped as one of ``layouts``."""
    def kept(args: dict[str, Any]) -> bool:
        if args.get("op_name") not in LAYOUT_OPS:
            return True
        tensors = args.get("input_type_shape", []) + args.get("output_type_shape", [])
        return any(tuple(shape) in layouts for t in tensors for shape in t.values())

    return sorted((e["ts"], e["dur"], e.get("args", {}).get("op_name", "")) for e in events
                  if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
                  and not e["name"].startswith(AUX) and kept(e.get("args", {})))


def run_kernel_ms(events: list[dict[str, Any]]) -> list[float]:
    """Each ``model_run`` of an ONNX Runtime profile: the summed duration (ms) of its kernels,
    without layout conversions and ``aux_`` nodes."""
    return _sum_per_run(_runs(events), _kept_kernels(events))


def _sum_per_run(runs: list[tuple[int, int]], kernels: list[tuple[int, int, str]]) -> list[float]:
    """The summed duration (ms) of the ``kernels`` that started within each run, both sorted by start."""
    totals = [0.0] * len(runs)
    i = 0
    for ts, dur, _ in kernels:
        while i < len(runs) - 1 and ts > runs[i][1]:
            i += 1
        if runs[i][0] <= ts <= runs[i][1]:
            totals[i] += dur / 1000.0
    return totals


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
    elif act == "hardsigmoid":  # torch's relu6(x + 3) / 6
        nodes.append(helper.make_node("HardSigmoid", [last], ["y_act"], alpha=1 / 6, beta=0.5))
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
    _guard: SpeedGuard | None = None

    @property
    def preferred_align(self) -> int:  # type: ignore[override]
        """ONNX Runtime's NCHWc convolutions block channels by the SIMD width: 16 floats with AVX-512, else 8."""
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                return 16 if " avx512f" in fh.read() else 8
        except OSError:
            return 8

    def fingerprint(self) -> dict[str, Any]:
        ort = onnxruntime()
        return {
            "backend": self.name, "runtime": "onnxruntime", "runtime_version": ort.__version__,
            "threads": self.threads, "precision": "fp32", "device": host_fingerprint()["cpu"],
            "unit_timing": UNIT_TIMING,
            **host_fingerprint(),
        }

    def measure_session(self, session: Any, timing: TimingConfig | None = None) -> Latency:
        """The session's latency on random inputs; on more than one thread, between
        probes that found the machine at its usual speed (:meth:`speed_guard`)."""
        feeds = random_feeds(session)

        def run() -> Latency:
            return time_callable(lambda: session.run(None, feeds), timing or self.timing)

        guard = self.speed_guard()
        return run() if guard is None else guard.measure(run)

    def speed_guard(self) -> SpeedGuard | None:
        """The :class:`SpeedGuard` of this backend's whole-model timings: a 3×3
        convolution (32 channels, 56×56, ~0.3 ms) on the same threads, 20 runs.
        None on one thread, where this VM showed no slow state (CV 2.3% over
        a minute against 29% on two threads)."""
        if self.threads < 2:
            return None
        if self._guard is None:
            probe = make_session(unit_onnx(LayerKey("conv", 32, 32, (3, 3), padding=(1, 1), in_hw=(56, 56),
                                                    bn=True, act="relu")), self.threads)
            feeds = random_feeds(probe)
            config = TimingConfig(warmup=2, repeats=20, min_time_s=0.0, max_repeats=20, max_spread=float("inf"))
            self._guard = SpeedGuard(lambda: time_callable(lambda: probe.run(None, feeds), config).median_ms)
        return self._guard

    def profile_graph(self, model: bytes) -> KernelProfile:
        """Kernel time and kernels of an ONNX graph, from ONNX Runtime's profiler."""
        return profile_kernels(model, self.threads, self.timing)

    def measure_unit(self, key: LayerKey) -> Latency:
        """The unit's kernel time inside ONNX Runtime (see the module docstring); a ``cold`` key's
        with the caches flushed before each run (:func:`flushed`)."""
        unit = unit_onnx(key, aux_inputs=True)
        if not key.cold:
            return kernel_latency(unit, self.threads, self.timing, scale_layouts(key))
        timing = replace(self.timing, warmup=COLD_WARMUP, repeats=COLD_REPEATS, min_time_s=0.0)
        return kernel_latency(flushed(unit, last_level_cache_bytes()), self.threads, timing, scale_layouts(key))

    def cold_units(self, graph: Any) -> frozenset[str]:
        """Where the model's weights (fp32) overflow the last-level cache, its units holding a
        ``COLD_UNIT_SHARE``-th of the cache or more; none otherwise."""
        cache = last_level_cache_bytes()
        weights = {u.name: 4 * u.base.weights for u in graph.units}
        if sum(weights.values()) <= cache:
            return frozenset()
        return frozenset(name for name, size in weights.items() if size >= cache // COLD_UNIT_SHARE)

    def measure_model(self, model: nn.Module, input_shape: tuple[int, ...]) -> Latency:
        from latprune.runtime.onnx import to_onnx_bytes

        return self.measure_session(make_session(to_onnx_bytes(model, input_shape), self.threads), self.model_timing)

    def measure_export(self, onnx: bytes) -> Latency:
        return self.measure_session(make_session(onnx, self.threads), self.model_timing)

    def measure_artifact(self, path: str) -> Latency:
        if not str(path).endswith(".onnx"):
            raise BackendError(f"ort-cpu times .onnx files; {path!r} is not one")
        return self.measure_session(make_session(path, self.threads), self.model_timing)
