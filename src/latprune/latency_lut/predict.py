"""Predicted latency of a width configuration: Σ unit latencies from the LUT,
corrected end to end by the model's calibration (``scale · Σ · (1 + per_weight_mib · W) +
offset_ms``, W the configuration's weights in MiB).

A unit with no measurement is an error, never a zero.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, replace
from typing import Any

import torch

from latprune.errors import LutError
from latprune.graph.channels import ChannelGraph
from latprune.graph.lowrank import CHANNEL, pair_keys, pays, rank_axis
from latprune.graph.units import LayerKey, Unit
from latprune.latency_lut.store import Lut


@dataclass(frozen=True)
class Calibration:
    """End-to-end correction: measured ≈ scale · Σunits · (1 + per_weight_mib · W) + offset_ms.

    Σunits counts every unit a removed block takes away as ``removed_unit_ms``
    instead of 0: removing a block need not save exactly its units' LUT
    times (a unit's entry may carry a fixed cost the whole model pays once,
    as session wall times did: 0.043 ms per unit on ResNet-20, ort-cpu,
    1 thread; or leave out one it does pay, as kernel times do with the gaps
    between kernels). ``per_weight_mib`` scales the kept units' time with the
    configuration's weights W (MiB): a unit timed alone keeps its weights
    in the core's caches, while inside a model it shares them with every other
    layer's, so its time there grows with the whole configuration's weights
    (:func:`~latprune.latency_lut.calibrate.fit`).
    ``residual_pct`` is the median absolute error of the fit on its own points."""

    scale: float = 1.0
    offset_ms: float = 0.0
    residual_pct: float = 0.0
    points: int = 0
    removed_unit_ms: float = 0.0
    per_weight_mib: float = 0.0

    def from_units(self, unit_sum_ms: Any, removed_units: Any, weights_mib: Any = 0.0) -> Any:
        """The prediction from the kept units' sum (:meth:`Predictor.unit_sum`), the
        number of units removed with their blocks and the kept weights (MiB): what
        :func:`calibrate.fit` fits. Also elementwise on arrays of points."""
        kept = unit_sum_ms * (1 + self.per_weight_mib * weights_mib)
        return self.scale * (kept + self.removed_unit_ms * removed_units) + self.offset_ms

    def scaled(self, ratio: float) -> Calibration:
        """The same correction with every prediction multiplied by ``ratio``
        (re-anchoring to a fresh measurement when the device drifted)."""
        return replace(self, scale=self.scale * ratio, offset_ms=self.offset_ms * ratio)


class Predictor:
    """Latency predictions for one model graph from one LUT.

    >>> # predictor = Predictor(lut, graph, calibration); predictor.predict(graph.full_widths())
    """

    def __init__(self, lut: Lut, graph: ChannelGraph, calibration: Calibration | None = None,
                 scheme: str = CHANNEL) -> None:
        self.lut = lut
        self.graph = graph
        self.calibration = calibration or Calibration()
        self.scheme = scheme  # how a unit given a rank factorises (graph.lowrank.SCHEMES)
        self._memo: dict[str, float] = {}
        self._unit_memo: dict[tuple[str, int, int, int], float] = {}
        self._weight_memo: dict[tuple[str, int, int, int], float] = {}
        self._cin_curves: dict[str, list[tuple[int, float]]] | None = None  # kernel -> (cin, ms), built on need
        self._axis = {u.name: rank_axis(i) for i, u in enumerate(graph.units)}

    def rescaled(self, ratio: float) -> Predictor:
        """A new predictor whose every prediction is this one's times ``ratio`` (re-anchored on a
        fresh measurement); it shares the LUT lookups already made, and this one is unchanged."""
        other = Predictor(self.lut, self.graph, self.calibration.scaled(ratio), self.scheme)
        other._memo, other._unit_memo, other._cin_curves = self._memo, self._unit_memo, self._cin_curves
        other._weight_memo = self._weight_memo
        return other

    def unit_ms(self, unit: Unit, widths: dict[int, int]) -> float:
        """Raw latency of ``unit`` at ``widths`` (the calibration's ``removed_unit_ms``
        when a removed block takes it away)."""
        if unit.name in self.graph.removed_units(widths):
            return self.calibration.removed_unit_ms
        return self._kept_unit_ms(unit, widths)

    def _kept_unit_ms(self, unit: Unit, widths: dict[int, int]) -> float:
        """The unit's LUT latency at ``widths``; where they give it a rank (its rank axis,
        :mod:`~latprune.graph.lowrank`) that pays at its widths, its factorised pair's (in ``scheme``)."""
        memo = self._memo_key(unit, widths)
        if memo not in self._unit_memo:
            self._unit_memo[memo] = sum(self.key_ms(k, along_cin=unit.concatenated) for k in self._keys(unit, widths))
        return self._unit_memo[memo]

    def unit_weights_mib(self, unit: Unit, widths: dict[int, int]) -> float:
        """The weights (MiB, at the key's dtype) of ``unit`` kept at ``widths`` (of its factorised
        pair where it has one)."""
        memo = self._memo_key(unit, widths)
        if memo not in self._weight_memo:
            self._weight_memo[memo] = sum(k.weights * getattr(torch, k.dtype).itemsize
                                          for k in self._keys(unit, widths)) / 2**20
        return self._weight_memo[memo]

    def _memo_key(self, unit: Unit, widths: dict[int, int]) -> tuple[str, int, int, int]:
        """A cheap key of the unit at ``widths``: the solver asks for the same units many times."""
        cout = widths.get(unit.out_group, unit.base.cout) if unit.out_group is not None else unit.base.cout
        return unit.name, unit.cin(widths), cout, widths.get(self._axis[unit.name], 0)

    def _keys(self, unit: Unit, widths: dict[int, int]) -> list[LayerKey]:
        key = unit.key(widths)
        rank = widths.get(self._axis[unit.name], 0)
        return pair_keys(key, rank, self.scheme) if rank and pays(key, rank, self.scheme) else [key]

    def weights_mib(self, widths: dict[int, int]) -> float:
        """The weights (MiB) of the units ``widths`` keeps: the W of the calibration."""
        removed = self.graph.removed_units(widths)
        return sum(self.unit_weights_mib(u, widths) for u in self.graph.units if u.name not in removed)

    def key_ms(self, key: LayerKey, along_cin: bool = False) -> float:
        """The LUT's latency of ``key``; with ``along_cin``, where the LUT lacks it, interpolated
        linearly between the input widths it holds for the same kernel otherwise (how a unit a
        concatenation feeds is priced: its input width has too many combinations to measure)."""
        text = key.text
        if text not in self._memo:
            latency = self.lut.get(key)
            ms = latency.median_ms if latency is not None else self._along_cin(key) if along_cin else None
            if ms is None:
                raise LutError(
                    f"the LUT {self.lut.path} has no measurement for {key.op} {key.cin}->{key.cout} "
                    f"(k={key.kernel[0]}, stride={key.stride[0]}, input {key.in_hw}); profile this model into it "
                    "first (with the width levels and alignment of this prune)"
                )
            self._memo[text] = ms
        return self._memo[text]

    def _along_cin(self, key: LayerKey) -> float | None:
        """``key``'s latency interpolated (or extrapolated from the nearest two) between the
        LUT's measurements of the same kernel at other input widths; None under two of them."""
        if self._cin_curves is None:
            self._cin_curves = {}
            for k, latency in self.lut.items():
                self._cin_curves.setdefault(k.without_cin.text, []).append((k.cin, latency.median_ms))
            for curve in self._cin_curves.values():
                curve.sort()
        curve = self._cin_curves.get(key.without_cin.text, [])
        if len(curve) < 2:
            return None
        i = min(max(bisect.bisect_left(curve, (key.cin,)), 1), len(curve) - 1)
        (c0, m0), (c1, m1) = curve[i - 1], curve[i]
        return max(m0 + (m1 - m0) * (key.cin - c0) / (c1 - c0), 0.0)

    def raw(self, widths: dict[int, int]) -> float:
        """Σ unit latencies (ms), uncorrected; each removed unit counts ``removed_unit_ms``."""
        removed = self.graph.removed_units(widths)  # once per prediction, not per unit
        return self._kept_sum(widths, removed) + len(removed) * self.calibration.removed_unit_ms

    def unit_sum(self, widths: dict[int, int]) -> float:
        """Σ of the kept units' LUT latencies (ms), whatever the calibration: the
        quantity a calibration is fitted on (:func:`calibrate.fit`'s ``raw_ms``)."""
        return self._kept_sum(widths, self.graph.removed_units(widths))

    def _kept_sum(self, widths: dict[int, int], removed: frozenset[str]) -> float:
        return sum(self._kept_unit_ms(u, widths) for u in self.graph.units if u.name not in removed)

    def predict(self, widths: dict[int, int]) -> float:
        """Calibrated end-to-end prediction (ms)."""
        cal = self.calibration
        removed = self.graph.removed_units(widths)
        weights = self.weights_mib(widths) if cal.per_weight_mib else 0.0
        return cal.from_units(self._kept_sum(widths, removed), len(removed), weights)

    def missing(self, keys: list[LayerKey]) -> list[LayerKey]:
        return [k for k in keys if k not in self.lut]


