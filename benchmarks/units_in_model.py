"""Benchmark: a latency unit's kernel time alone against its kernels' time inside the whole model.

    python benchmarks/units_in_model.py [--model torchvision:vit_b_16] [--input 1x3x64x64] [--runs 30] [--cold 8]
                                        [--fraction 0.25]

On ort-cpu (1 thread): the model is exported to ONNX and run ``--runs`` times under ONNX
Runtime's profiler; each node's kernel time is attributed to the latency unit whose
module it belongs to (by the node's name, which carries the module path), and compared
with that unit timed alone the way the LUT times it (``OrtCpuBackend.measure_unit``), and
with ``--cold K`` as ``K`` copies run in turn, its weights out of the caches (:func:`copies`), and
with ``--flush`` as the LUT times a cold unit, after twice the cache is written and read
(:func:`latprune.latency_lut.backends.ort_cpu.flushed`).
``--fraction F`` slims every channel group to that share of its channels first (in its own
pruning step, the first channels), to compare a narrow configuration the same way.
A ratio above 1 is context the LUT key does not hold: weights that stream from memory
inside a large model but stay in cache when a unit is timed alone, layouts, fusions.
The kernels no unit owns are summed by op type beside them (``outside_units_ms``): what the
calibration has to carry. Writes ``benchmarks/results/units_in_model_<model>.json`` (``_<size>``
after it where ``--input`` is not 64×64, ``_f<F>`` where ``--fraction`` is not 1) with the device fingerprint.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_json  # noqa: E402

HERE = Path(__file__).parent


def scope(module: str) -> str:
    """The prefix of the ONNX node names of ``module`` as the TorchScript exporter writes them:
    ``features.1.0.block.0`` → ``/features/features.1/features.1.0/block/block.0/`` (a numbered
    child carries the dotted name from its nearest named ancestor down)."""
    levels, run = [], ""
    for part in module.split("."):
        run = f"{run}.{part}" if part.isdigit() and run else part
        levels.append(run)
    return "/" + "/".join(levels) + "/"


def copies(unit: bytes, k: int) -> bytes:
    """``k`` copies of a one-unit ONNX graph side by side, each with weights of its own, all
    reading the same inputs: run in turn, each copy's weights have left the caches when it
    runs again (where ``k`` times the unit's weights exceed them), as a layer's do inside a
    model whose weights exceed them. Auxiliary nodes keep their prefix (their time is left out)."""
    import onnx
    from onnx import helper, numpy_helper

    from latprune.latency_lut.backends.ort_cpu import AUX

    model = onnx.load_from_string(unit)
    graph = model.graph
    shared = {i.name for i in graph.input}
    nodes, inits, outputs = [], [], []
    for c in range(k):
        def renamed(name: str) -> str:
            return name if name in shared or not name else f"c{c}_{name}"

        for init in graph.initializer:
            array = numpy_helper.to_array(init)
            inits.append(numpy_helper.from_array(array * (1 + 1e-3 * c) if array.dtype.kind == "f" else array,
                                                 renamed(init.name)))
        for index, node in enumerate(graph.node):
            prefix = AUX if node.name.startswith(AUX) else ""
            copy = helper.make_node(node.op_type, [renamed(n) for n in node.input], [renamed(n) for n in node.output],
                                    name=f"{prefix}c{c}_{index}_{node.op_type}", domain=node.domain)
            copy.attribute.extend(node.attribute)
            nodes.append(copy)
        for out in graph.output:
            value = onnx.ValueInfoProto()
            value.CopyFrom(out)
            value.name = renamed(out.name)
            outputs.append(value)
    merged = helper.make_model(helper.make_graph(nodes, "copies", list(graph.input), outputs, inits),
                               opset_imports=model.opset_import, producer_name="latprune")
    merged.ir_version = model.ir_version
    return merged.SerializeToString()


WARMUP = 5  # runs left out: the first runs of a session allocate and pack weights


# Activations, which ONNX Runtime runs as a kernel of their own right after their unit's (named
# after themselves, or ``Gelu_token_N`` where a fusion made them), and the ops it fuses and names
# after the activation (or add) at their end (a convolution named ``…/relu/Relu_output_0_nchwc``).
ACTIVATIONS = {"QuickGelu", "Relu", "Sigmoid", "HardSigmoid", "HardSwish", "Clip", "Gelu", "FastGelu"}
FUSED_NAMED_AFTER_TAIL = ACTIVATIONS | {"Conv", "FusedConv", "FusedMatMul", "MatMul", "Gemm"}
SCALE_OPS = {"GlobalAveragePool", "ReduceMean", "Mul"}  # a squeeze-and-excitation's own, beside its gate layers
HOPS = 4  # producers walked back from a fused node's named tail to the unit it belongs to


def unit_of_node(unit_names: list[str], graph: Any) -> Callable[[str, str], str | None]:
    """The unit a profiled node belongs to: the unit whose module path holds the node's name, or,
    for a node ONNX Runtime fused and named after its tail (a convolution named
    ``…/relu/Relu_output_0_nchwc``, a ``…/act/Mul/QuickGeluFusion/``), the unit of the first
    producer within :data:`HOPS` steps up the exported graph's first inputs that one holds;
    None where neither finds one. A ``Concat`` node belongs to the concatenation unit anchored
    (``ANCHOR:cat``) at a node it feeds, and so do the nodes of an anchor that is no other unit
    (DenseNet's BatchNorm after its concatenation); a pooling or a product in a
    squeeze-and-excitation (``SE:scale``) that no unit of its gate holds belongs to its scaling
    unit (the gate's convolutions, named after their activations there, stay theirs)."""
    by_name = {n.name: n for n in graph.node}
    by_output = {o: n for n in graph.node for o in n.output}
    readers = collections.defaultdict(list)
    for n in graph.node:
        for i in n.input:
            readers[i].append(n)
    plain = {name: scope(name) for name in unit_names if ":" not in name}
    cats = {scope(name.removesuffix(":cat")): name for name in unit_names if name.endswith(":cat")}
    scales = {name: scope(name.removesuffix(":scale")) for name in unit_names if name.endswith(":scale")}
    paths = {**plain, **{name: path for path, name in cats.items() if path not in plain.values()}}

    def owner(name: str, among: dict[str, str] = paths) -> str | None:
        return max((u for u, p in among.items() if p in name + "/"), key=lambda u: len(among[u]), default=None)

    def concat(name: str) -> str | None:
        node = by_name.get(name)
        fed = [r for o in (node.output if node is not None else []) for r in readers[o]]
        return next((cats[p] for r in fed for p in cats if p in r.name + "/"), None)

    def find(name: str, op: str) -> str | None:
        if op == "Concat":
            return concat(name)
        unit = owner(name)
        if unit is None and op in SCALE_OPS:
            return owner(name, scales)
        if unit is not None or op not in FUSED_NAMED_AFTER_TAIL:
            return unit
        tail = name.split("/QuickGeluFusion")[0].removesuffix("_nchwc")
        node = by_name.get(tail) or by_output.get(tail)
        for _ in range(HOPS):
            if node is None or not node.input:
                return None
            node = by_output.get(node.input[0])
            if node is not None and (unit := owner(node.name)) is not None:
                return unit
        return None

    return find


def node_ms_by_unit(onnx: bytes, unit_names: list[str], runs: int,
                    outside: dict[str, float] | None = None) -> tuple[dict[str, float], float]:
    """Mean kernel ms per run of each unit's nodes inside the model, and of every node, over
    ``runs`` runs after :data:`WARMUP` runs (nodes attributed by :func:`unit_of_node`; an
    activation it cannot place, to the unit whose kernel ran just before it; a layout
    conversion, to a scaling unit whose kernel ran just after or before it); ``outside``, when
    given, receives the kernel ms of the nodes no unit owns, by op type (pooling, layout
    conversions)."""
    import onnx as onnx_lib

    from latprune.latency_lut.backends.ort_cpu import LAYOUT_OPS
    from latprune.runtime.ort import make_session, random_feeds

    find = unit_of_node(unit_names, onnx_lib.load_from_string(onnx).graph)
    with tempfile.TemporaryDirectory() as tmp:
        session = make_session(onnx, 1, profile_prefix=os.path.join(tmp, "model"))
        feeds = random_feeds(session)
        for _ in range(WARMUP + runs):
            session.run(None, feeds)
        with open(session.end_profiling(), encoding="utf-8") as fh:
            events = json.load(fh)
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    measured_from = starts[WARMUP]
    kernels = sorted((e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
                      and e["ts"] >= measured_from), key=lambda e: e["ts"])
    ops = [e.get("args", {}).get("op_name", "?") for e in kernels]
    names = [e["name"][: -len("_kernel_time")].lstrip("/") for e in kernels]
    owners = [find("/" + name, op) for name, op in zip(names, ops)]
    beside = _owners_beside(owners)
    per_unit: dict[str, float] = collections.defaultdict(float)
    total = 0.0
    for e, op, name, owner, (before, after) in zip(kernels, ops, names, owners, beside):
        ms = e["dur"] / 1000 / runs
        total += ms
        if owner is None and (op in ACTIVATIONS or name.startswith("gemm_output_reshape")):
            owner = before  # named by a fusion alone: it finishes the unit that ran before it
        elif owner is None and name.startswith("gemm_input_reshape"):
            owner = after   # the reshape ONNX Runtime puts before a Gemm over tokens
        elif owner is None and op in LAYOUT_OPS:  # into and out of NCHWc around an excitation's product
            owner = next((o for o in (after, before) if o is not None and o.endswith(":scale")), None)
        if owner is not None:
            per_unit[owner] += ms
        elif outside is not None:
            outside[op] = outside.get(op, 0.0) + ms
    return dict(per_unit), total


def _owners_beside(owners: list[str | None]) -> list[tuple[str | None, str | None]]:
    """For each kernel, the owner of the nearest owned kernel before it and after it."""
    before, last = [], None
    for owner in owners:
        before.append(last)
        last = owner if owner is not None else last
    after, following = [], None
    for owner in reversed(owners):
        after.append(following)
        following = owner if owner is not None else following
    return list(zip(before, reversed(after)))


def narrowed(graph: Any, fraction: float, align: int) -> dict[int, list[int]]:
    """The first channels of each group of ``graph``: ``fraction`` of them, rounded to the group's
    pruning step at ``align`` (at least one step; every channel of a group narrower than that)."""
    import numpy as np

    keep = {}
    for g in graph.groups:
        step = g.step(align)
        width = min(g.size, max(step, round(fraction * g.size / step) * step))
        keep[g.id] = g.top(-np.arange(g.size, dtype=float), width)
    return keep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="torchvision:vit_b_16")
    parser.add_argument("--input", default="1x3x64x64")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--cold", type=int, default=0, metavar="K",
                        help="also time each unit as K copies run in turn, its weights cold (cold_ms)")
    parser.add_argument("--flush", action="store_true",
                        help="also time each unit as the LUT times a cold one, the caches flushed (flush_ms)")
    parser.add_argument("--fraction", type=float, default=1.0,
                        help="slim every channel group to this share of its channels first (default 1: the model)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    from latprune.graph.channels import ChannelGraph
    from latprune.latency_lut.backends import get_backend
    from latprune.latency_lut.backends.ort_cpu import kernel_latency, unit_onnx
    from latprune.runtime.onnx import to_onnx_bytes
    from latprune.specs import load_model

    spec = load_model(args.model, args.input)
    graph = ChannelGraph.build(spec.model, spec.input_shape)
    backend = get_backend("ort-cpu", threads=1)
    if args.fraction != 1.0:
        graph = ChannelGraph.build(graph.slim(narrowed(graph, args.fraction, backend.preferred_align)),
                                   spec.input_shape)
    outside: dict[str, float] = {}
    inside, total = node_ms_by_unit(to_onnx_bytes(graph.model, spec.input_shape), [u.name for u in graph.units],
                                    args.runs, outside)
    rows: list[dict[str, Any]] = []
    for unit in graph.units:
        alone = backend.measure_unit(unit.base).median_ms
        row = {"unit": unit.name, "op": unit.base.op, "key": unit.base.text, "alone_ms": round(alone, 4),
               "in_model_ms": round(inside.get(unit.name, 0.0), 4),
               "ratio": round(inside.get(unit.name, 0.0) / alone, 2) if alone > 0 else None}
        if args.cold and unit.base.op != "attention":
            cold = kernel_latency(copies(unit_onnx(unit.base, aux_inputs=True), args.cold), 1,
                                  backend.timing).median_ms / args.cold
            row.update(cold_ms=round(cold, 4), weight_mib=round(4 * unit.base.weights / 2**20, 3),
                       cold_ratio=round(inside.get(unit.name, 0.0) / cold, 2) if cold > 0 else None)
        if args.flush and unit.base.op != "attention":
            flushed = backend.measure_unit(replace(unit.base, cold=True)).median_ms
            row.update(flush_ms=round(flushed, 4), weight_mib=round(4 * unit.base.weights / 2**20, 3),
                       flush_ratio=round(inside.get(unit.name, 0.0) / flushed, 2) if flushed > 0 else None)
        rows.append(row)
    by_op: dict[str, dict[str, float]] = collections.defaultdict(lambda: {"alone_ms": 0.0, "in_model_ms": 0.0})
    for r in rows:
        by_op[r["op"]]["alone_ms"] += r["alone_ms"]
        by_op[r["op"]]["in_model_ms"] += r["in_model_ms"]
    params_mb = sum(p.numel() * p.element_size() for p in graph.model.parameters()) / 2**20
    result = {"model": args.model, "input": list(spec.input_shape), "runs": args.runs, "cold_copies": args.cold,
              "flush": args.flush,
              "parameters_mib": round(params_mb, 1), "model_kernels_ms": round(total, 3),
              "by_op": {op: {**{k: round(v, 3) for k, v in d.items()},
                             "ratio": round(d["in_model_ms"] / d["alone_ms"], 2)}
                        for op, d in by_op.items() if d["alone_ms"] > 0},
              "outside_units_ms": {op: round(ms, 4) for op, ms in sorted(outside.items(), key=lambda kv: -kv[1])},
              "units": rows, "fingerprint": backend.fingerprint()}
    name = args.model.replace(":", "_") + ("" if spec.input_shape[-2:] == (64, 64) else f"_{spec.input_shape[-1]}")
    name += "" if args.fraction == 1.0 else f"_f{args.fraction:g}"
    write_json(HERE / "results" / f"units_in_model_{name}.json", result)
    print(json.dumps({k: result[k] for k in ("model", "parameters_mib", "model_kernels_ms", "by_op",
                                             "outside_units_ms")}, indent=1))


if __name__ == "__main__":
    main()
