"""Calibration: fit ``measured ≈ scale · Σunits · (1 + per_weight_mib · W) + offset`` from
whole-model measurements.

The sum of per-unit latencies misses what the units do not contain (pooling,
adds that are not fused, the session's fixed cost) and what running units
back to back changes (caches, thread wake-ups): inside a model, each unit
shares the caches with every other layer's weights, so its time grows with the
configuration's weights W. A few end-to-end measurements at different widths
fix both, to first order.
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
# "-weights": the units' sum is scaled with the configuration's weights (see fit).
# "-removals": the configurations include MIN_REMOVAL_POINTS that remove blocks (see removal_configs).
FIT_METHOD = "relative-trimmed-blocks-aligned-nonneg-min3-weights-removals"
MIN_REMOVAL_POINTS = 3  # points that remove blocks before the per-removed-unit term is fitted
MIN_WEIGHT_POINTS = 8   # points before the weights term is fitted: four parameters, and noise to spare
WEIGHT_FACTOR_RANGE = (1.0, 2.0)  # the weights term's factor on the units' sum, kept only within it
WEIGHT_FACTOR_MIN_EFFECT = 1e-3    # ... and only where it moves a point's prediction by 0.1% or more
OUTLIER_PCT = 8.0   # a point this far (and 3 MADs) off the first fit is dropped from the second
UNIFORM_LEVELS = (0.25, 0.5, 0.75)  # calibration configurations at one level for every group, after full width
# the fewest calibration samples that keep every removing configuration (see calibration_configs)
MIN_SAMPLES_FOR_REMOVALS = 1 + len(UNIFORM_LEVELS) + MIN_REMOVAL_POINTS


def fit(raw_ms: list[float], measured_ms: list[float], removed_units: list[int] | None = None,
        weights_mib: list[float] | None = None) -> Calibration:
    """``measured ≈ scale · (raw · (1 + per_weight_mib · W) + removed_unit_ms · removed) + offset``
    with the smallest *relative* errors.

    ``raw_ms`` are the LUT sums of the kept units, ``removed_units`` how
    many units each configuration's removed blocks took away and ``weights_mib``
    the weights it keeps (W); the per-unit
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
    the term, 4.8% (``benchmarks/results/calibration_terms_resnet56_zen5.json``).

    The weights term is fitted from ``MIN_WEIGHT_POINTS`` points and kept only where it is
    positive (more weights, slower units: a prediction then grows with every width), moves some
    point by ``WEIGHT_FACTOR_MIN_EFFECT`` without leaving ``WEIGHT_FACTOR_RANGE``, and lowers
    the median error of the points each predicted by a fit on the others (four parameters on
    a dozen points fit noise too). The cache effect it stands for is not linear in W: on
    MobileNetV3-L at 96×96 the units' time in the model over their time alone is 0.92 at 2.3
    MiB of weights and 1.31 at 6.6 and at 21 MiB (``benchmarks/units_in_model.py
    --fraction``); the term is its first order over the configurations the calibration
    measures (``benchmarks/calibration_refit.py``)."""
    linear = _fit(raw_ms, measured_ms, removed_units, None)
    if weights_mib is None or len(raw_ms) < MIN_WEIGHT_POINTS or np.ptp(weights_mib) <= 0:
        return linear
    scaled = _fit(raw_ms, measured_ms, removed_units, weights_mib)
    if scaled is None or not scaled.per_weight_mib:
        return linear
    held_out = [_held_out_error(raw_ms, measured_ms, removed_units, w) for w in (None, weights_mib)]
    return scaled if held_out[1] < held_out[0] else linear


def _held_out_error(raw_ms: list[float], measured_ms: list[float], removed_units: list[int] | None,
                    weights_mib: list[float] | None) -> float:
    """The median relative error (%) of each point predicted by :func:`_fit` on the others
    (without the weights term where a fold cannot keep it)."""
    x, y = np.asarray(raw_ms, dtype=float), np.asarray(measured_ms, dtype=float)
    n = np.zeros(len(x)) if removed_units is None else np.asarray(removed_units, dtype=float)
    w = np.zeros(len(x)) if weights_mib is None else np.asarray(weights_mib, dtype=float)
    errors = []
    for i in range(len(x)):
        rest = np.arange(len(x)) != i
        others = (list(x[rest]), list(y[rest]), None if removed_units is None else list(n[rest]))
        cal = _fit(*others, None if weights_mib is None else list(w[rest])) or _fit(*others, None)
        assert cal is not None  # without the weights term a fit always stands
        errors.append(abs(float(cal.from_units(x[i], n[i], w[i])) / y[i] - 1) * 100)
    return float(np.median(errors))


def _fit(raw_ms: list[float], measured_ms: list[float], removed_units: list[int] | None,
         weights_mib: list[float] | None) -> Calibration | None:
    """:func:`fit` with the weights term where ``weights_mib`` is given: None where that term
    is not to be kept (the trimming left too few points for it, it came out negative, or its
    factor leaves ``WEIGHT_FACTOR_RANGE`` or moves no point by ``WEIGHT_FACTOR_MIN_EFFECT``)."""
    x = np.asarray(raw_ms, dtype=float)
    y = np.asarray(measured_ms, dtype=float)
    n = np.zeros(len(x)) if removed_units is None else np.asarray(removed_units, dtype=float)
    w = np.zeros(len(x)) if weights_mib is None else np.asarray(weights_mib, dtype=float)
    if len(x) == 0:
        return Calibration()
    removal_term = int((n > 0).sum()) >= MIN_REMOVAL_POINTS and np.ptp(n) > 0 and len(x) >= 4
    weight_term = weights_mib is not None
    used = np.array([True, True, removal_term, weight_term])
    design = np.stack([c for c, u in zip([x, np.ones(len(x)), n, x * w], used) if u], axis=1)
    coef = np.zeros(4)
    if len(x) == 1 or np.ptp(x) < 1e-9:
        coef[:2] = 1.0, float(np.mean(y - x))
    else:
        keep = np.ones(len(x), dtype=bool)
        coef[used] = _relative_lstsq(design, y, keep)
        err = np.abs(design @ coef[used] / y - 1) * 100
        mad = float(np.median(np.abs(err - np.median(err))))
        outliers = (err > OUTLIER_PCT) & (err > np.median(err) + 3 * mad)
        if outliers.any() and (~outliers).sum() > design.shape[1]:
            if removal_term and int(((n > 0) & ~outliers).sum()) < MIN_REMOVAL_POINTS:
                return _fit(raw_ms, measured_ms, None, weights_mib)  # too few removal points left for the term
            if weight_term and int((~outliers).sum()) < MIN_WEIGHT_POINTS:
                return None
            coef[used] = _relative_lstsq(design, y, ~outliers)
        if coef[2] < 0:  # a negative per-removed-unit term: refit without it
            return _fit(raw_ms, measured_ms, None, weights_mib)
        if coef[0] <= 0:  # degenerate data: fall back to a pure offset
            coef[:] = 1.0, float(np.mean(y - x)), 0.0, 0.0
    scale, offset, per_removed, per_weight = coef
    factor = 1 + per_weight / scale * w
    if weight_term and (per_weight <= 0 or factor.max() > WEIGHT_FACTOR_RANGE[1]
                        or factor.min() < WEIGHT_FACTOR_RANGE[0] or (factor - 1).max() < WEIGHT_FACTOR_MIN_EFFECT):
        return None
    cal = Calibration(float(scale), float(offset), points=len(x), removed_unit_ms=float(per_removed / scale),
                      per_weight_mib=float(per_weight / scale))
    return replace(cal, residual_pct=float(np.median(np.abs(cal.from_units(x, n, w) / y - 1)) * 100))


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
