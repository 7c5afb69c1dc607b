"""The LUT file and profiling: round-trips, resumes, refuses what it should."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from torch import nn

from latprune.errors import FingerprintMismatch, LutError
from latprune.graph.channels import ChannelGraph, Grid
from latprune.graph.units import ACTIVATIONS, LayerKey
from latprune.latency_lut.backends import get_backend
from latprune.latency_lut.backends.fake import FakeBackend
from latprune.latency_lut.calibrate import FIT_METHOD
from latprune.latency_lut.predict import Predictor
from latprune.latency_lut.profile import (
    build_lut,
    grid_keys,
    load_calibration,
    open_for_backend,
)
from latprune.latency_lut.store import Lut
from latprune.latency_lut.timing import Latency, TimingConfig
from latprune.runtime.fingerprint import cpu_device
from tests.conftest import MODELS, TINY_INPUT, tiny_resnet


def test_lut_round_trips_through_its_file(tmp_path: Path) -> None:
    keys = [LayerKey("conv", c, 2 * c, (3, 3), (1, 1), (1, 1), in_hw=(8, 8), bn=True, act="relu") for c in (1, 4, 9)]
    fp = FakeBackend().fingerprint()
    with Lut.create(tmp_path / "a.lut", fp) as lut:
        for i, k in enumerate(keys):
            lut.put(k, Latency(0.1 * (i + 1), 0.09 * (i + 1), 0.12 * (i + 1), 50 + i))
        lut.set_calibration("sig", {"scale": 1.2, "offset_ms": 0.1, "residual_pct": 1.0, "points": 3, "levels": 8})
    with Lut.open(tmp_path / "a.lut") as lut:
        assert lut.fingerprint == fp
        assert len(lut) == 3
        assert [lut.get(k) for k in keys] == [Latency(0.1 * (i + 1), 0.09 * (i + 1), 0.12 * (i + 1), 50 + i)
                                              for i in range(3)]
        assert dict(lut.items()).keys() == set(keys)
        assert lut.calibration("sig")["scale"] == 1.2


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    Lut.create(tmp_path / "a.lut", {"backend": "fake"}).close()
    with pytest.raises(LutError, match="already exists"):
        Lut.create(tmp_path / "a.lut", {"backend": "fake"})


def test_an_empty_file_at_the_lut_path_is_profiled_over(tmp_path: Path) -> None:
    """A process killed before its LUT held anything leaves an empty file: nothing to lose, so
    profiling creates the LUT there, where a file with any content is kept and refused."""
    empty = tmp_path / "empty.lut"
    empty.touch()
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    report = build_lut(graph, empty, get_backend("fake", threads=1), levels=2, progress=False)
    assert report.measured > 0 and Lut.open(empty).calibration(graph.signature()) is not None
    bad = tmp_path / "bad.lut"
    bad.write_bytes(b"x")
    with pytest.raises(LutError, match="not a readable latprune LUT"):
        build_lut(graph, bad, get_backend("fake", threads=1), levels=2, progress=False)
    assert bad.read_bytes() == b"x"


def test_corrupt_lut_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.lut"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LutError, match="not a readable latprune LUT"):
        Lut.open(bad)


def test_sqlite_without_lut_tables_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.lut"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(LutError, match="not a readable latprune LUT"):
        Lut.open(other)


def test_other_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.lut"
    Lut.create(path, {"backend": "fake"}).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(LutError, match="schema version 99"):
        Lut.open(path)


def test_missing_lut_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(LutError, match="latprune profile"):
        Lut.open(tmp_path / "none.lut")


def test_lut_from_other_backend_or_threads_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fake.lut"
    Lut.create(path, get_backend("fake", threads=1).fingerprint()).close()
    with pytest.raises(FingerprintMismatch, match="threads"):
        open_for_backend(path, get_backend("fake", threads=2), writable=False)
    with pytest.raises(FingerprintMismatch, match="backend"):
        open_for_backend(path, get_backend("torch-cpu", threads=1), writable=False)


def test_two_cpus_sold_under_one_name_are_two_devices(tmp_path: Path) -> None:
    zen2 = {"model name": "AMD EPYC", "cpu family": "23", "model": "49", "flags": "fpu sse4_2 avx avx2 fma"}
    zen5 = {"model name": "AMD EPYC", "cpu family": "26", "model": "2", "flags": "sse4_2 avx avx2 avx512f avx512bw"}
    assert cpu_device(zen2) == "AMD EPYC (cpu family 23, model 49, avx2)"
    assert cpu_device(zen5) == "AMD EPYC (cpu family 26, model 2, avx512f)"
    assert cpu_device({"model name": "Neoverse", "Features": "fp asimd sve"}) == "Neoverse (sve)"
    fp = get_backend("ort-cpu", threads=1).fingerprint()
    path = tmp_path / "zen2.lut"
    Lut.create(path, {**fp, "device": cpu_device(zen2)}).close()
    with pytest.raises(FingerprintMismatch, match="device: 'AMD EPYC .cpu family 23"):
        open_for_backend(path, get_backend("ort-cpu", threads=1), writable=False)


class _DiesAfter(FakeBackend):
    """A backend whose process 'dies' after n unit measurements."""

    def __init__(self, n: int) -> None:
        super().__init__(threads=1)
        self.n = n
        self.calls = 0

    def measure_unit(self, key: LayerKey) -> Latency:
        if self.calls >= self.n:
            raise KeyboardInterrupt
        self.calls += 1
        return super().measure_unit(key)


def test_killed_profile_resumes_and_measures_only_what_is_missing(tmp_path: Path) -> None:
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    total = len(grid_keys(graph, Grid(4)))
    path = tmp_path / "r.lut"
    with pytest.raises(KeyboardInterrupt):
        build_lut(graph, path, _DiesAfter(10), levels=4, progress=False, passes=1)
    with Lut.open(path) as lut:
        assert len(lut) == 10  # every finished measurement survived
    resumed = _DiesAfter(10**9)
    report = build_lut(graph, path, resumed, levels=4, progress=False, passes=1)
    assert resumed.calls == total - 10
    assert (report.measured, report.reused, report.keys) == (total - 10, 10, total)
    # a second run measures nothing
    again = _DiesAfter(0)
    build_lut(graph, path, again, levels=4, progress=False, passes=1)
    assert again.calls == 0


def test_second_pass_remeasures_and_keeps_the_faster(tmp_path: Path) -> None:
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    path = tmp_path / "p.lut"
    build_lut(graph, path, _DiesAfter(10**9), levels=2, progress=False, passes=1)
    total = len(grid_keys(graph, Grid(2)))

    class Faster(_DiesAfter):
        def measure_unit(self, key: LayerKey) -> Latency:
            lat = super().measure_unit(key)
            return Latency(lat.median_ms / 2, lat.p10_ms / 2, lat.p90_ms / 2, 7)

    faster = Faster(10**9)
    report = build_lut(graph, path, faster, levels=2, progress=False, passes=2)
    assert faster.calls == report.measured == total and report.passes == 2
    with Lut.open(path) as lut:
        for key, lat in lut.items():
            assert lat.median_ms == pytest.approx(FakeBackend().measure_unit(key).median_ms / 2)
            assert lat.repeats == 1 + 7 and lut.passes(key) == 2


def test_each_unit_pass_runs_in_the_same_order(tmp_path: Path) -> None:
    """A key's two passes lie a whole pass apart: the last key is not measured twice back to back."""
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)

    class Logged(FakeBackend):
        def __init__(self) -> None:
            super().__init__()
            self.keys: list[str] = []

        def measure_unit(self, key: LayerKey) -> Latency:
            self.keys.append(key.text)
            return super().measure_unit(key)

    backend = Logged()
    build_lut(graph, tmp_path / "o.lut", backend, levels=2, progress=False, passes=2)
    half = len(backend.keys) // 2
    assert half == len(grid_keys(graph, Grid(2))) and backend.keys[:half] == backend.keys[half:]


