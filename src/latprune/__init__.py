"""latprune: hardware-aware, latency-driven structured pruning for PyTorch.

Importing this package is cheap: no onnxruntime, torchvision or tensorrt.
The public API is re-exported lazily from its modules.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "LatpruneError": "latprune.errors",
    "load_model": "latprune.models",
    "load_data": "latprune.data",
    "build_lut": "latprune.latency_lut.profile",
    "Lut": "latprune.latency_lut.store",
    "Predictor": "latprune.latency_lut.predict",
    "get_backend": "latprune.latency_lut.backends",
    "prune": "latprune.pruner.loop",
    "PruneConfig": "latprune.pruner.loop",
    "PruningPlan": "latprune.pruner.plan",
    "parse_budget": "latprune.budget",
    "export_onnx": "latprune.exporters.onnx",
    "export_aoti": "latprune.exporters.aoti",
    "ExportOptions": "latprune.exporters.bundle",
    "write_bundle": "latprune.exporters.bundle",
    "load_bundle": "latprune.exporters.bundle",
    "run_bundle": "latprune.run",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'latprune' has no attribute {name!r}")
