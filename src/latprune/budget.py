"""Latency budgets: absolute (``8ms``) or relative to the measured base model (``0.5x``).

>>> parse_budget("0.5x").resolve(base_ms=4.0)
2.0
>>> parse_budget("8ms").resolve(base_ms=4.0)
8.0
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from latprune.errors import SpecError

_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(x|ms)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    value: float
    relative: bool  # True: a fraction of the measured base latency

    def resolve(self, base_ms: float) -> float:
        """The budget in milliseconds."""
        return self.value * base_ms if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.value:g}x" if self.relative else f"{self.value:g}ms"


def parse_budget(text: str) -> Budget:
    match = _PATTERN.match(text)
    if not match:
        raise SpecError(f"budget {text!r} is not understood; write it as a fraction of the base latency "
                        "('0.5x') or in milliseconds ('8ms')")
    value, unit = float(match.group(1)), match.group(2).lower()
    if value <= 0:
        raise SpecError(f"budget {text!r} must be positive")
    if unit == "x" and value > 1:
        raise SpecError(f"budget {text!r} is above the base latency; a relative budget is a fraction in (0, 1]")
    return Budget(value, unit == "x")