def test_calibration_recovers_the_backend_overhead(tmp_path: Path) -> None:
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    backend = get_backend("fake", threads=1)
    report = build_lut(graph, tmp_path / "c.lut", backend, levels=4, progress=False)
    # the fake backend's whole model costs 1.1 x Σunits + 0.02 ms
    assert report.calibration["scale"] == pytest.approx(1.1, rel=1e-6)
    assert report.calibration["offset_ms"] == pytest.approx(0.02, abs=1e-6)
    with Lut.open(tmp_path / "c.lut") as lut:
        cal, grid = load_calibration(lut, graph.signature())
        predictor = Predictor(lut, graph, cal)
        full = backend.measure_model(graph.model, TINY_INPUT).median_ms
        assert predictor.predict(graph.full_widths()) == pytest.approx(full, rel=1e-6)
        assert grid == Grid(4, align=1)  # the fake backend prefers no alignment


def test_calibration_fits_relative_errors_and_drops_a_slow_spell() -> None:
    from latprune.latency_lut.calibrate import fit

    # measured = raw - 0.3 exactly (a per-unit overhead the units pay alone), except one
    # point measured during a slow spell (+25%): the fit must stay on the line
    raw = [3.0, 2.6, 2.0, 1.6, 1.1, 0.8, 0.6, 0.55]
    measured = [r - 0.3 for r in raw]
    measured[1] *= 1.25
    cal = fit(raw, measured)
    assert cal.scale == pytest.approx(1.0, abs=1e-9) and cal.offset_ms == pytest.approx(-0.3, abs=1e-9)
    assert cal.points == len(raw) and cal.residual_pct == pytest.approx(0.0, abs=1e-9)
    # no outlier, a few % of noise on the large configurations: the small ones weigh as much
    noisy = [r - 0.3 for r in raw]
    noisy[0], noisy[1], noisy[2] = noisy[0] * 1.06, noisy[1] * 1.06, noisy[2] * 0.97
    assert abs(fit(raw, noisy).from_units(0.55, 0) / 0.25 - 1) < 0.02  # an absolute least-squares fit: -11%
    assert fit([1.0], [0.7]).offset_ms == pytest.approx(-0.3) and fit([1.0], [0.7]).scale == 1.0
    # removing a block saves its units' LUT time minus 0.01 ms each: the fit finds that term
    removed = [0, 0, 2, 0, 4, 2, 6, 4]
    measured = [0.9 * r + 0.1 + 0.9 * 0.01 * k for r, k in zip(raw, removed)]
    cal = fit(raw, measured, removed)
    assert (cal.scale, cal.offset_ms, cal.removed_unit_ms) == pytest.approx((0.9, 0.1, 0.01), abs=1e-9)
    assert fit(raw, measured, [0] * len(raw)).removed_unit_ms == 0.0  # no removals: no such term
    # a block that seems to save more than its units (-0.01 ms each) is not extrapolated: the line
    # is refitted without the term, as if no block had been removed
    saving = [0.9 * r + 0.1 - 0.9 * 0.01 * k for r, k in zip(raw, removed)]
    cal = fit(raw, saving, removed)
    assert cal.removed_unit_ms == 0.0 and cal == fit(raw, saving, None)
    # one or two points that remove blocks do not make the term: it would only absorb their noise
    few = [0, 0, 0, 0, 4, 0, 0, 6]
    assert fit(raw, [0.9 * r + 0.1 + 0.9 * 0.01 * k for r, k in zip(raw, few)], few).removed_unit_ms == 0.0
    # nor when three do, but trimming drops one of them (measured in a slow spell)
    three = [0, 0, 2, 0, 4, 0, 6, 0]
    slow = [0.9 * r + 0.1 + 0.9 * 0.01 * k for r, k in zip(raw, three)]
    assert fit(raw, slow, three).removed_unit_ms == pytest.approx(0.01)
    slow[4] *= 1.25
    assert fit(raw, slow, three).removed_unit_ms == 0.0 and fit(raw, slow, three) == fit(raw, slow, None)


