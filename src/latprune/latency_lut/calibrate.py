"""Calibration: fit ``measured ≈ scale · Σunits + offset`` from whole-model measurements.

The sum of per-unit latencies misses what the units do not contain (pooling,
adds that are not fused, the session's fixed cost) and what running units
back to back changes (caches, thread wake-ups). A few end-to-end
measurements at different widths fix both, to first order.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import numpy as np

from latprune.latency_lut.predict import Calibration
from latprune.latency_lut.timing import NOISY_RESIDUAL_PCT, NOISY_SPREAD_PCT, noisy_calibration

# Stored with each calibration: a LUT fitted another way is re-calibrated by the next `profile`.
# "-aligned": fitted on configurations of the grid that aligns every group wider than one
# block (before, groups of up to two blocks took unaligned widths; see Grid.widths).
# "-nonneg": the per-removed-unit term is never negative, and needs MIN_REMOVAL_POINTS points (see fit).
# "-removals": the configurations include MIN_REMOVAL_POINTS that remove blocks (see removal_configs).
FIT_METHOD = "relative-trimmed-blocks-aligned-nonneg-min3-removals"
MIN_REMOVAL_POINTS = 3  # points that remove blocks before the per-removed-unit term is fitted
OUTLIER_PCT = 8.0   # a point this far (and 3 MADs) off the first fit is dropped from the second
UNIFORM_LEVELS = (0.25, 0.5, 0.75)  # calibration configurations at one level for every group, after full width
# the fewest calibration samples that keep every removing configuration (see calibration_configs)
MIN_SAMPLES_FOR_REMOVALS = 1 + len(UNIFORM_LEVELS) + MIN_REMOVAL_POINTS


def fit(raw_ms: list[float], measured_ms: list[float], removed_units: list[int] | None = None) -> Calibration:
    """``measured ≈ scale · (raw + removed_unit_ms · removed) + offset`` with the smallest *relative* errors.

    ``raw_ms`` are the LUT sums of the kept units and ``removed_units`` how
    many units each configuration's removed blocks took away; the per-unit
    term is fitted only when at least ``MIN_REMOVAL_POINTS`` points remove
    units, after the trimming below (one or two points set it to whatever their noise says: on
    ResNet-20 one point made it +0.034 ms per unit, a block's removal as dear
    as its units, and `gator` found no configuration under 0.38x of the base).

    Least squares weighted by 1/measured: the pruner's budgets sit at
    0.3x–0.7x of the full model, and an absolute fit lets the full-width
    points pull the line while small configurations come out 20–45% off
    (measured on ResNet-20, ort-cpu). Then one trimming pass: points further
    than ``OUTLIER_PCT`` and three median absolute deviations from the first
    fit (a slow spell of the machine during one measurement) are dropped and
    the line refitted, keeping at least one point more than the parameters.
    ``residual_pct`` is the median absolute % error over all points, dropped
    ones included; an offset alone with one point.

    The per-removed-unit term is kept only when it comes out ≥ 0; a negative
    one is dropped and the line refitted without it. A removed block saving
    more than its units' own time cannot be told from noise on the few
    calibration points that remove blocks, and a pruner extrapolates it: on
    ResNet-56 (8 points, two removing 2 and 6 units) the term
    came out −0.0022 ms per unit, and the closed-loop candidates that removed
    20–36 units were predicted 17.5% too fast on average (up to 40%); without
    the term, 4.8% (``benchmarks/results/calibration_terms_resnet56_zen5.json``)."""
    x = np.asarray(raw_ms, dtype=float)
    y = np.asarray(measured_ms, dtype=float)
    n = np.zeros(len(x)) if removed_units is None else np.asarray(removed_units, dtype=float)
    if len(x) == 0:
        return Calibration()
    removal_term = int((n > 0).sum()) >= MIN_REMOVAL_POINTS and np.ptp(n) > 0 and len(x) >= 4
    columns = [x, np.ones(len(x))] + ([n] if removal_term else [])
    design = np.stack(columns, axis=1)
    if len(x) == 1 or np.ptp(x) < 1e-9:
        coef = np.array([1.0, float(np.mean(y - x)), 0.0])
    else:
        keep = np.ones(len(x), dtype=bool)
        coef = _relative_lstsq(design, y, keep)
        err = np.abs(design @ coef / y - 1) * 100
        mad = float(np.median(np.abs(err - np.median(err))))
        outliers = (err > OUTLIER_PCT) & (err > np.median(err) + 3 * mad)
        if outliers.any() and (~outliers).sum() > design.shape[1]:
            if removal_term and int(((n > 0) & ~outliers).sum()) < MIN_REMOVAL_POINTS:
                return fit(raw_ms, measured_ms, None)  # the trim left too few removal points for the term
            coef = _relative_lstsq(design, y, ~outliers)
        if len(coef) > 2 and coef[2] < 0:  # a negative per-removed-unit term: refit without it
            return fit(raw_ms, measured_ms, None)
        if coef[0] <= 0:  # degenerate data: fall back to a pure offset
            coef = np.array([1.0, float(np.mean(y - x)), 0.0])
    scale = float(coef[0])
    cal = Calibration(scale, float(coef[1]), points=len(x),
                      removed_unit_ms=float(coef[2]) / scale if len(coef) > 2 else 0.0)
    return replace(cal, residual_pct=float(np.median(np.abs(cal.from_units(x, n) / y - 1)) * 100))


def _relative_lstsq(design: np.ndarray, y: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Least squares of ``design @ coef ≈ y`` weighted by 1/y, over the kept rows."""
    w = 1.0 / y[keep]
    coef, *_ = np.linalg.lstsq(design[keep] * w[:, None], y[keep] * w, rcond=None)
    return coef


