"""How far to trust a LUT: predicted vs measured latency of random width configurations.

Draws N width configurations that span the model's latency range, builds
each, measures it end to end on the backend, and compares with the LUT's
calibrated prediction. Reports the median absolute % error, the share of
configurations within ±5% and ±10%, and Spearman's rank correlation (what
the knapsack needs most: that a faster prediction is a faster model).

Every configuration is measured in two passes (the second in reverse order)
and its faster median kept, the same rule as the LUT's units. Two
predictions are scored: the LUT as stored, and the LUT re-anchored on a
measurement of the full model taken at the start (what ``prune`` does), which
removes the device's drift since profiling. On a backend with a
:class:`~latprune.latency_lut.timing.SpeedGuard` the report counts the
probes that found the machine slower than usual (those measurements were
waited for or repeated).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from latprune.errors import LutError
from latprune.latency_lut.backends import Backend
from latprune.latency_lut.calibrate import random_configs
from latprune.latency_lut.predict import Predictor
from latprune.latency_lut.profile import grid_keys, load_calibration, measure_widths
from latprune.latency_lut.store import Lut
from latprune.pruner.graph import ChannelGraph


@dataclass(frozen=True)
class ErrorStats:
    median_abs_pct: float
    within_5_pct: float       # share of configurations (0..1)
    within_10_pct: float
    spearman: float

    @classmethod
    def of(cls, predicted: list[float], measured: list[float]) -> ErrorStats:
        p, m = np.asarray(predicted), np.asarray(measured)
        err = np.abs(p - m) / m * 100
        return cls(float(np.median(err)), float(np.mean(err <= 5)), float(np.mean(err <= 10)), spearman(p, m))


@dataclass(frozen=True)
class FidelityReport:
    model: str
    lut: str
    samples: int
    stored: ErrorStats                      # the LUT's calibrated prediction as stored
    anchored: ErrorStats                    # re-anchored on the full model measured now
    drift: float                            # measured full model / LUT prediction of it
    seconds: float
    points: list[dict[str, Any]] = field(default_factory=list)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    slow_probes: int = 0                    # probes that found the machine slow (SpeedGuard); 0 without one
    probe_trace: list[tuple[float, float]] = field(default_factory=list)  # every probe: (s, ms); [] without one

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for v in np.unique(x):  # average ties
            idx = x == v
            r[idx] = r[idx].mean()
        return r

    if len(a) < 2:
        return float("nan")
    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    return float(np.corrcoef(ra, rb)[0, 1])


def fidelity(graph: ChannelGraph, lut: Lut, backend: Backend, samples: int, model_name: str = "model",
             seed: int = 1234, progress: bool = True, blocks: bool = False) -> FidelityReport:
    """Predicted vs measured latency of ``samples`` random width configurations
    (with ``blocks``, a removable block's narrowest option is its removal)."""
    if samples < 2:
        raise LutError(f"--samples must be at least 2, got {samples}")
    stored = load_calibration(lut, graph.signature())
    if stored is None:
        raise LutError(f"the LUT {lut.path} has no calibration for this model; profile it first: "
                       f"`latprune profile {model_name} -o {lut.path}`")
    calibration, grid = stored
    predictor = Predictor(lut, graph, calibration)
    missing = predictor.missing(grid_keys(graph, grid))
    if missing:
        raise LutError(f"the LUT {lut.path} lacks {len(missing)} of this model's units; "
                       f"`latprune profile {model_name} -o {lut.path}` adds them")
    start = time.time()
    guard = backend.speed_guard()
    slow_before = guard.slow if guard is not None else 0
    probes_before = len(guard.trace) if guard is not None else 0
    full = graph.full_widths()
    configs = [full] + random_configs(graph.options(grid, blocks=blocks), samples, seed)
    measured = measure_widths(graph, backend, configs, desc="fidelity", progress=progress)
    drift = measured[0].median_ms / predictor.predict(full)
    points = []
    for widths, lat in zip(configs[1:], measured[1:]):
        predicted = predictor.predict(widths)
        points.append({"predicted_ms": predicted, "anchored_ms": predicted * drift,
                       "measured_ms": lat.median_ms, "p10_ms": lat.p10_ms, "p90_ms": lat.p90_ms,
                       "widths": [widths[g] for g in sorted(widths)],
                       "removed_blocks": [b.name for b in graph.removed_blocks(widths)]})
    measured_ms = [p["measured_ms"] for p in points]
    return FidelityReport(
        model_name, str(lut.path), samples,
        ErrorStats.of([p["predicted_ms"] for p in points], measured_ms),
        ErrorStats.of([p["anchored_ms"] for p in points], measured_ms),
        drift, round(time.time() - start, 2), points, backend.fingerprint(),
        guard.slow - slow_before if guard is not None else 0,
        guard.trace[probes_before:] if guard is not None else [],
    )
