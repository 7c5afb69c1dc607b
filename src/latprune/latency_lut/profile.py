"""build_lut(): measure every unit of a model over its width grid, then calibrate.

Every measurement is committed to the LUT as it is made, so a profile that is
killed resumes where it stopped: keys already in the LUT are not measured
again. Extending a LUT with another model measures only its new keys.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from latprune._progress import bar
from latprune.errors import LutError
from latprune.graph.channels import ChannelGraph, Grid
from latprune.graph.check import CONTRADICTED
from latprune.graph.lowrank import SCHEMES, pair_keys, pays, rank_axis, rank_options
from latprune.graph.units import LayerKey, Unit
from latprune.latency_lut.backends import Backend
from latprune.latency_lut.calibrate import FIT_METHOD, calibration_configs, fit, noise_warning
from latprune.latency_lut.predict import Calibration, Predictor
from latprune.latency_lut.staircase import Staircase
from latprune.latency_lut.staircase import refine as refine_grid
from latprune.latency_lut.store import Lut
from latprune.latency_lut.timing import Latency, fastest_over_passes, points_spread_pct
from latprune.runtime.fingerprint import check_compatible
from latprune.runtime.large_onnx import onnx_size

DEFAULT_LEVELS = 8
SPILL_BYTES = 256 << 20  # a whole model's export larger than this waits on disk between passes
DEFAULT_PASSES = 2
MODEL_AGREE = 0.05     # whole models: two passes further apart than this get another pass ...
MODEL_MAX_PASSES = 6   # ... up to this many in all (none improved beyond 6: benchmarks/results/noise_vs_fidelity.json)
ANCHOR_ATTEMPTS = 3    # a candidate beside a base far from its anchor is measured again, up to this many times


@dataclass(frozen=True)
class ProfileReport:
    lut: str
    model: str
    signature: str
    units: int
    keys: int
    measured: int                  # unit measurements made by this call (all passes)
    reused: int                    # keys already complete (all passes) in the LUT
    seconds: float
    levels: int
    align: int
    passes: int
    calibration: dict[str, Any]
    fingerprint: dict[str, Any]
    staircases: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # root -> added widths, steps
    warnings: list[str] = field(default_factory=list)  # e.g. a calibration measured on a noisy machine
    kept_full: dict[str, str] = field(default_factory=dict)  # layer -> why it is never pruned

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def grid_keys(graph: ChannelGraph, grid: Grid, lowrank: bool = False, schemes: Sequence[str] = SCHEMES
              ) -> list[LayerKey]:
    """Every key the pruner can ask for on this width grid (deduplicated, in unit order); with
    ``lowrank``, also the keys of every unit's factorised pairs at its rank options in each of
    ``schemes`` (:mod:`~latprune.graph.lowrank`) where they pay."""
    options = graph.options(grid)
    ranks = {s: rank_options(graph.units, graph.model, grid.align, s) for s in schemes} if lowrank else {}
    keys: dict[str, LayerKey] = {}
    for i, unit in enumerate(graph.units):
        couts = options[unit.out_group] if unit.out_group is not None else [None]
        for cin_widths in _input_widths(unit, options):
            for cout in couts:
                widths = dict(cin_widths)
                if cout is not None:
                    widths[unit.out_group] = cout  # type: ignore[index]
                key = unit.key(widths)
                keys.setdefault(key.text, key)
                for scheme, options_of in ranks.items():
                    for rank in options_of.get(rank_axis(i), [])[:-1]:  # the last option is the layer whole
                        if pays(key, rank, scheme):
                            for part in pair_keys(key, rank, scheme):
                                keys.setdefault(part.text, part)
    return list(keys.values())


def _input_widths(unit: Unit, options: dict[int, list[int]]) -> list[dict[int, int]]:
    """The input-group widths a unit is measured at: its input group's options; for a unit a
    concatenation feeds, every feeding group at the same level of its options (from all at
    their narrowest to all full), the grid the predictor interpolates on."""
    if unit.in_group is None or unit.depthwise:
        return [{}]
    if not unit.concatenated:
        return [{unit.in_group: w} for w in options[unit.in_group]]
    gids = [unit.in_group] + [g for g, _ in unit.in_others]
    levels = {g: sorted(w for w in options[g] if w > 0) for g in gids}
    n = max(len(ws) for ws in levels.values())
    return [{g: ws[round(j * (len(ws) - 1) / max(n - 1, 1))] for g, ws in levels.items()} for j in range(n)]


def open_for_backend(path: str | Path, backend: Backend, writable: bool) -> Lut:
    """Open a LUT and refuse it if it was measured on another device/backend/setting."""
    lut = Lut.open(path, writable=writable)
    try:
        check_compatible(lut.fingerprint, backend.fingerprint(), f"LUT {path}")
    except LutError:
        lut.close()
        raise
    return lut


def _measure(lut: Lut, backend: Backend, keys: list[LayerKey], passes: int, progress: bool) -> int:
    """Measure every key with fewer than ``passes`` passes in the LUT, committing each; returns the count.

    Pass p measures what has fewer than p passes, in the same order each time (a key's
    passes lie a whole pass apart, :func:`~latprune.latency_lut.timing.fastest_over_passes`),
    so a slow spell of the device lands on different keys each time, and keeps the
    faster median (interference only ever slows a measurement down)."""
    unique = {k.text: k for k in keys}  # two units of the same shape share one key
    todo = [k for k in unique.values() if lut.passes(k) < passes]
    measurements = 0
    for p in range(1, passes + 1):
        pending = [k for k in todo if lut.passes(k) < p]
        for key in bar(pending, desc=f"profile {backend.name} pass {p}/{passes}", unit="unit",
                       enabled=progress and bool(pending)):
            _time_and_keep_faster(lut, backend, key, passes=p)
            measurements += 1
    return measurements


def _time_and_keep_faster(lut: Lut, backend: Backend, key: LayerKey, passes: int) -> None:
    """Time ``key`` on the backend and commit the faster of this and the stored median, with ``passes``."""
    keep_faster(lut, key, backend.measure_unit(key), passes)


def keep_faster(lut: Lut, key: LayerKey, new: Latency, passes: int) -> None:
    """Commit the faster of ``new`` and ``key``'s stored median (runs of both counted), with ``passes``."""
    old = lut.get(key)
    best = new if old is None or new.median_ms < old.median_ms else old
    lut.put(key, replace(best, repeats=new.repeats + (old.repeats if old else 0)), passes=passes)


