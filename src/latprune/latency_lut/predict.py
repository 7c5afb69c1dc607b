"""Predicted latency of a width configuration: Σ unit latencies from the LUT,
corrected end to end by the model's calibration (``scale · Σ + offset_ms``).

A unit with no measurement is an error, never a zero.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from latprune.errors import LutError
from latprune.latency_lut.store import Lut
from latprune.latency_lut.units import LayerKey, Unit
from latprune.pruner.graph import ChannelGraph


@dataclass(frozen=True)
class Calibration:
    """End-to-end correction: measured ≈ scale · Σunits + offset_ms.

    ``residual_pct`` is the median absolute error of the fit on its own points."""

    scale: float = 1.0
    offset_ms: float = 0.0
    residual_pct: float = 0.0
    points: int = 0

    def apply(self, raw_ms: float) -> float:
        return self.scale * raw_ms + self.offset_ms

    def scaled(self, ratio: float) -> Calibration:
        """The same correction with every prediction multiplied by ``ratio``
        (re-anchoring to a fresh measurement when the device drifted)."""
        return replace(self, scale=self.scale * ratio, offset_ms=self.offset_ms * ratio)


class Predictor:
    """Latency predictions for one model graph from one LUT.

    >>> # predictor = Predictor(lut, graph, calibration); predictor.predict(graph.full_widths())
    """

    def __init__(self, lut: Lut, graph: ChannelGraph, calibration: Calibration | None = None) -> None:
        self.lut = lut
        self.graph = graph
        self.calibration = calibration or Calibration()
        self._memo: dict[str, float] = {}
        self._unit_memo: dict[tuple[str, int, int], float] = {}

    def unit_ms(self, unit: Unit, widths: dict[int, int]) -> float:
        cin = widths.get(unit.in_group, unit.base.cin) if unit.in_group is not None else unit.base.cin
        cout = widths.get(unit.out_group, unit.base.cout) if unit.out_group is not None else unit.base.cout
        memo = (unit.name, cin, cout)  # cheap key: the solver asks for the same units many times
        if memo not in self._unit_memo:
            self._unit_memo[memo] = self.key_ms(unit.key(widths))
        return self._unit_memo[memo]

    def key_ms(self, key: LayerKey) -> float:
        text = key.text
        if text not in self._memo:
            latency = self.lut.get(key)
            if latency is None:
                raise LutError(
                    f"the LUT {self.lut.path} has no measurement for {key.op} {key.cin}->{key.cout} "
                    f"(k={key.kernel[0]}, stride={key.stride[0]}, input {key.in_hw}); profile this model into it "
                    f"with `latprune profile MODEL -o {self.lut.path}` (same --levels/--align as this prune)"
                )
            self._memo[text] = latency.median_ms
        return self._memo[text]

    def raw(self, widths: dict[int, int]) -> float:
        """Σ unit latencies (ms), uncorrected."""
        return sum(self.unit_ms(u, widths) for u in self.graph.units)

    def predict(self, widths: dict[int, int]) -> float:
        """Calibrated end-to-end prediction (ms)."""
        return self.calibration.apply(self.raw(widths))

    def missing(self, keys: list[LayerKey]) -> list[LayerKey]:
        return [k for k in keys if k not in self.lut]