def calibration_configs(sizes: dict[int, list[int]], samples: int, seed: int = 0,
                        removals: int = MIN_REMOVAL_POINTS) -> list[dict[int, int]]:
    """Width configurations to measure: full width, uniform levels, ``removals``
    configurations that remove a share of the removable blocks (see
    :func:`removal_configs`), then random ones drawn like the pruner's
    solutions (see :func:`random_configs`).

    ``sizes[g]`` is the sorted list of width options of group ``g`` (0 first where
    the group's block may be removed). Fewer than ``MIN_SAMPLES_FOR_REMOVALS`` samples
    cut the removing configurations short, and with fewer than ``MIN_REMOVAL_POINTS``
    of them :func:`fit` leaves the per-removed-unit term out (``profile`` warns)."""
    widths = _kept_options(sizes)
    configs: list[dict[int, int]] = [{g: opts[-1] for g, opts in widths.items()}]
    for frac in UNIFORM_LEVELS:
        configs.append({g: opts[min(len(opts) - 1, int(frac * len(opts)))] for g, opts in widths.items()})
    configs += removal_configs(sizes, removals, seed)
    configs += random_configs(sizes, max(0, samples - len(configs)), seed)
    return configs[: max(samples, 1)]


def removal_configs(sizes: dict[int, list[int]], n: int, seed: int = 0) -> list[dict[int, int]]:
    """``n`` configurations that remove blocks: the k-th removes a share (k+1)/(n+1)
    of the removable groups' blocks (drawn at random) and keeps every other group
    at a uniform level, the levels permuted against the shares so that the
    number of removed units does not simply follow the width.

    The per-removed-unit term of :func:`fit` needs ``MIN_REMOVAL_POINTS`` such
    points, and random configurations rarely give them: they remove blocks only
    at their narrowest levels (ResNet-56, 8 calibration points: two removed
    2 and 6 units, while the pruner's candidates at 0.3x removed 20–36).
    Empty where no group is removable."""
    removable = sorted(g for g, opts in sizes.items() if opts and opts[0] == 0)
    if not removable or n <= 0:
        return []
    rng = random.Random(seed)
    shares = [(k + 1) / (n + 1) for k in range(n)]
    # for n = 3: levels 0.25, 0.75, 0.5 against shares 0.25, 0.5, 0.75; the most removing one
    # keeps the others at half width, as the pruner's solutions at 0.3x do (not at a quarter:
    # on ResNet-20 such a point, 12% of the full model, pulled the relative fit's term 7x too high)
    levels = shares[:1] + shares[1:][::-1]
    kept = _kept_options(sizes)
    configs = []
    for share, level in zip(shares, levels):
        removed = set(rng.sample(removable, max(1, round(share * len(removable)))))
        configs.append({g: 0 if g in removed else opts[min(len(opts) - 1, int(level * len(opts)))]
                        for g, opts in kept.items()})
    return configs


def _kept_options(sizes: dict[int, list[int]]) -> dict[int, list[int]]:
    """Each group's width options without the removal (0)."""
    return {g: [w for w in opts if w > 0] for g, opts in sizes.items()}


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


def noise_warning(stored: dict[str, Any], command: str) -> str | None:
    """A warning for a stored calibration (``residual_pct`` and its ``points``) measured
    on a noisy machine, or None: its median residual is above ``NOISY_RESIDUAL_PCT``,
    or its points' median p10-p90 spread (unknown for points without percentiles)
    above ``NOISY_SPREAD_PCT`` (:func:`~latprune.latency_lut.timing.noisy_calibration`).
    ``command`` is the profile to run again."""
    noisy = noisy_calibration(stored)
    if noisy is None:
        return None
    residual_pct, spread_pct = noisy
    found = []
    if residual_pct > NOISY_RESIDUAL_PCT:  # NaN (a shard's placeholder) is not
        found.append(f"lie {residual_pct:.1f}% (median) off its fit, above the {NOISY_RESIDUAL_PCT:.0f}% "
                     "that a quiet machine stays under")
    if spread_pct > NOISY_SPREAD_PCT:
        found.append(f"scatter, each one's p10-p90 spanning {spread_pct:.1f}% of its median (the median over them), "
                     f"above the {NOISY_SPREAD_PCT:g}% of a quiet machine")
    return (f"the calibration's {len(stored.get('points', []))} whole-model measurements {' and '.join(found)}: "
            "the machine was busy or changing speed while they were measured, and predictions may be off by as much. "
            "Measure them again "
            f"when it is quiet: profile again with recalibrate=True (`{command} --recalibrate`, with the same "
            "--backend, --threads and --input); the unit measurements are kept")
