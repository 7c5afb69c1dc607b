"""The demo: profile → prune to a budget → export → measure, on the embedded default, through the API."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from latprune.api import LUT, load, profile, prune
from latprune.bench import bench
from latprune.data import load_data, loader
from latprune.latency_lut.backends import default_threads
from latprune.models import registered_model
from latprune.pruner.configs import GatorConfig
from latprune.pruner.loop import FinetuneConfig


def run_demo(out: Path, budget: str = "0.5x", epochs: float = 0.3, threads: int | None = None,
             progress: bool = True, gate_epochs: float = 0.3) -> dict[str, Any]:
    """The default method (``gator``) with short gate training and fine-tuning, so the demo takes minutes.
    Writes the LUT and the run directory under ``out`` (a previous demo's are replaced)."""
    start = time.time()
    spec = registered_model("default")
    assert spec is not None and spec.default_data is not None  # the embedded default is always registered
    threads = threads or default_threads()
    lut: LUT = profile(spec.model, spec.input_shape, "ort-cpu", threads, out / f"ort-cpu-{threads}t.lut",
                       name=spec.name, progress=progress)
    data = load_data(spec.default_data)
    result = prune(spec.model, lut, budget, example_input=spec.input_shape, method=GatorConfig(gate_epochs=gate_epochs),
                   train_loader=loader(data.train, 64, shuffle=True), val_loader=loader(data.test, 128, shuffle=False),
                   finetune=FinetuneConfig(epochs=epochs), name=spec.name, data_name=data.name, progress=progress)
    run_dir = result.save(out / "run", overwrite=True)
    load(run_dir)  # the run replays from its directory alone
    measured = bench(str(run_dir), str(lut.path), "ort-cpu", lut.threads)
    assert lut.report is not None
    return {"profile": lut.report.to_dict(), "prune": result.metrics, "bench": measured, "run_dir": str(run_dir),
            "seconds": time.time() - start}