def test_calibration_scales_the_units_with_the_configurations_weights() -> None:
    """Inside a model a unit's time grows with every other layer's weights (MiB): the fit finds the
    factor from eight points, keeps it only within WEIGHT_FACTOR_RANGE, and scores each point with it."""
    from latprune.latency_lut.calibrate import MIN_WEIGHT_POINTS, fit

    raw = [3.0, 2.6, 2.0, 1.6, 1.1, 0.8, 0.6, 0.55, 2.3, 1.3]
    weights = [20.0, 16.0, 12.0, 9.0, 5.0, 3.5, 2.5, 2.0, 18.0, 6.0]  # not in proportion to raw
    measured = [1.2 * r * (1 + 0.02 * w) - 0.3 for r, w in zip(raw, weights)]
    cal = fit(raw, measured, None, weights)
    assert (cal.scale, cal.offset_ms, cal.per_weight_mib) == pytest.approx((1.2, -0.3, 0.02), abs=1e-9)
    assert cal.from_units(2.0, 0, 10.0) == pytest.approx(1.2 * 2.0 * 1.2 - 0.3) and cal.residual_pct < 1e-9
    assert fit(raw, measured).per_weight_mib == 0.0 and fit(raw, measured).residual_pct > 1.0  # no weights given
    few = MIN_WEIGHT_POINTS - 1
    assert fit(raw[:few], measured[:few], None, weights[:few]).per_weight_mib == 0.0
    # a factor that would double a unit's time over the points' weights is noise, not caches: left out,
    # as is one that makes units faster the more weights the model holds
    steep = [r * (1 + 0.08 * w) for r, w in zip(raw, weights)]
    assert fit(raw, steep, None, weights) == fit(raw, steep)
    falling = [1.2 * r * (1 - 0.01 * w) - 0.3 for r, w in zip(raw, weights)]
    assert fit(raw, falling, None, weights) == fit(raw, falling)


def test_profile_calibrates_on_configurations_that_remove_blocks(tmp_path: Path) -> None:
    from latprune.latency_lut.calibrate import MIN_REMOVAL_POINTS

    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    assert len([g for g, opts in graph.options(Grid(4, 1), blocks=True).items() if opts[0] == 0]) >= 2
    report = build_lut(graph, tmp_path / "r.lut", get_backend("fake", threads=1), levels=4, progress=False)
    with Lut.open(tmp_path / "r.lut") as lut:
        points = lut.calibration(graph.signature())["points"]
    removing = [p["removed_units"] for p in points if p["removed_units"] > 0]
    assert len(points) == 12 and len(removing) >= MIN_REMOVAL_POINTS and len(set(removing)) >= 2
    assert report.calibration["removed_unit_ms"] == pytest.approx(0.0, abs=1e-9)  # the fake backend has no such cost


def test_a_calibration_fitted_another_way_is_measured_again(tmp_path: Path) -> None:
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    backend = get_backend("fake", threads=1)
    path = tmp_path / "old.lut"
    build_lut(graph, path, backend, levels=4, progress=False)
    with Lut.open(path, writable=True) as lut:  # as an older latprune stored it: no "fit"
        stored = lut.calibration(graph.signature())
        lut.set_calibration(graph.signature(), {k: v for k, v in stored.items() if k != "fit"} | {"scale": 9.0})
    report = build_lut(graph, path, backend, levels=4, progress=False)
    assert report.measured == 0 and report.calibration["scale"] == pytest.approx(1.1, rel=1e-6)
    assert report.calibration["fit"] == FIT_METHOD


