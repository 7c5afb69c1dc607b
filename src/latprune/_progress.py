"""Progress bars that also show in logs.

On a terminal, :func:`bar` is tqdm's bar. Anywhere else (a log file, CI, a
``nohup`` run) tqdm would either stay silent (``disable=None``) or smear its
carriage-return updates into one endless line; there :func:`bar` prints a
plain line instead, at most every ``LATPRUNE_PROGRESS_INTERVAL`` seconds
(default 30), and one when the bar closes::

    gate training: 141/282 [01:02<01:01, 2.27step/s, loss=0.412, E[lat]=0.901ms]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm.auto import tqdm

from latprune.errors import SpecError

LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def log_interval_s() -> float:
    """Seconds between two progress lines in a log (``LATPRUNE_PROGRESS_INTERVAL``)."""
    raw = os.environ.get("LATPRUNE_PROGRESS_INTERVAL", "30")
    try:
        value = float(raw)
    except ValueError:
        raise SpecError(f"LATPRUNE_PROGRESS_INTERVAL={raw!r} is not a number of seconds; "
                         "set it to e.g. 30 or unset it") from None
    return max(0.0, value)


class _Lines:
    """A file for tqdm that turns each carriage-return status update into one line."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, stream: IO[str] | None = None,
        **kwargs: Any) -> tqdm:
    """A tqdm bar on a terminal, timed plain lines elsewhere, nothing when not ``enabled``.

    ``kwargs`` go to tqdm (``total``, ``desc``, ``unit``, ``leave``, ``initial`` …).
    Call ``set_postfix(..., refresh=False)`` before ``update``: a refreshing
    postfix would print a log line on every step."""
    stream = stream if stream is not None else sys.stderr
    if not enabled:
        return tqdm(iterable, disable=True, **kwargs)
    if _is_terminal(stream):
        return tqdm(iterable, file=stream, **kwargs)
    kwargs["leave"] = True  # a log keeps the last line: a cleared line would say nothing
    interval = log_interval_s()
    # maxinterval: tqdm's monitor thread forces a refresh that long after the last one (10 s by default)
    return tqdm(iterable, file=_Lines(stream), mininterval=interval, maxinterval=max(interval, 10.0),
                bar_format=LOG_FORMAT, dynamic_ncols=False, **kwargs)
