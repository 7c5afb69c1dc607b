"""latprune: hardware-aware, latency-driven structured pruning for PyTorch.

Importing this package is cheap: no onnxruntime, torchvision or tensorrt.
The public API (profile, prune, export, load, attach_gates and their objects) is
re-exported lazily from its modules.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "profile": "latprune.api",
    "prune": "latprune.api",
    "export": "latprune.api",
    "load": "latprune.api",
    "fidelity": "latprune.api",
    "LUT": "latprune.api",
    "PruneResult": "latprune.api",
    "attach_gates": "latprune.gating",
    "AttachedGates": "latprune.gating",
    "Bundle": "latprune.exporters.bundle",
    "load_bundle": "latprune.exporters.bundle",
    "PruningPlan": "latprune.pruner.plan",
    "FinetuneConfig": "latprune.pruner.loop",
    "MethodConfig": "latprune.pruner.configs",
    "GatorConfig": "latprune.pruner.configs",
    "HalpConfig": "latprune.pruner.configs",
    "TaylorConfig": "latprune.pruner.configs",
    "TrpConfig": "latprune.pruner.configs",
    "GraphRlConfig": "latprune.pruner.configs",
    "EvolutionConfig": "latprune.pruner.configs",
    "UniformL1Config": "latprune.pruner.configs",
    "FlopsConfig": "latprune.pruner.configs",
    "Budget": "latprune.budget",
    "LatpruneError": "latprune.errors",
    "LatpruneWarning": "latprune.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'latprune' has no attribute {name!r}")