def test_a_model_without_blocks_keeps_its_calibration_from_before_the_removal_rule() -> None:
    from latprune.latency_lut.profile import fit_is_current

    before = FIT_METHOD.removesuffix("-removals")
    assert before != FIT_METHOD and fit_is_current(FIT_METHOD, True) and fit_is_current(FIT_METHOD, False)
    assert fit_is_current(before, has_blocks=False)  # its configurations are the same under both rules
    assert not fit_is_current(before, has_blocks=True) and not fit_is_current(None, False)


def test_missing_measurement_is_an_error_not_a_zero(tmp_path: Path) -> None:
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    with Lut.create(tmp_path / "e.lut", {"backend": "fake"}) as lut:
        with pytest.raises(LutError, match="no measurement"):
            Predictor(lut, graph).predict(graph.full_widths())


def test_ort_cpu_measures_a_unit_and_a_model() -> None:
    backend = get_backend("ort-cpu", threads=1)
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    for unit in graph.units[:3]:
        lat = backend.measure_unit(unit.base)
        assert 0 < lat.p10_ms <= lat.median_ms <= lat.p90_ms
        assert lat.repeats >= backend.timing.repeats
    assert backend.measure_model(graph.model, TINY_INPUT).median_ms > 0
    fp = backend.fingerprint()
    assert fp["backend"] == "ort-cpu" and fp["threads"] == 1 and fp["runtime_version"]


def test_unknown_backend_lists_the_known_ones() -> None:
    from latprune.errors import BackendError

    with pytest.raises(BackendError, match="fake, ort-cpu, tensorrt, torch-cpu, torch-cuda"):
        get_backend("tpu")


def test_ort_cpu_unit_is_its_kernel_time_with_the_residual_add_fused(tmp_path: Path) -> None:
    """A unit's entry leaves out NCHWc layout conversions and the auxiliary residual
    convolution, and its add runs fused into the convolution, as inside a whole model."""
    import json

    from latprune.latency_lut.backends.ort_cpu import (
        AUX,
        LAYOUT_OPS,
        run_kernel_ms,
        unit_onnx,
    )
    from latprune.runtime.ort import make_session

    key = LayerKey("conv", 16, 16, (3, 3), (1, 1), (1, 1), in_hw=(14, 14), bn=True, add=True, act="relu")
    session = make_session(unit_onnx(key, aux_inputs=True), 1, profile_prefix=str(tmp_path / "p"))
    assert [i.name for i in session.get_inputs()] == ["x"]  # the residual is computed, not fed
    feeds = {"x": np.zeros((1, 16, 14, 14), np.float32)}
    for _ in range(3):
        session.run(None, feeds)
    with open(session.end_profiling(), encoding="utf-8") as fh:
        events = json.load(fh)
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    ops = {e["args"]["op_name"] for e in nodes}
    assert "Add" not in ops and "Conv" in ops
    left_out = [e for e in nodes if e["args"]["op_name"] in LAYOUT_OPS or e["name"].startswith(AUX)]
    assert left_out, "the unit graph should hold a layout conversion or the auxiliary convolution"
    per_run = run_kernel_ms(events)
    assert len(per_run) == 3
    kept_us = sum(e["dur"] for e in nodes) - sum(e["dur"] for e in left_out)
    assert sum(per_run) == pytest.approx(kept_us / 1000.0)


@pytest.mark.parametrize("act", sorted(set(ACTIVATIONS.values())))
def test_every_activation_a_unit_ends_with_is_built_as_torch_computes_it(act: str) -> None:
    """The ort-cpu unit graph with the activation computes torch's activation of the same
    unit's output without it (same seed, same weights); the torch backends name it too."""
    import torch

    from latprune.latency_lut.backends.ort_cpu import unit_onnx
    from latprune.latency_lut.backends.torch_cpu import _ACTS
    from latprune.runtime.ort import make_session

    key = LayerKey("conv", 8, 16, (3, 3), padding=(1, 1), in_hw=(5, 5), bn=True, act=act)
    x = np.random.default_rng(0).standard_normal((1, 8, 5, 5)).astype(np.float32)
    with_act = make_session(unit_onnx(key), 1).run(None, {"x": x})[0]
    without = make_session(unit_onnx(replace(key, act="")), 1).run(None, {"x": x})[0]
    expected = _ACTS[act]()(torch.from_numpy(without)).numpy()
    assert np.allclose(with_act, expected, atol=1e-5)


def test_a_scaling_unit_times_its_pooling_product_and_layout_conversions_as_in_a_model() -> None:
    """A squeeze-and-excitation's product is no NCHWc op: ONNX Runtime converts the map and the
    gate out of that layout and the product back, in a model as alone. The unit's time holds
    those conversions and the pooling and product, not the convolutions around it (nor their
    conversions); the torch backends scale the same map."""
    import torch

    from latprune.latency_lut.backends.ort_cpu import profile_kernels, scale_layouts, unit_onnx
    from latprune.latency_lut.backends.torch_cpu import _UnitModule, unit_inputs

    timing = TimingConfig(warmup=2, repeats=10, min_time_s=0.0)
    for channels in (96, 16):  # 16: as wide as the auxiliary tensors are by default
        key = LayerKey("scale", channels, channels, in_hw=(6, 6))
        profile = profile_kernels(unit_onnx(key, aux_inputs=True), 1, timing, scale_layouts(key))
        assert {"GlobalAveragePool", "Mul", "ReorderInput", "ReorderOutput"} <= set(profile.ops)
        assert profile.ops.count("ReorderInput") == 1 and "Conv" not in profile.ops
        assert profile_kernels(unit_onnx(key, aux_inputs=True), 1, timing).ops == ("GlobalAveragePool", "Mul")
    assert profile_kernels(unit_onnx(key), 1, timing).ops == ("GlobalAveragePool", "Mul")  # TensorRT's graph
    module = _UnitModule(key).eval()
    (x,) = unit_inputs(key, module)
    with torch.no_grad():
        assert torch.allclose(module(x), x * x.mean((2, 3), keepdim=True))


