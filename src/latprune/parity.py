"""When an exported model is faithful to PyTorch: the tolerance every exporter checks.

``numpy.allclose``'s bound taken against the output's scale: an absolute part for
outputs of order one, and a relative part because fp32 rounding grows with the
outputs (a random-init Inception-v3's logits reach 1e9, and ONNX Runtime and
PyTorch differ there by 1e3, a relative 1.5e-6, with either exporter).

>>> Parity(max_abs_diff=3e-5, max_abs_ref=12.0).within()
True
>>> Parity(max_abs_diff=2.5e3, max_abs_ref=1.6e9).within(), Parity(2e-3, 12.0).within()
(True, False)
"""

from __future__ import annotations

from dataclasses import dataclass

PARITY_TOL = 1e-4    # absolute
PARITY_RTOL = 1e-5   # of the largest |output| (numpy.allclose's default rtol)


@dataclass(frozen=True)
class Parity:
    """The worst |exported - PyTorch| and the largest |PyTorch output| over the parity
    inputs. Faithful means ``max_abs_diff <= tol + rtol * max_abs_ref``."""

    max_abs_diff: float
    max_abs_ref: float

    def bound(self, tol: float = PARITY_TOL, rtol: float = PARITY_RTOL) -> float:
        return tol + rtol * self.max_abs_ref

    def within(self, tol: float = PARITY_TOL, rtol: float = PARITY_RTOL) -> bool:
        return self.max_abs_diff <= self.bound(tol, rtol)

    def describe(self, tol: float = PARITY_TOL, rtol: float = PARITY_RTOL) -> str:
        """``"2.1e-03 (> 1e-04 + 1e-05 x the largest |output| 1.2e+01 = 2.2e-04)"``, for an error."""
        return (f"{self.max_abs_diff:.2e} (> {tolerance_text(tol, rtol)}, with the largest |output| "
                f"{self.max_abs_ref:.2e}: {self.bound(tol, rtol):.2e})")


def tolerance_text(tol: float, rtol: float | None) -> str:
    """``"1e-04 + 1e-05 x max |output|"``: the bound, for people."""
    return f"{tol:.0e}" + (f" + {rtol:.0e} x max |output|" if rtol else "")
