"""Adaptive sampling of latency staircases (``profile --refine``), on the fake backend's exact staircase."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latprune.cli import main
from latprune.graph.channels import ChannelGraph, Grid
from latprune.graph.units import LayerKey
from latprune.latency_lut.backends import fake
from latprune.latency_lut.backends.fake import FakeBackend
from latprune.latency_lut.predict import Predictor
from latprune.latency_lut.profile import build_lut, grid_keys, load_calibration
from latprune.latency_lut.staircase import _midpoint, group_keys
from latprune.latency_lut.store import Lut
from tests.conftest import TINY_INPUT, tiny_resnet

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def steps_of_8(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels that process channels in blocks of 8: 9..16 channels cost what 16 cost."""
    monkeypatch.setattr(fake, "STEP", 8)


def _wide_groups(graph: ChannelGraph) -> list[str]:
    return [g.root for g in graph.groups if g.size == 16]


def test_refinement_finds_the_step_a_coarse_grid_straddles(tmp_path: Path, steps_of_8: None) -> None:
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)  # groups of 8 and 16 channels
    path = tmp_path / "r.lut"
    # 2 levels: a 16-channel group gets widths 8 and 16, which straddle the step at 8 -> 9
    report = build_lut(graph, path, FakeBackend(), levels=2, progress=False, passes=1, refine=True)
    wide = _wide_groups(graph)
    assert wide
    for root in wide:
        # bisection: 12 and 10 cost what 16 costs (off the 8-16 line), 9 as well; then nothing is left to split
        assert report.staircases[root] == {"added": [9, 10, 12], "steps": [8]}
    for g in graph.groups:
        if g.size == 8:  # 4 and 8 channels cost the same (one block of 8): a flat segment, nothing added
            assert report.staircases[g.root]["added"] == []
    with Lut.open(path) as lut:
        cal, grid = load_calibration(lut, graph.signature())
        stored = lut.calibration(graph.signature())
        assert grid.extra and all(dict(grid.extra)[r] == (9, 10, 12) for r in wide)
        assert stored["staircases"][wide[0]]["steps"] == [8]
        # every key the pruner may now ask for was measured: the cross products of the added widths too
        predictor = Predictor(lut, graph, cal)
        assert predictor.missing(grid_keys(graph, grid)) == []
        assert report.keys == len(grid_keys(graph, grid)) > len(grid_keys(graph, Grid(2)))
        # the knapsack sees the added widths, and none of them is worth choosing: each costs what 16 costs
        options = graph.options(grid)
        g16 = next(g for g in graph.groups if g.size == 16)
        assert options[g16.id] == [8, 9, 10, 12, 16]
        ms = [predictor.predict({**graph.full_widths(), g16.id: w}) for w in options[g16.id]]
        assert ms[1] == ms[2] == ms[3] == pytest.approx(ms[4]) and ms[0] < ms[4]


def test_a_linear_segment_adds_nothing(tmp_path: Path) -> None:
    """The fake's default blocks of 4: a 16-channel group's 8-16 segment is a straight line through its
    midpoint 12 (two whole blocks more), while an 8-channel group's 4-8 segment hides the step 4 -> 5."""
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    report = build_lut(graph, tmp_path / "l.lut", FakeBackend(), levels=2, progress=False, passes=1, refine=True)
    for g in graph.groups:
        expected = {"added": [], "steps": []} if g.size == 16 else {"added": [5, 6], "steps": [4]}
        assert report.staircases[g.root] == expected


def test_a_refined_lut_stays_refined_and_a_killed_refinement_resumes(tmp_path: Path, steps_of_8: None) -> None:
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    path = tmp_path / "k.lut"
    build_lut(graph, path, FakeBackend(), levels=2, progress=False, passes=1)  # the coarse grid first

    class DiesAfter(FakeBackend):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.n, self.calls = n, 0

        def measure_unit(self, key: LayerKey):  # type: ignore[no-untyped-def]
            if self.calls >= self.n:
                raise KeyboardInterrupt
            self.calls += 1
            self.seen.add(key.text)
            return super().measure_unit(key)

        seen: set[str]

    DiesAfter.seen = set()
    with pytest.raises(KeyboardInterrupt):
        build_lut(graph, path, DiesAfter(3), levels=2, progress=False, passes=1, refine=True)
    with Lut.open(path) as lut:
        before = {k.text for k, _ in lut.items()}
    resumed = DiesAfter(10**9)
    resumed.seen = set()
    report = build_lut(graph, path, resumed, levels=2, progress=False, passes=1, refine=True)
    assert report.measured == resumed.calls
    # what the killed run measured is not measured again (only the confirmation re-times probes, on purpose)
    assert len(resumed.seen - before) == report.keys - len(before)
    # profiling again without --refine keeps the refined grid and measures nothing
    again = DiesAfter(0)
    plain = build_lut(graph, path, again, levels=2, progress=False, passes=1)
    assert again.calls == 0 and plain.keys == report.keys
    assert plain.staircases == report.staircases


