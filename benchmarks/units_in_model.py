"""Benchmark: a latency unit's kernel time alone against its kernels' time inside the whole model.

    python benchmarks/units_in_model.py [--model torchvision:vit_b_16] [--input 1x3x64x64] [--runs 30]

On ort-cpu (1 thread): the model is exported to ONNX and run ``--runs`` times under ONNX
Runtime's profiler; each node's kernel time is attributed to the latency unit whose
module it belongs to (by the node's name, which carries the module path), and compared
with that unit timed alone the way the LUT times it (``OrtCpuBackend.measure_unit``).
A ratio above 1 is context the LUT key does not hold: weights that stream from memory
inside a large model but stay in cache when a unit is timed alone, layouts, fusions.
Writes ``benchmarks/results/units_in_model_<model>.json`` with the device fingerprint.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from results_io import write_json

HERE = Path(__file__).parent


def scope(module: str) -> str:
    """The prefix of the ONNX node names of ``module`` as the TorchScript exporter writes them:
    ``layers.0.mlp.0`` → ``/layers/layers.0/mlp/mlp.0/`` (a numbered child carries its parent's name)."""
    parts = module.split(".")
    return "/" + "/".join(f"{parts[i - 1]}.{p}" if p.isdigit() and i else p for i, p in enumerate(parts)) + "/"


WARMUP = 5  # runs left out: the first runs of a session allocate and pack weights


def node_ms_by_unit(onnx: bytes, unit_names: list[str], runs: int) -> tuple[dict[str, float], float]:
    """Mean kernel ms per run of each unit's nodes inside the model, and of every node, over
    ``runs`` runs after :data:`WARMUP` runs."""
    from latprune.runtime.ort import make_session, random_feeds

    paths = {name: scope(name) for name in unit_names}
    with tempfile.TemporaryDirectory() as tmp:
        session = make_session(onnx, 1, profile_prefix=os.path.join(tmp, "model"))
        feeds = random_feeds(session)
        for _ in range(WARMUP + runs):
            session.run(None, feeds)
        with open(session.end_profiling(), encoding="utf-8") as fh:
            events = json.load(fh)
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    measured_from = starts[WARMUP]
    per_unit: dict[str, float] = collections.defaultdict(float)
    total = 0.0
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < measured_from:
            continue
        ms = e["dur"] / 1000 / runs
        total += ms
        node = "/" + e["name"][: -len("_kernel_time")]
        owner = max((u for u, p in paths.items() if p in node + "/"), key=len, default=None)
        if owner is not None:
            per_unit[owner] += ms
    return dict(per_unit), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="torchvision:vit_b_16")
    parser.add_argument("--input", default="1x3x64x64")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    from latprune.graph.channels import ChannelGraph
    from latprune.latency_lut.backends import get_backend
    from latprune.runtime.onnx import to_onnx_bytes
    from latprune.specs import load_model

    spec = load_model(args.model, args.input)
    graph = ChannelGraph.build(spec.model, spec.input_shape)
    backend = get_backend("ort-cpu", threads=1)
    inside, total = node_ms_by_unit(to_onnx_bytes(graph.model, spec.input_shape), [u.name for u in graph.units],
                                    args.runs)
    rows: list[dict[str, Any]] = []
    for unit in graph.units:
        alone = backend.measure_unit(unit.base).median_ms
        rows.append({"unit": unit.name, "op": unit.base.op, "key": unit.base.text, "alone_ms": round(alone, 4),
                     "in_model_ms": round(inside.get(unit.name, 0.0), 4),
                     "ratio": round(inside.get(unit.name, 0.0) / alone, 2) if alone > 0 else None})
    by_op: dict[str, dict[str, float]] = collections.defaultdict(lambda: {"alone_ms": 0.0, "in_model_ms": 0.0})
    for r in rows:
        by_op[r["op"]]["alone_ms"] += r["alone_ms"]
        by_op[r["op"]]["in_model_ms"] += r["in_model_ms"]
    params_mb = sum(p.numel() * p.element_size() for p in graph.model.parameters()) / 2**20
    result = {"model": args.model, "input": list(spec.input_shape), "runs": args.runs,
              "parameters_mib": round(params_mb, 1), "model_kernels_ms": round(total, 3),
              "by_op": {op: {**{k: round(v, 3) for k, v in d.items()},
                             "ratio": round(d["in_model_ms"] / d["alone_ms"], 2)}
                        for op, d in by_op.items() if d["alone_ms"] > 0},
              "units": rows, "fingerprint": backend.fingerprint()}
    name = args.model.replace(":", "_")
    write_json(HERE / "results" / f"units_in_model_{name}.json", result)
    print(json.dumps({k: result[k] for k in ("model", "parameters_mib", "model_kernels_ms", "by_op")}, indent=1))


if __name__ == "__main__":
    main()
