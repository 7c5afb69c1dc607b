"""Shards, merge, fidelity and plots of LUTs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from latprune.cli import main
from latprune.errors import FingerprintMismatch, LutError
from latprune.graph.channels import ChannelGraph, Grid
from latprune.graph.units import LayerKey
from latprune.latency_lut.backends import get_backend
from latprune.latency_lut.backends.fake import FakeBackend
from latprune.latency_lut.calibrate import random_configs
from latprune.latency_lut.fidelity import (
    ErrorStats,
    fidelity,
    refit_predictions,
    spearman,
)
from latprune.latency_lut.profile import build_lut, grid_keys
from latprune.latency_lut.store import Lut, merge_luts
from latprune.latency_lut.timing import Latency
from latprune.report import fidelity_text
from tests.conftest import TINY_INPUT, tiny_resnet

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_shards_cover_every_key_once_and_merge_to_the_whole(tmp_path: Path) -> None:
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    backend = get_backend("fake", threads=1)
    shards = []
    for i in (1, 2, 3):
        path = tmp_path / f"s{i}.lut"
        build_lut(graph, path, backend, levels=4, progress=False, passes=1, shard=(i, 3))
        shards.append(path)
    sets = [{k.text for k, _ in Lut.open(p).items()} for p in shards]
    assert sum(len(s) for s in sets) == len(set.union(*sets)) == len(grid_keys(graph, Grid(4)))
    summary = merge_luts(tmp_path / "all.lut", shards)
    assert summary["entries"] == len(grid_keys(graph, Grid(4)))
    # profiling the merged LUT measures nothing more, only calibrates
    report = build_lut(graph, tmp_path / "all.lut", backend, levels=4, progress=False, passes=1)
    assert report.measured == 0 and report.calibration["scale"] == pytest.approx(1.1)


def test_merge_keeps_the_faster_and_refuses_other_devices(tmp_path: Path) -> None:
    key = LayerKey("linear", 8, 4)
    fp = get_backend("fake", threads=1).fingerprint()
    for name, ms in (("a", 2.0), ("b", 1.0)):
        with Lut.create(tmp_path / f"{name}.lut", fp) as lut:
            lut.put(key, Latency(ms, ms, ms, 5))
    merge_luts(tmp_path / "ab.lut", [tmp_path / "a.lut", tmp_path / "b.lut"])
    assert Lut.open(tmp_path / "ab.lut").get(key).median_ms == 1.0
    Lut.create(tmp_path / "c.lut", get_backend("fake", threads=4).fingerprint()).close()
    with pytest.raises(FingerprintMismatch, match="threads"):
        merge_luts(tmp_path / "ac.lut", [tmp_path / "a.lut", tmp_path / "c.lut"])
    assert not (tmp_path / "ac.lut").exists()
    with pytest.raises(LutError, match="already exists"):
        merge_luts(tmp_path / "ab.lut", [tmp_path / "a.lut"])


def test_bad_shard_spec(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["profile", "default", "-o", str(tmp_path / "x.lut"), "--backend", "fake", "--shard", "4/3"]) == 2
    assert "1 <= i <= n" in capsys.readouterr().err
    assert not (tmp_path / "x.lut").exists()


def test_fidelity_of_an_exact_device_is_perfect(tmp_path: Path) -> None:
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    backend = get_backend("fake", threads=1)
    build_lut(graph, tmp_path / "f.lut", backend, levels=4, progress=False, passes=1)
    with Lut.open(tmp_path / "f.lut") as lut:
        report = fidelity(graph, lut, backend, samples=6, progress=False)
    assert report.stored.median_abs_pct == pytest.approx(0.0, abs=1e-6)
    assert report.stored.within_5_pct == report.stored.within_10_pct == 1.0
    assert report.stored.spearman == pytest.approx(1.0)
    assert report.drift == pytest.approx(1.0)
    assert len(report.points) == 6
    assert report.refit is not None and report.refit.median_abs_pct == pytest.approx(0.0, abs=1e-6)
    # every configuration measured in two passes that agree exactly: the machine's ceiling is 100%
    assert all(len(p["pass_ms"]) == 2 for p in report.points)
    assert report.repeat is not None and report.repeat.within_10_pct == 1.0
    assert report.repeat.median_abs_pct == pytest.approx(0.0, abs=1e-6)
    text = fidelity_text(report.to_dict())
    assert "stale" not in text and "measured again (pass 1 vs 2)" in text


def test_repeat_scores_two_passes_against_each_other() -> None:
    first, second = [1.0, 2.0, 3.0, 4.0], [1.04, 2.0, 3.6, 4.0]  # 4%, 0%, 20%, 0% apart
    stats = ErrorStats.repeat(first, second)
    assert stats.median_abs_pct == pytest.approx(2.0)
    assert stats.within_5_pct == stats.within_10_pct == 0.75 and stats.spearman == pytest.approx(1.0)
    assert ErrorStats.repeat(second, first) == stats  # relative to the faster of the two, either way round


def test_fidelity_tells_a_stale_calibration_from_the_units(tmp_path: Path) -> None:
    """A calibration fitted when the device ran 30% slower: the stored prediction is
    30% high, the refit (same unit sums, fitted on the run's own points) is exact."""
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    backend = get_backend("fake", threads=1)
    build_lut(graph, tmp_path / "f.lut", backend, levels=4, progress=False, passes=1)
    with Lut.open(tmp_path / "f.lut", writable=True) as lut:
        stored = lut.calibration(graph.signature())
        lut.set_calibration(graph.signature(), {**stored, "scale": stored["scale"] * 1.3,
                                                "offset_ms": stored["offset_ms"] * 1.3})
    with Lut.open(tmp_path / "f.lut") as lut:
        report = fidelity(graph, lut, backend, samples=10, progress=False)
    assert report.stored.median_abs_pct == pytest.approx(30.0, abs=1e-3)
    assert report.stored.within_10_pct == 0.0
    assert report.anchored.median_abs_pct == pytest.approx(0.0, abs=1e-6)  # the full model re-anchors a pure scale
    assert report.refit is not None and report.refit_folds == 5
    assert report.refit.median_abs_pct == pytest.approx(0.0, abs=1e-6) and report.refit.within_10_pct == 1.0
    text = fidelity_text(report.to_dict())
    assert "refit (5-fold)" in text and "calibration is stale" in text and "--recalibrate" in text
    # a pure scale is the machine's speed since the calibration: the text says so, and that
    # relative budgets are unaffected
    assert "runs 23.1% faster than when it was measured" in text and "re-anchored" in text and "0.5x" in text
    # errors that re-anchoring leaves (the units' sums fit differently): only the refit's advice
    other = report.to_dict()
    other["anchored"] = {**other["anchored"], "within_10_pct": 0.5}
    text = fidelity_text(other)
    assert "calibration is stale: fitted on this run's measurements" in text and "--recalibrate" in text
    assert "re-anchored" not in text
    # on scattered measurements that even the refit cannot fit, the scatter is the news, not the calibration
    other["spread_pct"], other["refit"] = 24.0, {**other["refit"], "within_10_pct": 0.5}
    other["stored"] = {**other["stored"], "within_10_pct": 0.44}
    text = fidelity_text(other)
    assert "the measurements themselves scatter" in text and "stale" not in text
    other["refit"]["within_10_pct"] = 0.92  # a refit that fits them still says the calibration is stale
    assert "stale" in fidelity_text(other)


class DriftingBackend(FakeBackend):
    """The fake device slowing down by 2% with every other whole-model measurement:
    a machine whose speed wanders between the profile and each measurement."""

    def __init__(self, threads: int = 1) -> None:
        super().__init__(threads)
        self.calls = 0

    def measure_model(self, model: nn.Module, input_shape: tuple[int, ...]) -> Latency:
        lat = super().measure_model(model, input_shape)
        factor = 1 + 0.02 * (self.calls // 2)
        self.calls += 1
        ms = lat.median_ms * factor
        return Latency(ms, ms, ms, 1)


def test_fidelity_beside_the_full_model_cancels_the_drift(tmp_path: Path) -> None:
    """Each configuration measured right after the full model, in the same state of
    the machine: re-anchored on that pair the prediction is exact while the speed
    drifts; re-anchored once at the start (``anchored``) it is not."""
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    build_lut(graph, tmp_path / "f.lut", get_backend("fake", threads=1), levels=4, progress=False, passes=1)
    backend = DriftingBackend()
    with Lut.open(tmp_path / "f.lut") as lut:
        report = fidelity(graph, lut, backend, samples=8, progress=False, beside=True)
        plain = fidelity(graph, lut, DriftingBackend(), samples=8, progress=False)
    assert report.beside is not None and plain.beside is None
    assert report.beside.median_abs_pct == pytest.approx(0.0, abs=1e-6) and report.beside.within_5_pct == 1.0
    assert report.anchored.median_abs_pct > 5.0
    # the drift also parts each configuration's two passes: the repeat score sees it
    assert plain.repeat is not None and plain.repeat.median_abs_pct > 5.0
    assert all(len(p["pass_ms"]) >= 2 for p in plain.points)
    assert all(p["full_beside_ms"] > 0 and "beside_ms" not in q for p, q in zip(report.points, plain.points))
    # one full-model measurement before each configuration measurement
    assert backend.calls % 2 == 0 and backend.calls >= 2 * 2 * (8 + 1)
    assert "beside (full model measured before each)" in fidelity_text(report.to_dict())


class NoisyBackend(FakeBackend):
    """The fake device on a noisy machine: each configuration comes out 0-60% slow, by a
    factor fixed per configuration (every pass agrees), and its runs scatter by ±20%."""

    def measure_model(self, model: nn.Module, input_shape: tuple[int, ...]) -> Latency:
        ms = super().measure_model(model, input_shape).median_ms
        ms *= 1 + 0.6 * (round(ms * 1e5) % 5) / 4
        return Latency(ms, 0.8 * ms, 1.2 * ms, 50)


def test_a_calibration_measured_on_a_noisy_machine_is_flagged(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A calibration whose points scatter off its fit warns in the profile and in `lut show`
    (and names the re-profile that measures it again); a quiet one says nothing."""
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    report = build_lut(graph, tmp_path / "n.lut", NoisyBackend(), levels=4, progress=False, passes=1,
                       model_name="tiny")
    assert report.calibration["residual_pct"] > 5.0
    assert len(report.warnings) == 1
    assert "--recalibrate" in report.warnings[0] and f"-o {tmp_path / 'n.lut'}" in report.warnings[0]
    assert "off its fit" in report.warnings[0] and "spanning 40.0% of its median" in report.warnings[0]
    with Lut.open(tmp_path / "n.lut") as lut:
        stored = lut.calibration(graph.signature())
    assert stored["spread_pct"] == pytest.approx(40.0) and all("p90_ms" in p for p in stored["points"])
    # profiling again reuses the calibration and still warns
    assert build_lut(graph, tmp_path / "n.lut", NoisyBackend(), levels=4, progress=False, passes=1).warnings
    assert main(["lut", "show", str(tmp_path / "n.lut")]) == 0
    assert "measured on a noisy machine" in capsys.readouterr().out

    quiet = build_lut(graph, tmp_path / "q.lut", FakeBackend(), levels=4, progress=False, passes=1)
    assert quiet.warnings == [] and quiet.calibration["spread_pct"] == 0.0
    assert main(["lut", "show", str(tmp_path / "q.lut")]) == 0
    assert "noisy" not in capsys.readouterr().out


def test_fidelity_reports_the_scatter_of_its_measurements(tmp_path: Path) -> None:
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    build_lut(graph, tmp_path / "f.lut", FakeBackend(), levels=4, progress=False, passes=1)
    with Lut.open(tmp_path / "f.lut") as lut:
        noisy = fidelity(graph, lut, NoisyBackend(), samples=6, progress=False)
        quiet = fidelity(graph, lut, FakeBackend(), samples=6, progress=False)
    assert noisy.spread_pct == pytest.approx(40.0) and quiet.spread_pct == 0.0
    assert "the measurements themselves scatter" in fidelity_text(noisy.to_dict())
    on_one, on_two = noisy.to_dict(), noisy.to_dict()
    on_one["fingerprint"] = {**on_one["fingerprint"], "threads": 1}
    on_two["fingerprint"] = {**on_two["fingerprint"], "threads": 2}
    assert "--threads 1" not in fidelity_text(on_one)  # measured on one thread already
    assert "profile and measure with --threads 1" in fidelity_text(on_two)
    assert "scatter" not in fidelity_text(quiet.to_dict())


def test_noise_thresholds_leave_a_shard_and_missing_percentiles_alone() -> None:
    from latprune.latency_lut.calibrate import noise_warning
    from latprune.latency_lut.timing import median_spread_pct, points_spread_pct

    def points(n: int, spread: float | None) -> list[dict[str, float]]:  # spread None: stored without percentiles
        pct = {} if spread is None else {"p10_ms": 1.0 - spread / 200, "p90_ms": 1.0 + spread / 200}
        return [{"raw_ms": 1.0, "measured_ms": 1.0, **pct} for _ in range(n)]

    assert noise_warning({"residual_pct": float("nan")}, "p") is None  # a shard's placeholder
    assert noise_warning({"residual_pct": 4.9, "points": points(12, 13.4)}, "p") is None
    assert noise_warning({"residual_pct": 2.0, "points": points(12, 13.9)}, "p") is not None  # session 26: 38% within ±10%
    text = noise_warning({"residual_pct": 7.0, "points": points(12, None)}, "latprune profile m -o x.lut")
    assert text is not None and "12 whole-model measurements lie 7.0%" in text and "spanning" not in text
    assert "`latprune profile m -o x.lut --recalibrate`" in text
    scattered = noise_warning({"residual_pct": 2.0, "points": points(12, 20.0)}, "p")  # fits, but every point scatters
    assert scattered is not None and "measurements scatter, each one's p10-p90 spanning 20.0%" in scattered
    assert "off its fit" not in scattered
    assert np.isnan(median_spread_pct([])) and np.isnan(points_spread_pct([{"raw_ms": 1.0, "measured_ms": 1.0}]))


def test_refit_predicts_each_point_without_it() -> None:
    raw = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    line = [0.9 * r + 0.1 for r in raw]
    assert refit_predictions(raw, line, [0] * 6) == pytest.approx(line)
    # an outlier is predicted by the line of the others, not pulled onto its own value
    bent = line[:3] + [line[3] * 1.5] + line[4:]
    out = refit_predictions(raw, bent, [0] * 6, folds=6)
    assert out[3] == pytest.approx(line[3], rel=1e-6)
    with pytest.raises(LutError, match="at least 4"):
        refit_predictions(raw[:3], line[:3], [0] * 3)


def test_fidelity_samples_block_removals_and_predicts_them(tmp_path: Path) -> None:
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    backend = get_backend("fake", threads=1)
    build_lut(graph, tmp_path / "f.lut", backend, levels=4, progress=False, passes=1)
    with Lut.open(tmp_path / "f.lut") as lut:
        report = fidelity(graph, lut, backend, samples=16, progress=False, blocks=True)
    removed = [p for p in report.points if p["removed_blocks"]]
    assert removed, "low keep levels draw a block's removal"
    # the exact device agrees with the LUT on configurations without the removed blocks' units
    assert all(p["predicted_ms"] == pytest.approx(p["measured_ms"], rel=1e-6) for p in removed)


def test_fidelity_needs_a_calibrated_lut(tmp_path: Path) -> None:
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    backend = get_backend("fake", threads=1)
    with Lut.create(tmp_path / "e.lut", backend.fingerprint()) as lut:
        with pytest.raises(LutError, match="no calibration"):
            fidelity(graph, lut, backend, samples=4, progress=False)


def test_error_stats_and_rank_correlation() -> None:
    stats = ErrorStats.of([1.0, 2.19, 2.9, 4.5], [1.0, 2.0, 3.0, 4.0])
    assert stats.median_abs_pct == pytest.approx(np.median([0, 9.5, 100 / 30, 12.5]))
    assert stats.within_5_pct == 0.5 and stats.within_10_pct == 0.75
    assert spearman(np.array([1, 2, 3]), np.array([3, 2, 1])) == pytest.approx(-1.0)
    assert spearman(np.array([1, 2, 2, 4]), np.array([1, 2, 3, 4])) == pytest.approx(0.9487, abs=1e-3)


def test_random_configs_span_the_range() -> None:
    options = {0: [4, 8, 12, 16, 20, 24, 28, 32], 1: [8, 16, 24, 32, 40, 48, 56, 64]}
    configs = random_configs(options, 40, seed=3)
    assert all(c[g] in options[g] for c in configs for g in options)
    assert min(c[0] for c in configs) <= 8 and max(c[0] for c in configs) >= 28
    assert configs == random_configs(options, 40, seed=3)


def test_calibration_configs_remove_blocks_at_several_shares() -> None:
    from latprune.latency_lut.calibrate import (
        MIN_REMOVAL_POINTS,
        calibration_configs,
        removal_configs,
    )

    # groups 0-5 are the inner groups of removable blocks (0 first), 6 and 7 are not removable
    options = {g: [0, 8, 16, 24, 32] for g in range(6)} | {6: [16, 32, 48, 64], 7: [8, 16]}
    configs = calibration_configs(options, 12)
    assert len(configs) == 12 and all(c[g] in options[g] for c in configs for g in options)
    assert configs[0] == {g: opts[-1] for g, opts in options.items()}  # full width first
    removing = configs[4:4 + MIN_REMOVAL_POINTS]
    counts = [sum(c[g] == 0 for g in range(6)) for c in removing]
    assert counts == sorted(counts) and len(set(counts)) == MIN_REMOVAL_POINTS and min(counts) >= 1
    # the kept groups' level does not simply follow the number of removed blocks
    assert len({c[6] for c in removing}) == MIN_REMOVAL_POINTS and removing[-1][6] != min(c[6] for c in removing)
    assert all(c[6] > 0 and c[7] > 0 for c in configs)  # a group that cannot be removed never is
    assert removal_configs({6: [16, 32], 7: [8, 16]}, 3) == []  # nothing removable: nothing to add
    old_rule = calibration_configs(options, 12, removals=0)[4:4 + MIN_REMOVAL_POINTS]  # random draws instead
    assert old_rule != removing and sum(c[g] == 0 for c in old_rule for g in range(6)) < sum(counts)
    assert configs == calibration_configs(options, 12)  # seeded


def test_cli_fidelity_and_plots(capsys: pytest.CaptureFixture[str], model_file: str, fake_lut: str,
                                tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    fid_png, lut_png = tmp_path / "fid.png", tmp_path / "lut.png"
    assert main(["lut", "fidelity", model_file, "--input", "1x1x28x28", "--lut", fake_lut, "--samples", "5",
                 "--backend", "fake", "--threads", "1", "--plot", str(fid_png), "--beside", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["samples"] == 5 and r["stored"]["median_abs_pct"] < 1e-6 and r["beside"]["median_abs_pct"] < 1e-6
    assert main(["lut", "show", fake_lut, "--plot", str(lut_png), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plot"] == str(lut_png)
    for png in (fid_png, lut_png):
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