def _bracket(xs: torch.Tensor, w: torch.Tensor) -> tuple[int, int, torch.Tensor]:
    """Indices of the grid widths around ``w`` and the interpolation weight (clamped to the grid)."""
    if len(xs) == 1:
        return 0, 0, w * 0
    hi = int(torch.searchsorted(xs, w.detach().reshape(1)).clamp(1, len(xs) - 1))
    lo = hi - 1
    t = ((w - xs[lo]) / (xs[hi] - xs[lo])).clamp(0.0, 1.0)
    return lo, hi, t


# A unit's table in SoftLatency: (first axis, second axis, table, removable block, whether it is a change)
Term = tuple[int | None, int | None, torch.Tensor, int | None, bool]


class SoftLatency:
    """The predictor's differentiable form: latency over soft (gate-expected) widths.

    Each unit's LUT latencies on the width grid form a table over its input
    and output group widths (one axis for depthwise units, which follow one
    group); the prediction interpolates it bilinearly at the soft widths, so
    gradients reach the gates on both sides of a unit. For a unit a concatenation feeds, the
    table follows its widest input group, and each other group it joins adds what its width
    changes of the unit, the rest at full width (exact where one group moves). A unit inside a
    removable block is weighted by the probability that the block stays. The units' weights
    (the calibration's W) are tabled and interpolated the same way.
    The calibration is applied as in :meth:`Predictor.predict`.

    >>> # soft = SoftLatency(predictor, graph.options(grid)); soft(gates.expected_widths(), gates.block_keep())
    """

    def __init__(self, predictor: Predictor, options: dict[int, list[int]]) -> None:
        self.predictor = predictor
        grids = {g: sorted(w for w in opts if w > 0) for g, opts in options.items()}
        self.grids = {g: torch.tensor(ws, dtype=torch.float32) for g, ws in grids.items()}
        self.terms = self._tables(predictor.unit_ms, grids)  # ms
        self.weight_terms = self._tables(predictor.unit_weights_mib, grids)  # MiB

    def _tables(self, value: Any, grids: dict[int, list[int]]) -> list[Term]:
        """Per unit, ``value(unit, widths)`` on the grid of the groups that set it: (first axis,
        second axis, table, removable block, whether the table is a change of its unit)."""
        graph = self.predictor.graph
        block_of_unit = {u: b.group for b in graph.blocks for u in b.units}
        terms: list[Term] = []
        full = graph.full_widths()
        for unit in graph.units:
            block = block_of_unit.get(unit.name)
            now = value(unit, full)
            for g, _ in unit.in_others:
                if g in grids:
                    change = [value(unit, {**full, g: w}) - now for w in grids[g]]
                    terms.append((g, None, torch.tensor(change, dtype=torch.float32), block, True))
            gin = None if unit.depthwise else unit.in_group
            gout = unit.out_group
            axes = [g for g in (gin, gout) if g is not None]
            if len(axes) == 2 and gin == gout:
                axes = [gin]
            if not axes:
                table = torch.tensor(float(now))
            elif len(axes) == 1:
                table = torch.tensor([float(value(unit, {**full, axes[0]: w})) for w in grids[axes[0]]])
            else:
                table = torch.tensor([[float(value(unit, {**full, gin: a, gout: b})) for b in grids[gout]]
                                      for a in grids[gin]])
            first, second = (axes + [None, None])[:2]
            terms.append((first, second, table.float(), block, False))
        return terms

    def _sum(self, terms: list[Term], widths: dict[int, torch.Tensor],
             keep: dict[int, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept units' sum of the tabled values at soft ``widths``, and the expected number of
        units removed with their blocks (each weighted by the chance that its block goes)."""
        total, removed = torch.zeros(()), torch.zeros(())
        for a, b, table, block, change in terms:
            if a is None:
                value = table
            elif b is None:
                i0, i1, t = _bracket(self.grids[a], widths[a])
                value = table[i0] * (1 - t) + table[i1] * t
            else:
                i0, i1, s = _bracket(self.grids[a], widths[a])
                j0, j1, t = _bracket(self.grids[b], widths[b])
                value = ((1 - s) * ((1 - t) * table[i0, j0] + t * table[i0, j1])
                         + s * ((1 - t) * table[i1, j0] + t * table[i1, j1]))
            if block is not None and keep is not None and block in keep:
                value = value * keep[block]
                if not change:
                    removed = removed + (1 - keep[block])
            total = total + value
        return total, removed

    def __call__(self, widths: dict[int, torch.Tensor], keep: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Calibrated prediction (ms) as a differentiable scalar tensor."""
        cal = self.predictor.calibration
        kept, removed = self._sum(self.terms, widths, keep)
        weights = self._sum(self.weight_terms, widths, keep)[0] if cal.per_weight_mib else 0.0
        return cal.from_units(kept, removed, weights)
