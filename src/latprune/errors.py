"""latprune's exceptions.

Every user-facing failure raises a :class:`LatpruneError` subclass whose
message says what went wrong *and what to do next*. The CLI prints the message
on one line and exits non-zero without a traceback.
"""

from __future__ import annotations


class LatpruneError(Exception):
    """Base class of every error latprune raises on bad input or state. ``option`` names the
    argument of the call that resolves it, where one does (``"overwrite"``); the CLI adds
    the flag that sets it to the message."""

    exit_code: int = 2

    def __init__(self, message: str = "", option: str | None = None) -> None:
        super().__init__(message)
        self.option = option

    def __reduce__(self) -> tuple:  # pickled whole (rank 0's error, raised on every rank under torchrun)
        return _rebuilt, (type(self), str(self), self.option)


def _rebuilt(cls: type[LatpruneError], message: str, option: str | None) -> LatpruneError:
    error = cls.__new__(cls)
    LatpruneError.__init__(error, message, option)
    return error


class SpecError(LatpruneError):
    """A model, data, input-shape or budget spec could not be understood."""


class LutError(LatpruneError):
    """A LUT file is missing, corrupt, of another schema, or lacks a measurement."""


class FingerprintMismatch(LutError):
    """A LUT was measured on another device, runtime or setting."""


class BudgetError(LatpruneError):
    """A latency budget cannot be reached by any width configuration."""


class BudgetMissed(BudgetError):
    """A prune finished and wrote its run directory, but the export measures above the budget."""

    exit_code = 3


class RunDirError(LatpruneError):
    """A run directory is missing files or holds files that do not fit together."""


class BackendError(LatpruneError):
    """A latency backend is unknown, not installed, or failed to measure."""


class ExportError(LatpruneError):
    """An export failed its checks (onnx.checker, runtime parity)."""


class MissingDependency(LatpruneError):
    """An optional package is needed for what was asked."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{package}' package; install it with "
            f"`pip install 'latprune[{extra}]'` (or `pip install {package}`)"
        )


class LatpruneWarning(UserWarning):
    """Something the user should know that does not stop the work (a noisy or stale
    calibration, say); issued with :func:`warnings.warn`, printed by the CLI as
    ``latprune: warning: …``."""
