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
    """Width configurations to measure: full width, uniform levels, then random ones
    drawn like the pruner's solutions (see :func:`random_configs`).

    ``sizes[g]`` is the sorted list of width options of group ``g``."""
    configs: list[dict[int, int]] = [{g: opts[-1] for g, opts in sizes.items()}]
    for frac in (0.25, 0.5, 0.75):
        configs.append({g: opts[min(len(opts) - 1, int(frac * len(opts)))] for g, opts in sizes.items()})
    configs += random_configs(sizes, max(0, samples - len(configs)), seed)
    return configs[: max(samples, 1)]


def random_configs(options: dict[int, list[int]], n: int, seed: int = 1234) -> list[dict[int, int]]:
    """Configurations spanning the latency range: each draws a global keep level
    in [0.15, 1], and every group takes an option within ±2 levels of it."""
    rng = random.Random(seed)
    configs = []
    for _ in range(n):
        level = rng.uniform(0.15, 1.0)
        widths = {}
        for g, opts in options.items():
            centre = level * (len(opts) - 1)
            i = int(round(centre + rng.uniform(-2, 2)))
            widths[g] = opts[min(max(i, 0), len(opts) - 1)]
        configs.append(widths)
    return configs
