"""The names the pruner's options accept, without importing torch.

``latprune prune --help`` offers them as choices and :func:`latprune.pruner.loop.prune`
checks them for API callers; both read them here, so the two cannot drift.
"""

from __future__ import annotations

IMPORTANCES = ("taylor", "taylor2", "l1", "measured")  # --importance (see pruner.importance)
GATE_INITS = ("open", "plan")  # gator: how the gates start (see methods.gator)
GATE_PENALTIES = ("hinge", "hold")  # gator: the latency term (see gates.GateConfig)
GATE_SIGNALS = ("taylor", "straight-through")  # gator: the gates' task signal (see gates.SIGNALS)