def _refine(graph: ChannelGraph, lut: Lut, backend: Backend, grid: Grid, passes: int,
            progress: bool) -> tuple[Grid, dict[str, Staircase], int]:
    """Probe each group's staircase (:func:`refine_grid`): the refined grid, the staircases
    and how many measurements it took."""
    measurements = 0

    def probe(probe_keys: list[LayerKey]) -> None:
        nonlocal measurements
        measurements += _measure(lut, backend, probe_keys, passes, False)

    def again(probe_keys: list[LayerKey]) -> None:
        nonlocal measurements
        measurements += _remeasure(lut, backend, probe_keys)

    with bar(total=len(graph.groups), desc=f"refine {backend.name} staircases", unit="group",
             enabled=progress) as groups_done:
        grid, staircases = refine_grid(graph, lut, grid, probe, again, lambda _: groups_done.update())
    return grid, staircases, measurements


def _store_refinement(stored: dict[str, Any], grid: Grid, staircases: dict[str, Staircase]) -> None:
    """Put the refined grid's added widths and the staircases into a stored calibration (in place)."""
    if grid.extra or staircases:
        stored["extra"] = {root: list(ws) for root, ws in grid.extra}
        stored["staircases"] = {r: st.to_dict() for r, st in staircases.items()}


def _remeasure(lut: Lut, backend: Backend, keys: list[LayerKey]) -> int:
    """Time every key once more and keep the faster median (a confirmation at another moment)."""
    unique = {k.text: k for k in keys}
    for key in unique.values():
        _time_and_keep_faster(lut, backend, key, passes=max(1, lut.passes(key)))
    return len(unique)