def test_a_step_faked_by_a_slow_spell_is_not_confirmed(tmp_path: Path) -> None:
    """The first timing of every unit at width 12 comes out 60% slow (a slow spell during the probe):
    12 looks off the 8-16 line, but the confirmation at another moment times it again and drops it."""
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)

    class SlowSpell(FakeBackend):
        timed: set[str] = set()

        def measure_unit(self, key: LayerKey):  # type: ignore[no-untyped-def]
            lat = super().measure_unit(key)
            if 12 in (key.cin, key.cout) and key.text not in self.timed:
                self.timed.add(key.text)
                return type(lat)(lat.median_ms * 1.6, lat.p10_ms * 1.6, lat.p90_ms * 1.6, lat.repeats)
            return lat

    report = build_lut(graph, tmp_path / "s.lut", SlowSpell(), levels=2, progress=False, passes=1, refine=True)
    assert SlowSpell.timed  # the spell did hit the probes
    for g in graph.groups:
        if g.size == 16:
            assert report.staircases[g.root] == {"added": [], "steps": []}


def test_a_refinement_that_adds_nothing_is_still_stored(tmp_path: Path) -> None:
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    path = tmp_path / "n.lut"
    build_lut(graph, path, FakeBackend(), levels=1, progress=False, passes=1)  # calibrated on the same grid first
    report = build_lut(graph, path, FakeBackend(), levels=1, progress=False, passes=1, refine=True)
    assert report.staircases and all(s == {"added": [], "steps": []} for s in report.staircases.values())
    with Lut.open(path) as lut:
        assert set(lut.calibration(graph.signature())["staircases"]) == set(report.staircases)


def test_refine_refuses_a_shard(tmp_path: Path) -> None:
    from latprune.errors import LutError

    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    with pytest.raises(LutError, match="merge them"):
        build_lut(graph, tmp_path / "s.lut", FakeBackend(), levels=2, progress=False, shard=(1, 2), refine=True)
    assert not (tmp_path / "s.lut").exists()  # refused before anything was created


def test_midpoints_stay_on_the_alignment() -> None:
    assert _midpoint(64, 128, 8) == 96
    assert _midpoint(16, 32, 8) == 24
    assert _midpoint(16, 24, 8) is None  # neighbours one block apart: nothing between them
    assert _midpoint(8, 9, 1) is None and _midpoint(8, 10, 1) == 9


def test_group_keys_are_the_units_the_group_sets() -> None:
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    for g in graph.groups:
        keys = group_keys(graph, g.id, 4)
        assert keys and all(4 in (k.cin, k.cout) for k in keys)


def test_cli_profile_refine_show_and_plot(capsys: pytest.CaptureFixture[str], model_file: str, tmp_path: Path,
                                          steps_of_8: None) -> None:
    pytest.importorskip("matplotlib")
    lut = tmp_path / "cli.lut"
    args = ["profile", model_file, "--input", "1x1x28x28", "-o", str(lut), "--levels", "2", "--passes", "1",
            "--calibration-samples", "4", "--backend", "fake", "--threads", "1", "--refine"]
    assert main(args) == 0
    assert "staircases:" in capsys.readouterr().out
    png = tmp_path / "units.png"
    assert main(["lut", "show", str(lut), "--plot", str(png), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["plot"] == str(png) and png.read_bytes().startswith(PNG_MAGIC)
    stairs = Path(shown["staircase_plot"])
    assert stairs.name == "units-staircases.png" and stairs.read_bytes().startswith(PNG_MAGIC)
    (sig, groups), = shown["staircases"].items()
    assert any(s["steps"] for s in groups.values())
    assert main(["lut", "show", str(lut)]) == 0
    assert "cheap side of a step at 8" in capsys.readouterr().out
    # the refined grid reaches the pruner: a prune on this LUT measures nothing missing
    out = tmp_path / "run"
    assert main(["prune", model_file, "--input", "1x1x28x28", "--lut", str(lut), "--budget", "0.8x", "-o", str(out),
                 "--method", "halp", "--importance", "l1", "--epochs", "0", "--backend", "fake", "--threads", "1",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["budget_met"] is True
