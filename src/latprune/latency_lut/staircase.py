"""Adaptive width sampling: refine the grid where a group's latency jumps.

Real latency is a staircase in channel count: a kernel processes channels in
blocks (vector widths, tiles), so widths inside a block cost what the block
costs, and the cost rises in steps. An evenly spaced grid can straddle a
step and make the pruner pay for channels it could have kept for free.

For every channel group, its *cost curve* is the summed LUT latency of the
units it sets (as input or output width), the other groups at full width.
Starting from the coarse grid, each segment between two neighbouring widths
is probed at its midpoint (a multiple of the grid's alignment): if the
midpoint's cost is off the straight line between the ends by more than
``JUMP`` of the segment's rise, a step lies inside; the midpoint becomes a
width option and both halves are probed again, down to the alignment.
Segments whose rise is under ``FLAT`` of the cost are flat: their cheap side
is already the wider end. Every probe is a LUT measurement, committed as it
is made, so a killed refinement resumes without measuring again.

The result, per group: the refined widths (they join the grid, so the
knapsack can pick the cheap side of each step) and the :class:`Staircase`
(widths, costs, steps) stored with the calibration and plotted by
``latprune lut show --plot``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

from latprune.latency_lut.store import Lut
from latprune.latency_lut.units import LayerKey, Unit
from latprune.pruner.graph import ChannelGraph, Grid

JUMP = 0.25   # midpoint off the straight line by more than this share of the segment's rise: a step inside
FLAT = 0.02   # a segment rising by less than this share of the cost hides nothing worth finding
STEEP = 2.0   # an aligned step costing this many times the curve's mean slope per channel is reported


@dataclass(frozen=True)
class Staircase:
    """A group's cost curve on its refined widths and the cheap side of each step found."""

    root: str
    widths: list[int]
    ms: list[float]          # raw Σ of the group's units' LUT latency at each width, others at full
    steps: list[int]         # widest width before a jump: the cheap side of a step
    added: list[int]         # widths the refinement added to the coarse grid

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _touching(graph: ChannelGraph, gid: int) -> list[Unit]:
    return [u for u in graph.units if u.out_group == gid or (u.in_group == gid and not u.depthwise)]


def group_keys(graph: ChannelGraph, gid: int, width: int) -> list[LayerKey]:
    """The LUT keys of group ``gid``'s units with the group at ``width``, every other group at full."""
    widths = {**graph.full_widths(), gid: width}
    return [u.key(widths) for u in _touching(graph, gid)]


def _midpoint(a: int, b: int, align: int) -> int | None:
    """The multiple of ``align`` strictly between a and b closest to their middle, if any."""
    mid = align * round((a + b) / 2 / align)
    for m in sorted({mid, mid - align, mid + align}, key=lambda m: abs(2 * m - a - b)):
        if a < m < b:
            return m
    return None


def _steps(widths: list[int], ms: list[float], align: int) -> list[int]:
    """Cheap sides: widths where the next aligned step costs ``STEEP`` times the mean slope or more."""
    if len(widths) < 2 or widths[-1] == widths[0]:
        return []
    slope = (ms[-1] - ms[0]) / (widths[-1] - widths[0])
    steps = []
    for (w0, m0), (w1, m1) in zip(zip(widths, ms), zip(widths[1:], ms[1:])):
        rise = m1 - m0
        if w1 - w0 <= align and slope > 0 and rise > STEEP * slope * (w1 - w0) and rise > FLAT * m1:
            steps.append(w0)
    return steps


def refine(graph: ChannelGraph, lut: Lut, grid: Grid, measure: Callable[[list[LayerKey]], None],
           progress: Callable[[str], None] | None = None) -> tuple[Grid, dict[str, Staircase]]:
    """Refine ``grid`` where each group's cost curve jumps (see the module doc).

    ``measure(keys)`` puts the keys that the LUT lacks into it (the profile's
    measuring loop); the costs are read back from the LUT. Returns the grid
    with the added widths and every group's staircase."""
    align = max(1, grid.align)
    extra: dict[str, list[int]] = {}
    stairs: dict[str, Staircase] = {}

    def cost(gid: int, width: int) -> float:
        keys = group_keys(graph, gid, width)
        measure(keys)
        total = 0.0
        for key in keys:
            latency = lut.get(key)
            assert latency is not None, f"measure() left {key.text} unmeasured"
            total += latency.median_ms
        return total

    for group in graph.groups:
        if not _touching(graph, group.id):
            continue
        coarse = grid.widths(group.size, group.root)
        g_align = align if group.size > 2 * align else 1  # as Grid.widths: tiny groups keep fine steps
        costs = {w: cost(group.id, w) for w in coarse}
        added: list[int] = []
        pending = list(zip(coarse, coarse[1:]))
        while pending:
            a, b = pending.pop()
            m = _midpoint(a, b, g_align)
            rise = costs[b] - costs[a]
            if m is None or abs(rise) < FLAT * max(costs[a], costs[b]):
                continue
            costs[m] = cost(group.id, m)
            line = costs[a] + rise * (m - a) / (b - a)
            if abs(costs[m] - line) > JUMP * abs(rise):
                added.append(m)
                pending += [(a, m), (m, b)]
        kept = sorted(set(coarse) | set(added))
        ms = [costs[w] for w in kept]
        stairs[group.root] = Staircase(group.root, kept, ms, _steps(kept, ms, g_align), sorted(added))
        if added:
            extra[group.root] = sorted(set(added))
        if progress:
            progress(group.root)
    return grid.with_extra({**dict(grid.extra), **extra}), stairs