def build_lut(graph: ChannelGraph, path: str | Path, backend: Backend, levels: int = DEFAULT_LEVELS,
              calibration_samples: int = 12, model_name: str = "model", progress: bool = True,
              passes: int = DEFAULT_PASSES, shard: tuple[int, int] = (1, 1),
              recalibrate: bool = False, align: int | None = None, refine: bool = False,
              lowrank: bool = False) -> ProfileReport:
    """Profile ``graph``'s units into the LUT at ``path`` (created if missing) and calibrate.

    Each unit is measured ``passes`` times, at different moments, and the
    fastest median kept. ``refine`` samples each group's latency staircase
    adaptively (:mod:`latency_lut.staircase`): the widths it adds join the
    grid stored with the calibration, and a later profile without ``refine``
    keeps them. ``shard=(i, n)`` measures only every n-th key starting
    at the i-th (1-based) and skips calibration: merge the shards with
    ``latprune lut merge``, then profile the merged LUT once to calibrate. ``lowrank`` also
    measures every layer's factorised pairs at its rank options, in both schemes
    (:mod:`~latprune.graph.lowrank`)."""
    index, count = shard
    if not 1 <= index <= count:
        raise LutError(f"shard {index}/{count} is not of the form i/n with 1 <= i <= n")
    if levels < 1:
        raise LutError(f"levels must be at least 1, got {levels}")
    if passes < 1:
        raise LutError(f"passes must be at least 1, got {passes}")
    if refine and count > 1:
        raise LutError("refine probes widths that depend on every measurement of a group: profile the shards "
                       "without it, merge them (`latprune lut merge`), then profile the merged LUT with refine")
    grid = Grid(levels, backend.preferred_align if align is None else align)
    if grid.align < 1:
        raise LutError(f"align must be at least 1, got {grid.align}")
    start = time.time()
    path = Path(path)
    lut = (open_for_backend(path, backend, writable=True) if Lut.holds_data(path)
           else Lut.create(path, backend.fingerprint()))
    with lut:
        if lut.meta("fusion_rules") is None and hasattr(backend, "profile_graph"):
            from latprune.latency_lut.fusion import discover_fusions

            lut.set_meta("fusion_rules", discover_fusions(backend))
        complete_before = {k.text for k, _ in lut.items() if lut.passes(k) >= passes}
        keys = grid_keys(graph, grid, lowrank)[index - 1 :: count]
        measurements = _measure(lut, backend, keys, passes, progress)
        staircases: dict[str, Staircase] = {}
        signature = graph.signature()
        stored = lut.calibration(signature)
        if refine:
            grid, staircases, count_refine = _refine(graph, lut, backend, grid, passes, progress)
            measurements += count_refine
        elif count == 1 and stored is not None and stored.get("extra"):
            previous = _grid_of(stored)
            if (previous.levels, previous.align) == (grid.levels, grid.align):  # a refined LUT stays refined
                grid = previous
                staircases = {r: Staircase(**v) for r, v in stored.get("staircases", {}).items()}
        if refine or grid.extra:  # the coarse keys and the cross products of the added widths
            keys = grid_keys(graph, grid, lowrank)
            measurements += _measure(lut, backend, keys, passes, progress)
        if count > 1:
            stored = stored or {"scale": 1.0, "offset_ms": 0.0, "residual_pct": float("nan"), "levels": levels,
                                "align": grid.align, "model": model_name, "note": "shard: calibrate after `latprune lut merge`"}
        elif stored is None or _grid_of(stored) != grid or not fit_is_current(stored.get("fit"), bool(graph.blocks)) \
                or recalibrate:
            cal, points = run_calibration(graph, lut, backend, grid, calibration_samples, progress)
            stored = {**asdict(cal), "levels": grid.levels, "align": grid.align, "model": model_name,
                      "fit": FIT_METHOD, "points": points, "spread_pct": points_spread_pct(points),
                      "cold_units": sorted(u.name for u in graph.units if u.base.cold)}
            _store_refinement(stored, grid, staircases)
            lut.set_calibration(signature, stored)
        elif refine:  # same grid as stored: no refit, but this refinement's curves and steps are the current ones
            _store_refinement(stored, grid, staircases)
            lut.set_calibration(signature, stored)
        noisy = noise_warning(stored, f"latprune profile {model_name} -o {path}") if count == 1 else None
        reused = sum(k.text in complete_before for k in keys)
        report = ProfileReport(str(path), model_name, signature, len(graph.units), len(keys), measurements,
                               reused, round(time.time() - start, 2), levels, grid.align, passes,
                               {k: v for k, v in stored.items() if k not in ("points", "staircases")},
                               lut.fingerprint,
                               {r: {"added": st.added, "steps": st.steps} for r, st in staircases.items()},
                               [noisy] if noisy else [], dict(graph.kept_full))
    if graph.kept_full:
        report.warnings.append(kept_full_warning(graph.kept_full))
    return report


