"""How far to trust a LUT: predicted vs measured latency of random width configurations.

Draws N width configurations that span the model's latency range, builds
each, measures it end to end on the backend, and compares with the LUT's
calibrated prediction. Reports the median absolute % error, the share of
configurations within ±5% and ±10%, and Spearman's rank correlation (what
the knapsack needs most: that a faster prediction is a faster model).

Every configuration is measured in two passes (a whole pass apart) and
its faster median kept, the same rule as the LUT's units. Two
predictions are scored: the LUT as stored, and the LUT re-anchored on a
measurement of the full model taken at the start (what ``prune`` does), which
removes the device's drift since profiling. On a backend with a
:class:`~latprune.latency_lut.timing.SpeedGuard` the report counts the
probes that found the machine slower than usual (those measurements were
waited for or repeated).

With ``beside``, a fourth: each configuration is measured right after the
full model, and its prediction re-anchored on that measurement of the full
model (``beside``). The pair is taken seconds apart, so the machine's speed
drift between states cancels in their ratio; it scores the LUT as ``prune``
uses it, whose relative budgets measure each candidate beside the base. It
doubles the run's measurements.

A third score separates the LUT from its calibration: ``refit``, the same
unit sums with a calibration fitted (by :func:`~latprune.latency_lut.calibrate.fit`)
on this run's other measurements, K-fold, each configuration predicted by a
fit that did not see it. It is what ``profile --recalibrate`` would reach on
the device as it is now. ``stored`` far worse than ``refit`` means the
calibration is stale (the device's small and large models no longer scale as
they did when it was fitted: MobileNetV2, ort-cpu, 2 threads, 86% within
±10% as stored, 96% refitted); both
bad means the unit sums miss something, or the measurements themselves
scatter by more than the band (a noisy device: see BENCHMARKS.md). The
report carries that scatter (``spread_pct``: each configuration's p10-p90
in % of its median, the median over configurations) and the text says when
it is above :data:`~latprune.latency_lut.timing.NOISY_SPREAD_PCT`, where no
LUT has scored ±10% here.

The machine's drift between moments, in the scores' own terms: ``repeat``
scores each configuration's first pass against its second, as if one were a
prediction of the other (the difference relative to the faster; Spearman
between the passes), and every pass's median is kept with each point
(``pass_ms``). It is not a bound on the scores above, which compare with the
faster pass: on a 2-vCPU VM on 2 threads the passes of
MobileNetV2 and EfficientNet-Lite0 agreed within ±10% for 42% and 36% of the
configurations while the LUT put 80% and 64% (refit 88% and 90%) there. It
says how much the rule of the faster pass has to do on this machine.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from latprune.errors import LutError
from latprune.graph.channels import ChannelGraph
from latprune.latency_lut.backends import Backend
from latprune.latency_lut.calibrate import fit, random_configs
from latprune.latency_lut.predict import Predictor
from latprune.latency_lut.profile import grid_keys, load_calibration, measure_widths, measure_widths_beside
from latprune.latency_lut.store import Lut
from latprune.latency_lut.timing import median_spread_pct


@dataclass(frozen=True)
class ErrorStats:
    median_abs_pct: float
    within_5_pct: float       # share of configurations (0..1)
    within_10_pct: float
    spearman: float

    @classmethod
    def of(cls, predicted: list[float], measured: list[float]) -> ErrorStats:
        p, m = np.asarray(predicted), np.asarray(measured)
        return cls._of_errors(np.abs(p - m) / m * 100, spearman(p, m))

    @classmethod
    def repeat(cls, first: list[float], second: list[float]) -> ErrorStats:
        """Two measurements of the same configurations scored against each other: the
        difference relative to the faster of the two, and Spearman between them."""
        a, b = np.asarray(first, float), np.asarray(second, float)
        return cls._of_errors(np.abs(a - b) / np.minimum(a, b) * 100, spearman(a, b))

    @classmethod
    def _of_errors(cls, err_pct: np.ndarray, rank_corr: float) -> ErrorStats:
        return cls(float(np.median(err_pct)), float(np.mean(err_pct <= 5)), float(np.mean(err_pct <= 10)), rank_corr)


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
    refit: ErrorStats | None = None         # calibration refitted on this run's other points (K-fold); None if < 4
    refit_folds: int = 0
    beside: ErrorStats | None = None        # re-anchored on the full model measured just before each; None if not asked
    spread_pct: float = float("nan")        # the measurements' median p10-p90 spread, % of their medians
    repeat: ErrorStats | None = None        # each configuration's first pass scored against its second

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


REFIT_FOLDS = 5


def refit_predictions(raw_ms: list[float], measured_ms: list[float], removed_units: list[int],
                      folds: int = REFIT_FOLDS, seed: int = 0, weights_mib: list[float] | None = None) -> list[float]:
    """Each point predicted by a calibration fitted on the other folds' points
    (:func:`~latprune.latency_lut.calibrate.fit`: the rule ``profile`` uses; with each point's
    kept weights where ``weights_mib`` gives them). Points are dealt to ``folds`` folds in a
    seeded random order."""
    n = len(raw_ms)
    if n < 4:
        raise LutError(f"a cross-validated refit needs at least 4 points, got {n}")
    folds = max(2, min(folds, n))
    order = np.random.default_rng(seed).permutation(n)
    fold_of = np.empty(n, dtype=int)
    fold_of[order] = np.arange(n) % folds
    raw, meas, removed = np.asarray(raw_ms, float), np.asarray(measured_ms, float), np.asarray(removed_units, float)
    weights = np.zeros(n) if weights_mib is None else np.asarray(weights_mib, float)
    out = np.empty(n)
    for k in range(folds):
        train, test = fold_of != k, fold_of == k
        cal = fit(list(raw[train]), list(meas[train]), list(removed[train]),
                  None if weights_mib is None else list(weights[train]))
        out[test] = cal.from_units(raw[test], removed[test], weights[test])
    return [float(v) for v in out]


def fidelity(graph: ChannelGraph, lut: Lut, backend: Backend, samples: int, model_name: str = "model",
             seed: int = 1234, progress: bool = True, blocks: bool = False, beside: bool = False) -> FidelityReport:
    """Predicted vs measured latency of ``samples`` random width configurations
    (with ``blocks``, a removable block's narrowest option is its removal; with
    ``beside``, each one measured right after the full model, scored re-anchored on it)."""
    if samples < 2:
        raise LutError(f"samples must be at least 2, got {samples}")
    stored = load_calibration(lut, graph.signature())
    if stored is None:
        raise LutError(f"the LUT {lut.path} has no calibration for this model; profile it first: "
                       "profile this model into it (latprune.profile, `latprune profile`)")
    calibration, grid = stored
    predictor = Predictor(lut, graph, calibration)
    missing = predictor.missing(grid_keys(graph, grid))
    if missing:
        raise LutError(f"the LUT {lut.path} lacks {len(missing)} of this model's units; "
                       "profiling this model into it adds them")
    start = time.time()
    guard = backend.speed_guard()
    slow_before = guard.slow if guard is not None else 0
    probes_before = len(guard.trace) if guard is not None else 0
    full = graph.full_widths()
    configs = [full] + random_configs(graph.options(grid, blocks=blocks), samples, seed)
    every: list[list[float]] = []
    if beside:
        pairs = measure_widths_beside(graph, backend, configs, full, desc="fidelity", progress=progress, every=every)
        measured, references = [lat for lat, _ in pairs], [ref.median_ms for _, ref in pairs]
    else:
        measured = measure_widths(graph, backend, configs, desc="fidelity", progress=progress, every=every)
        references = []
    predicted_full = predictor.predict(full)
    drift = measured[0].median_ms / predicted_full
    points = []
    for i, (widths, lat) in enumerate(zip(configs[1:], measured[1:]), start=1):
        predicted = predictor.predict(widths)
        pair = ({"full_beside_ms": references[i], "beside_ms": predicted * references[i] / predicted_full}
                if beside else {})
        points.append({"predicted_ms": predicted, "anchored_ms": predicted * drift, **pair,
                       "raw_ms": predictor.unit_sum(widths),
                       "removed_units": len(graph.removed_units(widths)),
                       "weights_mib": predictor.weights_mib(widths),
                       "measured_ms": lat.median_ms, "p10_ms": lat.p10_ms, "p90_ms": lat.p90_ms,
                       "pass_ms": every[i],
                       "widths": [widths[g] for g in sorted(widths)],
                       "removed_blocks": [b.name for b in graph.removed_blocks(widths)]})
    measured_ms = [p["measured_ms"] for p in points]
    refit, folds = None, min(REFIT_FOLDS, len(points))
    if len(points) >= 4:
        refitted = refit_predictions([p["raw_ms"] for p in points], measured_ms,
                                     [p["removed_units"] for p in points], folds=folds,
                                     weights_mib=[p["weights_mib"] for p in points])
        for p, r in zip(points, refitted):
            p["refit_ms"] = r
        refit = ErrorStats.of(refitted, measured_ms)
    return FidelityReport(
        model_name, str(lut.path), samples,
        ErrorStats.of([p["predicted_ms"] for p in points], measured_ms),
        ErrorStats.of([p["anchored_ms"] for p in points], measured_ms),
        drift, round(time.time() - start, 2), points, backend.fingerprint(),
        guard.slow - slow_before if guard is not None else 0,
        guard.trace[probes_before:] if guard is not None else [],
        refit, folds if refit is not None else 0,
        ErrorStats.of([p["beside_ms"] for p in points], measured_ms) if beside else None,
        median_spread_pct(measured[1:]),
        ErrorStats.repeat([p["pass_ms"][0] for p in points], [p["pass_ms"][1] for p in points]),
    )
