"""The demo: profile → prune to a budget → export → measure, on the embedded default."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from latprune.bench import bench
from latprune.latency_lut.backends import get_backend
from latprune.latency_lut.profile import build_lut
from latprune.models import load_model
from latprune.pruner.graph import ChannelGraph
from latprune.pruner.loop import PruneConfig, prune


def run_demo(out: Path, budget: str = "0.5x", epochs: float = 0.3, threads: int | None = None,
             progress: bool = True, gate_epochs: float = 0.3) -> dict[str, Any]:
    """The default method (``gator``) with short gate training and fine-tuning, so the demo takes minutes."""
    start = time.time()
    backend = get_backend("ort-cpu", threads)
    lut_path = out / f"ort-cpu-{backend.threads}t.lut"
    spec = load_model("default")
    graph = ChannelGraph.build(spec.model, spec.input_shape)
    profile = build_lut(graph, lut_path, backend, model_name=spec.name, progress=progress).to_dict()
    run_dir = out / "run"
    metrics = prune(PruneConfig(model="default", lut=str(lut_path), budget=budget, out=str(run_dir),
                                threads=backend.threads, epochs=epochs, gate_epochs=gate_epochs, force=True,
                                progress=progress))
    measured = bench(str(run_dir), str(lut_path), "ort-cpu", backend.threads)
    return {"profile": profile, "prune": metrics, "bench": measured, "run_dir": str(run_dir),
            "seconds": time.time() - start}