def kept_full_warning(kept: dict[str, str]) -> str:
    """What a model keeps at full width because latprune cannot prune it yet, in one line."""
    counts = [(sum(reason.startswith(start) for reason in kept.values()), what) for start, what in (
        ("an attention", "attentions latprune does not rewrite yet"),
        (CONTRADICTED, "layers whose group breaks the model when slimmed"))]
    among = ", ".join(f"{n} {what}" for n, what in counts if n)
    first = next(iter(kept))
    return (f"{len(kept)} layers keep their full width, never pruned{f' ({among})' if among else ''}; "
            f"each with why in the report's kept_full, e.g. {first}: {kept[first]}")


def model_pass(backend: Backend, model: nn.Module | None, input_shape: tuple[int, ...],
               make: Callable[[], nn.Module] | None = None) -> Callable[[], Latency]:
    """One pass of ``model``'s whole-model measurement, ``backend.measure_model(model, input_shape)``,
    to call once per pass; ``make`` instead of ``model`` builds it at the first pass (a slimmed copy,
    so that measuring many configurations in turn holds one model at a time). A backend that runs
    ONNX itself (:meth:`Backend.measure_export`) gets the model exported on the first call and the
    same bytes on every later one (the model is then let go: the bytes are all a pass needs): an
    export of GoogLeNet at 64×64 takes about as long as a pass of it
    (``benchmarks/results/decision_time_zen4.json``). An export past :data:`SPILL_BYTES` waits
    between passes in a temporary file, removed with the pass. Take a new one for a model changed
    since (trained, slimmed)."""
    if (model is None) == (make is None):
        raise ValueError("model_pass takes a model or a maker of one")
    held = _Held() if model is None else _Held(model=model)  # no closure refers to itself: a dropped pass
    # frees its model and export (and removes its spilled file) at once, not at the next garbage collection

    def model_now() -> nn.Module:  # the model given, or built from its maker
        return held["model"] if "model" in held else make()  # type: ignore[misc]

    if type(backend).measure_export is Backend.measure_export:  # it times the PyTorch model
        def torch_pass() -> Latency:
            if "torch" not in held:
                held["torch"] = model_now()
            return backend.measure_model(held["torch"], input_shape)
        return torch_pass

    def once() -> Latency:
        if "onnx" in held:
            return backend.measure_export(held["onnx"])  # type: ignore[return-value]
        if "file" in held:
            return backend.measure_artifact(held["file"])
        if "torch" in held:
            return backend.measure_model(held["torch"], input_shape)
        from latprune.runtime.onnx import to_onnx_bytes

        slim = model_now()
        onnx = to_onnx_bytes(slim, input_shape)
        held.pop("model", None)  # exported: the bytes are all a pass needs
        latency = backend.measure_export(onnx)
        if latency is None:  # the backend times this model as PyTorch after all
            held["torch"] = slim
            return backend.measure_model(slim, input_shape)
        if onnx_size(onnx) > SPILL_BYTES:
            held["file"] = _spilled(held, onnx)
        else:
            held["onnx"] = onnx
        return latency

    return once


SPILL_PREFIX = "latprune-pass-"
SPILL_OWNER = "owner.pid"  # the process whose pass a spilled export is


class _Held(dict):
    """What a :func:`model_pass` holds between passes (a dict that a weak reference can follow)."""


def _spilled(owner: object, onnx: bytes) -> str:
    """``onnx`` written to a temporary directory that lives as long as ``owner``: its graph's path.
    Those a killed process left (:func:`sweep_spills`) go first."""
    import shutil
    import tempfile
    import weakref

    from latprune.runtime.large_onnx import write_onnx

    sweep_spills(tempfile.gettempdir())
    tmp = tempfile.mkdtemp(prefix=SPILL_PREFIX)
    weakref.finalize(owner, shutil.rmtree, tmp, True)
    Path(tmp, SPILL_OWNER).write_text(str(os.getpid()))
    return str(write_onnx(os.path.join(tmp, "model.onnx"), onnx)[0])