def test_a_concatenation_unit_times_the_join_and_the_batchnorm_after_it_as_in_a_model() -> None:
    """Written by convolutions, a concatenation's pieces are NCHWc tensors: ONNX Runtime joins
    them and runs DenseNet's BatchNorm + ReLU as one more kernel (a convolution on that layout).
    The unit's time is those two kernels', the convolutions writing its pieces left out; the
    torch backends join the same pieces."""
    import torch

    from latprune.latency_lut.backends.ort_cpu import OrtCpuBackend, unit_onnx
    from latprune.latency_lut.backends.torch_cpu import _UnitModule, unit_inputs

    key = LayerKey("concat", 96, 96, groups=3, in_hw=(8, 8), bn=True, act="relu")
    assert key.pieces() == [32, 32, 32] and replace(key, cin=100, cout=100).pieces() == [36, 32, 32]
    ort = OrtCpuBackend(threads=1, timing=TimingConfig(warmup=2, repeats=10, min_time_s=0.0))
    profile = ort.profile_graph(unit_onnx(key, aux_inputs=True))
    assert profile.ops == ("Concat", "Conv") and profile.latency.median_ms > 0
    assert ort.profile_graph(unit_onnx(replace(key, bn=False, act=""), aux_inputs=True)).ops == ("Concat",)
    module = _UnitModule(key).eval()
    pieces = unit_inputs(key, module)
    assert [p.shape[1] for p in pieces] == key.pieces()
    with torch.no_grad():
        assert module(*pieces).shape == (1, 96, 8, 8)
    assert get_backend("torch-cpu", 1).measure_unit(key).median_ms > 0


