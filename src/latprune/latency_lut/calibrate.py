"""Calibration: fit ``measured ≈ scale · Σunits + offset`` from whole-model measurements.

The sum of per-unit latencies misses what the units do not contain (pooling,
adds that are not fused, the session's fixed cost) and what running units
back to back changes (caches, thread wake-ups). A few end-to-end
measurements at different widths fix both, to first order.
"""

from __future__ import annotations

import random
import numpy as np

from latprune.latency_lut.predict import Calibration


def fit(raw_ms: list[float], measured_ms: list[float]) -> Calibration:
    """Least-squares line through (raw, measured); offset only with one point."""
    x = np.asarray(raw_ms, dtype=float)
    y = np.asarray(measured_ms, dtype=float)
    if len(x) == 0:
        return Calibration()
    if len(x) == 1 or np.ptp(x) < 1e-9:
        scale, offset = 1.0, float(np.mean(y - x))
    else:
        scale, offset = (float(v) for v in np.polyfit(x, y, 1))
        if scale <= 0:  # degenerate data: fall back to a pure offset
            scale, offset = 1.0, float(np.mean(y - x))
    pred = scale * x + offset
    residual = float(np.median(np.abs(pred - y) / y) * 100)
    return Calibration(scale, offset, residual, len(x))


def calibration_configs(sizes: dict[int, list[int]], samples: int, seed: int = 0) -> list[dict[int, int]]:
    """Width configurations to measure: full width, uniform levels, then random ones.

    ``sizes[g]`` is the sorted list of width options of group ``g``."""
    rng = random.Random(seed)
    configs: list[dict[int, int]] = [{g: opts[-1] for g, opts in sizes.items()}]
    for frac in (0.25, 0.5, 0.75):
        configs.append({g: opts[min(len(opts) - 1, int(frac * len(opts)))] for g, opts in sizes.items()})
    while len(configs) < samples:
        configs.append({g: rng.choice(opts) for g, opts in sizes.items()})
    return configs[: max(samples, 1)]