def sweep_spills(root: str) -> list[str]:
    """Remove the spilled exports under ``root`` whose process has gone (killed before it could
    remove them: a ViT-H/14's is 2.4 GB); those of live processes stay. Returns the removed."""
    import shutil

    removed = []
    for entry in Path(root).glob(f"{SPILL_PREFIX}*"):
        try:
            pid = int((entry / SPILL_OWNER).read_text())
        except (OSError, ValueError):
            continue  # being written, or not ours
        if not _alive(pid):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(str(entry))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def measure_beside(measures: list[Callable[[], Latency]], on_each: Callable[[], object] | None = None
                   ) -> list[Latency]:
    """Whole models (one pass of each: ``measures[i]()``) measured in interleaved
    passes by :func:`measure_widths`' rule: 2 passes, each model's faster median
    kept, and further passes (up to ``MODEL_MAX_PASSES``) for a model whose two
    fastest differ by more than ``MODEL_AGREE``. Measured together, their
    ratios are what a relative budget compares: the machine's speed at the
    moment cancels out of them. ``on_each`` is called after each pass of each model (a progress bar's tick)."""
    return fastest_over_passes(lambda i: measures[i](), len(measures), 2, on_each=on_each,
                               agree=MODEL_AGREE, max_passes=MODEL_MAX_PASSES)


def measure_beside_anchor(base: Callable[[], Latency], candidate: Callable[[], Latency], anchor_ms: float,
                          tolerance: float, attempts: int = ANCHOR_ATTEMPTS,
                          on_each: Callable[[], object] | None = None) -> tuple[Latency, Latency]:
    """``candidate`` measured beside ``base`` (:func:`measure_beside`), again while the base
    beside it is more than ``tolerance`` (relative) away from ``anchor_ms``, the base
    as measured when the budget was set: up to ``attempts`` pairs, the one whose base
    is closest to the anchor kept.

    Scaling a candidate by its base beside it assumes a slow spell slows both
    alike, and a base can measure 5% slow beside a candidate that was not
    (ResNet-20, 1 thread: the scaled 1.357 ms passed a 1.419 ms budget, the
    export measured 1.445 ms). A pair measured in the anchor's
    state needs no such assumption; a slow state that outlasts every attempt
    is still scaled away."""
    best: tuple[float, Latency, Latency] | None = None
    for _ in range(max(1, attempts)):
        base_lat, cand_lat = measure_beside([base, candidate], on_each)
        off = abs(base_lat.median_ms / anchor_ms - 1)
        if best is None or off < best[0]:
            best = (off, base_lat, cand_lat)
        if off <= tolerance:
            break
    assert best is not None
    return best[1], best[2]


def measure_settled(measure: Callable[[], Latency], on_each: Callable[[], object] | None = None) -> Latency:
    """One whole model's latency by :func:`measure_beside`'s rule (``measure`` is one
    pass, e.g. ``backend.measure_model``): the pruner's base, candidates and
    exports are all measured this way, so a slow spell of the machine does not
    move a budget or reject a candidate."""
    return measure_beside([measure], on_each)[0]


def slimmed_pass(graph: ChannelGraph, backend: Backend, widths: dict[int, int]) -> Callable[[], Latency]:
    """:func:`model_pass` of ``graph`` slimmed to ``widths``, slimmed at its first pass."""
    return model_pass(backend, None, graph.input_shape, make=lambda: graph.slim_to_widths(widths))


def measure_widths(graph: ChannelGraph, backend: Backend, configs: list[dict[int, int]], passes: int = 2,
                   desc: str = "measure", progress: bool = True,
                   every: list[list[float]] | None = None) -> list[Latency]:
    """End-to-end latency of ``graph`` slimmed to each width configuration.

    The same rule as the units: ``passes`` passes at different moments (a
    whole pass apart), keeping each configuration's faster median, so
    a slow spell of the machine does not land on one configuration alone;
    a configuration whose two fastest medians differ by more than
    ``MODEL_AGREE`` is measured again, up to ``MODEL_MAX_PASSES`` times.
    ``every``, when given, receives each configuration's median of every pass,
    in pass order (one list per configuration)."""
    models = [slimmed_pass(graph, backend, widths) for widths in configs]
    return _models_over_passes(lambda i: models[i](), len(models),
                               passes, desc, progress, every)