def test_ort_cpu_session_options_leave_the_results_alone() -> None:
    """Without spinning and with the worker thread pinned, a session computes what the
    default one does; an affinity per thread must match the thread count."""
    import os

    from latprune.errors import BackendError
    from latprune.latency_lut.backends.ort_cpu import unit_onnx
    from latprune.runtime.ort import make_session, random_feeds

    onnx = unit_onnx(LayerKey("conv", 16, 16, (3, 3), (1, 1), (1, 1), in_hw=(14, 14), bn=True, act="relu"))
    plain = make_session(onnx, 2)
    cpu = min(os.sched_getaffinity(0)) + 1  # ONNX Runtime numbers logical processors from 1
    tuned = make_session(onnx, 2, spinning=False, affinities=str(cpu))
    feeds = random_feeds(plain)
    np.testing.assert_allclose(tuned.run(None, feeds)[0], plain.run(None, feeds)[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(BackendError, match="could not load"):
        make_session(onnx, 2, affinities=f"{cpu};{cpu}")  # two entries for one thread after the caller's


def test_run_kernel_ms_sums_each_run_without_layout_and_aux_nodes() -> None:
    from latprune.latency_lut.backends.ort_cpu import run_kernel_ms

    def node(name: str, op: str, ts: int, dur: int) -> dict[str, object]:
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    events = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
              node("ReorderInput", "ReorderInput", 1, 10), node("y_nchwc", "Conv", 12, 50),
              node("aux_r_nchwc", "Conv", 5, 5), node("ReorderOutput", "ReorderOutput", 70, 10),
              {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
              node("y_nchwc", "Conv", 210, 40), node("Gemm", "Gemm", 260, 30)]
    assert run_kernel_ms(events) == pytest.approx([0.05, 0.07])


def test_ort_cpu_lut_of_session_wall_times_is_refused(tmp_path: Path) -> None:
    """LUTs profiled before units were kernel times hold other numbers: profile anew."""
    backend = get_backend("ort-cpu", threads=1)
    old = {k: v for k, v in backend.fingerprint().items() if k != "unit_timing"}
    Lut.create(tmp_path / "old.lut", old).close()
    with pytest.raises(FingerprintMismatch, match="unit_timing: None here vs 'kernel' now"):
        open_for_backend(tmp_path / "old.lut", backend, writable=False)


def test_disagreeing_passes_are_measured_again_until_two_agree() -> None:
    """A VM that flips between a fast and a slow speed: an item whose two fastest
    medians disagree gets another pass, up to max_passes; agreeing items do not."""
    from latprune.latency_lut.timing import fastest_over_passes

    speeds = {0: iter([10.0, 10.2]), 1: iter([19.0, 10.0, 10.1]), 2: iter([20.0, 23.0, 22.0, 10.0])}
    calls = {0: 0, 1: 0, 2: 0}

    def measure(i: int) -> Latency:
        calls[i] += 1
        ms = next(speeds[i])
        return Latency(ms, ms, ms, 10)

    order: list[int] = []

    def logged(i: int) -> Latency:
        order.append(i)
        return measure(i)

    best = fastest_over_passes(logged, 3, passes=2, agree=0.05, max_passes=4)
    assert calls == {0: 2, 1: 3, 2: 4}
    # every pass in the same order: an item's passes lie a whole pass apart, never back to back
    assert order == [0, 1, 2, 0, 1, 2, 1, 2, 2]
    assert [b.median_ms for b in best] == [10.0, 10.0, 10.0]
    assert [b.median_ms for b in fastest_over_passes(lambda i: Latency(5.0 + i, 5.0, 5.0, 1), 2)] == [5.0, 6.0]


def test_a_candidate_beside_a_base_far_from_its_anchor_is_measured_again() -> None:
    """The base slows 5% for one pair while the candidate does not (what this VM did):
    the pair is measured again and the one in the anchor's state kept; a slow state
    that outlasts every attempt keeps the pair closest to the anchor."""
    from latprune.latency_lut.profile import ANCHOR_ATTEMPTS, measure_beside_anchor

    def series(values: list[float]) -> Callable[[], Latency]:
        it = iter(values)
        return lambda: (lambda ms: Latency(ms, ms, ms, 10))(next(it))

    base = series([2.98, 2.98, 2.84, 2.84])  # two agreeing passes per pair
    cand = series([1.425, 1.425, 1.426, 1.426])
    b, c = measure_beside_anchor(base, cand, anchor_ms=2.837, tolerance=0.03)
    assert (b.median_ms, c.median_ms) == (2.84, 1.426)  # scaled: 1.425 ms, not the 1.357 of the first pair
    slow = [3.5, 3.5, 3.3, 3.3, 3.4, 3.4]
    b, c = measure_beside_anchor(series(slow), series([1.6] * 6), anchor_ms=2.837, tolerance=0.03)
    assert b.median_ms == 3.3 and ANCHOR_ATTEMPTS == 3  # all three pairs tried, the closest kept
    b, _ = measure_beside_anchor(series([2.84, 2.84]), series([1.4, 1.4]), anchor_ms=2.837, tolerance=0.03)
    assert b.median_ms == 2.84  # in the anchor's state at once: one pair


def test_speed_guard_waits_out_a_slow_state_and_repeats_a_measurement_it_overlapped() -> None:
    """A VM whose second vCPU is sometimes taken away: probes say when. A measurement
    starts only once the probe is back at its usual speed, one that ended in the slow
    state is repeated, and the guard counts the slow probes it saw."""
    from latprune.latency_lut.timing import SpeedGuard

    probes = iter([1.0, 1.9, 2.0, 1.05, 1.9, 1.0, 1.02, 2.0, 2.1, 1.9, 1.8, 1.9, 2.0])
    slept: list[float] = []
    runs = iter([8.0, 5.0, 6.0, 9.0])
    guard = SpeedGuard(lambda: next(probes), sleep=slept.append, max_wait_s=1.0, warmup_probes=0)

    def measure() -> Latency:
        ms = next(runs)
        return Latency(ms, ms, ms, 10)

    # probe 1.0 (the usual speed, before), measure 8.0, probe 1.9 (slow after: repeat);
    # probes 2.0 and then 1.05 (waited 0.5 s), measure 5.0, probe 1.9 (slow: repeat);
    # probe 1.0, measure 6.0, probe 1.02: clean
    assert guard.measure(measure).median_ms == 6.0
    assert slept == [0.5] and guard.slow == 3 and guard.usual_ms == 1.0 and len(guard.trace) == 7
    # the slow state outlasts max_wait_s and every attempt: the fastest attempt is kept
    guard.attempts = 1
    assert guard.measure(measure).median_ms == 9.0
    assert slept == [0.5, 0.5, 0.5] and guard.slow == 7
    # the usual speed is learnt before the first measurement: a slow first probe does not set it
    warm = SpeedGuard(iter([2.0, 1.0, 1.9, 1.1, 1.0]).__next__, sleep=lambda s: None, warmup_probes=3)
    assert warm.measure(lambda: Latency(5.0, 5.0, 5.0, 1)).median_ms == 5.0 and warm.usual_ms == 1.0
    assert warm.slow == 0


def test_speed_guard_usual_speed_is_a_low_percentile_of_every_probe() -> None:
    """One lucky probe does not make every later probe look slow; a slow state that lasts
    minutes (session 10's VM: 1.4x and 1.85x) is not the usual speed while the machine's
    own speed holds a fifth of every probe so far; a state that holds four fifths is."""
    from latprune.latency_lut.timing import SpeedGuard

    lucky = [0.7] + [1.0 + 0.01 * (i % 10) for i in range(199)]  # then the usual 1.00–1.09
    guard = SpeedGuard(iter(lucky).__next__, sleep=lambda s: None, warmup_probes=60)
    for _ in range(20):
        guard.measure(lambda: Latency(5.0, 5.0, 5.0, 1))
    assert guard.percentile == 0.2 and guard.slow == 0 and 1.0 <= guard.usual_ms <= 1.09
    lasting = SpeedGuard(iter([1.0] * 100 + [1.85] * 400).__next__, sleep=lambda s: None, warmup_probes=100,
                         max_wait_s=5.0, attempts=2)
    for _ in range(10):  # a slow state that outlasts all ten measurements
        lasting.measure(lambda: Latency(5.0, 5.0, 5.0, 1))
    assert lasting.usual_ms == 1.0 and lasting.slow == len(lasting.trace) - 100 > 100
    settled = SpeedGuard(iter([1.0] * 20 + [1.85] * 400).__next__, sleep=lambda s: None, warmup_probes=20,
                         max_wait_s=5.0, attempts=2)
    for _ in range(10):  # 20 fast probes, then a new speed for good: after 80 probes it is the usual one
        settled.measure(lambda: Latency(5.0, 5.0, 5.0, 1))
    assert settled.usual_ms == 1.85 and settled.slow <= 81 < len(settled.trace) - 20


def test_ort_cpu_guards_whole_models_on_two_threads_only() -> None:
    pytest.importorskip("onnxruntime")
    from latprune.latency_lut.backends import get_backend

    assert get_backend("ort-cpu", threads=1).speed_guard() is None
    backend = get_backend("ort-cpu", threads=2, timing=TimingConfig(warmup=1, repeats=5, min_time_s=0.0))
    lat = backend.measure_model(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), (1, 3, 16, 16))
    guard = backend.speed_guard()
    assert guard is not None and 0 < guard.usual_ms < float("inf") and lat.median_ms > 0


def test_latency_percentiles_bracket_the_median_of_equal_samples() -> None:
    lat = Latency.from_samples([0.007] * 40 + [0.008] * 3)  # kernel times in whole µs
    assert lat.p10_ms <= lat.median_ms <= lat.p90_ms and lat.median_ms == 0.007


class OnnxFakeBackend(FakeBackend):
    """The fake device running ONNX itself, as ort-cpu and tensorrt do: it counts the exports it times."""

    def __init__(self) -> None:
        super().__init__(threads=1)
        self.timed: list[bytes] = []

    def measure_export(self, onnx: bytes) -> Latency:
        self.timed.append(onnx)
        return Latency(1.0, 1.0, 1.0, 1)


def test_a_model_measured_in_passes_is_exported_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """model_pass exports once for a backend that runs ONNX, and every pass times those bytes;
    a backend that times the PyTorch model gets the model itself on every pass."""
    from latprune.latency_lut import profile
    from latprune.runtime import onnx

    exports: list[int] = []
    real = onnx.to_onnx_bytes
    monkeypatch.setattr(onnx, "to_onnx_bytes", lambda *a, **k: exports.append(1) or real(*a, **k))
    model = tiny_resnet()
    backend = OnnxFakeBackend()
    once = profile.model_pass(backend, model, TINY_INPUT)
    assert [once().median_ms for _ in range(3)] == [1.0, 1.0, 1.0]
    assert len(exports) == 1 and len(backend.timed) == 3 and len(set(backend.timed)) == 1
    fake = FakeBackend()
    direct = fake.measure_model(model, TINY_INPUT)
    assert profile.model_pass(fake, model, TINY_INPUT)() == direct and len(exports) == 1


def test_a_unit_a_concatenation_feeds_is_measured_on_one_input_grid_and_interpolated(tmp_path: Path) -> None:
    """DenseNet's layers read a concatenation of many groups: too many input widths to measure
    each, so the LUT holds a grid of them and the predictor interpolates along the input width."""
    import random

    from torchvision.models import DenseNet

    from latprune.latency_lut.backends.fake import fake_unit_ms

    model = DenseNet(growth_rate=16, block_config=(3,), num_init_features=32, bn_size=2, num_classes=10)
    graph = ChannelGraph.build(model.eval(), (1, 3, 32, 32))
    reader = next(u for u in graph.units if u.name == "classifier")  # reads all four groups
    assert reader.concatenated and len(reader.in_others) == 3
    grid = Grid(levels=4, align=8)
    cins = {k.cin for k in grid_keys(graph, grid) if k.op == "linear"}
    assert len(cins) == 4 and max(cins) == reader.base.cin  # one level per option, not every combination
    build_lut(graph, tmp_path / "dense.lut", FakeBackend(threads=1), levels=4, align=8, calibration_samples=2,
              progress=False, passes=1)
    with Lut.open(tmp_path / "dense.lut") as lut:
        predictor = Predictor(lut, graph)
        options = graph.options(grid)
        rng = random.Random(0)
        for _ in range(10):
            widths = {g: rng.choice(ws) for g, ws in options.items()}
            exact = fake_unit_ms(reader.key(widths))
            assert predictor.unit_ms(reader, widths) == pytest.approx(exact, rel=0.1)


def test_a_large_export_waits_on_disk_between_passes_and_is_removed_with_its_pass(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """ViT-H/14's export is 2.5 GB: the calibration's configurations, measured in interleaved
    passes, each wait in a temporary file, and each is slimmed only when its first pass comes;
    a pass let go removes its file at once."""
    import gc
    import glob
    import tempfile

    from latprune.latency_lut import profile as prof

    monkeypatch.setattr(prof, "SPILL_BYTES", 0)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # this test's spills alone, beside other processes'
    backend = get_backend("ort-cpu", 1)
    built: list[int] = []

    def make() -> nn.Module:
        built.append(1)
        return MODELS["resnet"]().eval()

    once = prof.model_pass(backend, None, TINY_INPUT, make=make)
    assert not built  # nothing slimmed or exported until its first pass
    first, second = once(), once()
    assert len(built) == 1 and first.median_ms > 0 and second.median_ms > 0
    spilled = set(glob.glob(f"{tmp_path}/latprune-pass-*"))
    assert len(spilled) == 1 and sorted(os.listdir(next(iter(spilled)))) == ["model.onnx", "owner.pid"]
    gc.disable()  # dropped, the pass goes at once: no garbage collection needed
    try:
        del once
        assert not any(os.path.exists(d) for d in spilled)
    finally:
        gc.enable()


def test_exports_spilled_by_a_killed_process_are_swept(tmp_path: Path) -> None:
    """A process killed mid-measurement leaves its spilled exports behind; the next spill removes
    them, and leaves those of processes still running."""
    import subprocess
    import sys

    from latprune.latency_lut.profile import SPILL_OWNER, SPILL_PREFIX, sweep_spills

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dirs = {who: tmp_path / f"{SPILL_PREFIX}{who}" for who in ("dead", "live", "unowned")}
    for who, pid in (("dead", gone.stdout.strip()), ("live", str(os.getpid())), ("unowned", None)):
        dirs[who].mkdir()
        (dirs[who] / "model.onnx").write_bytes(b"\0" * 16)
        if pid is not None:
            (dirs[who] / SPILL_OWNER).write_text(pid)
    assert sweep_spills(str(tmp_path)) == [str(dirs["dead"])]
    assert not dirs["dead"].exists() and dirs["live"].exists() and dirs["unowned"].exists()


def test_a_cold_unit_is_timed_without_the_flush_before_it() -> None:
    """The flush writes and reads twice the last-level cache before each run (milliseconds); the unit's
    time is its own kernels', its weights streamed from memory: no faster than warm, far below the flush."""
    backend = get_backend("ort-cpu", 1)
    key = LayerKey("conv", 256, 256, (3, 3), padding=(1, 1), in_hw=(4, 4))  # 2.25 MiB of weights
    warm, cold = backend.measure_unit(key).median_ms, backend.measure_unit(replace(key, cold=True)).median_ms
    assert 0.9 * warm <= cold < 2.0  # ms; the flush alone takes several


def test_heavy_units_of_a_model_that_overflows_the_cache_are_keyed_and_timed_cold(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Inside a model whose weights overflow the last-level cache, each layer's weights stream from
    memory on every run; timed alone, a unit keeps them cached. The heavy units are keyed ``cold``,
    timed after a flush of the caches, and the prune predicts with those keys."""
    import latprune
    from latprune.latency_lut.backends import ort_cpu

    backend = get_backend("ort-cpu", 1)
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    assert backend.cold_units(graph) == frozenset()  # a few kilobytes of weights: cached, timed warm
    monkeypatch.setattr(ort_cpu, "last_level_cache_bytes", lambda: 16 * 1024)  # as if the cache held 16 KiB
    monkeypatch.setattr(ort_cpu, "COLD_UNIT_SHARE", 16)  # and units of a 16th of it, 1 KiB, or more timed cold
    cold = backend.cold_units(graph)
    heavy = {u.name for u in graph.units if 4 * u.base.weights >= 1024}
    assert cold == heavy and cold and len(cold) < len(graph.units)
    key = next(u.base for u in graph.units if u.name in cold)
    flushed = ort_cpu.flushed(ort_cpu.unit_onnx(key, aux_inputs=True), 16 * 1024)
    assert b"aux_write" in flushed and b"aux_fresh" in flushed  # the flush's nodes, left out of the unit's time
    assert LayerKey.parse(replace(key, cold=True).text).cold and "cold" not in key.text  # old keys read as before

    lut = latprune.profile(tiny_resnet(), TINY_INPUT, backend="ort-cpu", threads=1, path=tmp_path / "c.lut",
                           levels=1, passes=1, calibration_samples=2, progress=False)
    graph.mark_cold(cold)
    with Lut.open(lut.path) as store:
        keys = [k for k, _ in store.items()]
        assert any(k.cold for k in keys) and any(not k.cold for k in keys)
        assert all(store.get(k).median_ms > 0 for k in keys if k.cold)
        assert store.calibrations()[graph.signature()]["cold_units"] == sorted(cold)
        calibration, grid = load_calibration(store, graph.signature())  # what a prune of the model finds
        predictor = Predictor(store, graph, calibration)
        assert not predictor.missing(grid_keys(graph, grid)) and predictor.predict(graph.full_widths()) > 0
    # Lighter units too: their cold keys are measured, and the calibration is fitted again
    # (the cold keys are part of the signature it is stored under).
    monkeypatch.setattr(ort_cpu, "COLD_UNIT_SHARE", 256)
    again = latprune.profile(tiny_resnet(), TINY_INPUT, backend="ort-cpu", threads=1, path=tmp_path / "c.lut",
                             levels=1, passes=1, calibration_samples=2, progress=False)
    everything = backend.cold_units(graph)
    assert everything > cold and again.report.measured > 0
    with Lut.open(lut.path) as store:
        assert store.calibrations()[graph.mark_cold(everything).signature()]["cold_units"] == sorted(everything)
