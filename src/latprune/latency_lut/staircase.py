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
``JUMP`` of the segment's rise (and by more than ``NOISE`` of its cost, what
timing noise alone can do), a step lies inside; the midpoint becomes a
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

from latprune.errors import LutError
from latprune.graph.channels import ChannelGraph, Grid
from latprune.graph.units import LayerKey, Unit
from latprune.latency_lut.store import Lut

JUMP = 0.25   # midpoint off the straight line by more than this share of the segment's rise: a step inside
NOISE = 0.03  # ... and by more than this share of its own cost (what two timings of one unit can differ by)
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
    return [u for u in graph.units if u.out_group == gid or (u.in_group == gid and not u.depthwise)
            or gid in dict(u.in_others)]


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


def _bisect(coarse: list[int], align: int, cost_of: Callable[[int], float | None]) -> tuple[list[int], dict[int, float]]:
    """Bisect every segment of ``coarse`` where the midpoint's cost is off the line; returns the widths
    added and every cost seen. ``cost_of`` returns None for a width it will not measure (a replay)."""
    costs: dict[int, float] = {}
    for w in coarse:
        c = cost_of(w)
        if c is None:
            return [], costs
        costs[w] = c
    added: list[int] = []
    pending = list(zip(coarse, coarse[1:]))
    while pending:
        a, b = pending.pop()
        m = _midpoint(a, b, align)
        rise = costs[b] - costs[a]
        if m is None or abs(rise) < FLAT * max(costs[a], costs[b]):
            continue
        c = cost_of(m)
        if c is None:
            continue
        costs[m] = c
        line = costs[a] + rise * (m - a) / (b - a)
        if abs(c - line) > max(JUMP * abs(rise), NOISE * c):
            added.append(m)
            pending += [(a, m), (m, b)]
    return sorted(added), costs


def refine(graph: ChannelGraph, lut: Lut, grid: Grid, measure: Callable[[list[LayerKey]], None],
           remeasure: Callable[[list[LayerKey]], None] | None = None,
           progress: Callable[[str], None] | None = None) -> tuple[Grid, dict[str, Staircase]]:
    """Refine ``grid`` where each group's cost curve jumps (see the module doc).

    ``measure(keys)`` puts the keys that the LUT lacks into it (the profile's
    measuring loop); the costs are read back from the LUT. A probe's passes
    follow each other within a second, so a slow spell of the device can
    fake a step: with ``remeasure(keys)`` (time each key again, keep the
    faster), every group where a step was found is timed again after all
    groups were probed, and only the steps that the new costs still show are
    kept. Returns the grid with the added widths and every group's staircase."""
    align = max(1, grid.align)

    def cost(gid: int, width: int) -> float:
        keys = group_keys(graph, gid, width)
        measure(keys)
        total = 0.0
        for key in keys:
            latency = lut.get(key)
            if latency is None:
                raise LutError(f"the refinement's measuring step left {key.text} unmeasured")
            total += latency.median_ms
        return total

    found: dict[int, tuple[list[int], list[int], dict[int, float], int]] = {}
    for group in graph.groups:
        if not _touching(graph, group.id):
            if progress:
                progress(group.root)
            continue
        g_align = group.step(align)
        coarse = grid.widths(group.size, group.root, g_align)
        added, costs = _bisect(coarse, g_align, lambda w, gid=group.id: cost(gid, w))
        found[group.id] = (coarse, added, costs, g_align)
        if progress:
            progress(group.root)
    if remeasure is not None:  # a step must be seen twice, at different moments
        for gid, (coarse, added, costs, g_align) in found.items():
            if not added and not _steps(sorted(costs), [costs[w] for w in sorted(costs)], g_align):
                continue  # nothing found: nothing to confirm
            remeasure([k for w in sorted(costs) for k in group_keys(graph, gid, w)])
            fresh = {w: cost(gid, w) for w in costs}
            confirmed, _ = _bisect(coarse, g_align, fresh.get)
            found[gid] = (coarse, confirmed, fresh, g_align)
    extra: dict[str, list[int]] = {}
    stairs: dict[str, Staircase] = {}
    for gid, (coarse, added, costs, g_align) in found.items():
        root = graph.groups[gid].root
        kept = sorted(set(coarse) | set(added))
        ms = [cost(gid, w) for w in kept]  # read again: confirming one group re-times keys others share
        stairs[root] = Staircase(root, kept, ms, _steps(kept, ms, g_align), added)
        if added:
            extra[root] = added
    return grid.with_extra({**dict(grid.extra), **extra}), stairs