def measure_widths_beside(graph: ChannelGraph, backend: Backend, configs: list[dict[int, int]],
                          reference: dict[int, int], passes: int = 2, desc: str = "measure",
                          progress: bool = True, every: list[list[float]] | None = None
                          ) -> list[tuple[Latency, Latency]]:
    """:func:`measure_widths`, each measurement of a configuration made right after
    one of the model at the ``reference`` widths (the full model, say).

    Returns, per configuration, its kept (fastest) latency and the reference's
    latency measured just before that one: a pair taken seconds apart, in the
    same state of the machine, so their ratio holds while the machine's speed
    drifts between states (``prune``'s closed loop measures a candidate beside
    the base for the same reason, by :func:`measure_beside`, which keeps each
    model's own fastest pass; here the configurations keep
    :func:`measure_widths`' rule, and the reference its measurement of that pass)."""
    models = [slimmed_pass(graph, backend, widths) for widths in configs]
    ref_model = slimmed_pass(graph, backend, reference)
    pairs: list[list[tuple[Latency, Latency]]] = [[] for _ in models]  # per configuration: (its latency, ref's)

    def measure(i: int) -> Latency:
        ref = ref_model()
        lat = models[i]()
        pairs[i].append((lat, ref))
        return lat

    best = _models_over_passes(measure, len(models), passes, desc, progress, every)
    return [(lat, next(ref for m, ref in pairs[i] if m is lat)) for i, lat in enumerate(best)]


def _models_over_passes(measure: Callable[[int], Latency], count: int, passes: int, desc: str,
                        progress: bool, every: list[list[float]] | None = None) -> list[Latency]:
    """:func:`~latprune.latency_lut.timing.fastest_over_passes` with the whole-model
    rule (``MODEL_AGREE``, up to ``MODEL_MAX_PASSES``) and a progress bar; ``every``
    as in :func:`measure_widths`."""
    with bar(total=count * passes, desc=desc, unit="model", enabled=progress) as done:
        def tick() -> None:
            if done.total is not None and done.n >= done.total:  # an extra pass for a disagreeing configuration
                done.total += 1
            done.update()

        return fastest_over_passes(measure, count, passes, on_each=tick, agree=MODEL_AGREE,
                                   max_passes=max(passes, MODEL_MAX_PASSES), every=every)


def run_calibration(graph: ChannelGraph, lut: Lut, backend: Backend, grid: Grid, samples: int,
                    progress: bool = True) -> tuple[Calibration, list[dict[str, float]]]:
    """Measure ``samples`` whole-model width configurations and fit the correction.

    Where the model has removable blocks, three configurations remove a
    quarter, a half and three quarters of them, and the random ones may too
    (the pruner's knapsack does; see :func:`~latprune.latency_lut.calibrate.calibration_configs`)."""
    predictor = Predictor(lut, graph)
    configs = calibration_configs(graph.options(grid, blocks=bool(graph.blocks)), samples)
    measured = measure_widths(graph, backend, configs, desc="calibrate", progress=progress)
    points = [{"raw_ms": predictor.unit_sum(w), "measured_ms": m.median_ms, "p10_ms": m.p10_ms, "p90_ms": m.p90_ms,
               "removed_units": len(graph.removed_units(w)), "weights_mib": predictor.weights_mib(w)}
              for w, m in zip(configs, measured)]
    cal = fit([p["raw_ms"] for p in points], [p["measured_ms"] for p in points],
              [p["removed_units"] for p in points], [p["weights_mib"] for p in points])
    return cal, points


def _grid_of(stored: dict[str, Any]) -> Grid:
    """The width grid a stored calibration was fitted on (with the widths a refinement added)."""
    return Grid(int(stored["levels"]), int(stored.get("align", 1))).with_extra(stored.get("extra", {}))


def load_calibration(lut: Lut, signature: str) -> tuple[Calibration, Grid] | None:
    """The stored calibration of the model with this ``ChannelGraph.signature()`` and its width grid, if any."""
    stored = lut.calibration(signature)
    if stored is None:
        return None
    cal = Calibration(stored["scale"], stored["offset_ms"], stored["residual_pct"], len(stored.get("points", [])),
                      stored.get("removed_unit_ms", 0.0), stored.get("per_weight_mib", 0.0))
    return cal, _grid_of(stored)


def fit_is_current(fit_method: str | None, has_blocks: bool) -> bool:
    """Whether a calibration stored with ``fit_method`` was fitted by today's rule
    (:data:`~latprune.latency_lut.calibrate.FIT_METHOD`); the next ``profile``
    fits one that is not again, from new whole-model measurements. A model
    without removable blocks measures the same configurations under the rule
    before ``-removals``, so that one is current for it too."""
    return fit_method == FIT_METHOD or (not has_blocks and fit_method == FIT_METHOD.removesuffix("-removals"))
