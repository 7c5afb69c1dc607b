"""benchmarks/lut_fidelity.py --zoo: a row per model@size with its scores, resumed, and every row renders."""

from __future__ import annotations

import argparse
import json

import pytest

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def fid():
    return load_benchmark("lut_fidelity")


def zoo_args(**kw) -> argparse.Namespace:
    base = dict(backend="fake", threads=1, levels=2, passes=1, samples=4, recalibrate=False, beside=False,
                memory_gib=8.0, timeout_s=300.0, force=False, batch=1)
    return argparse.Namespace(**{**base, **kw})


def test_zoo_scores_a_row_per_model_at_size_and_resumes(fid, tmp_path, capsys):
    results_path = tmp_path / "results.json"
    paths = (results_path, tmp_path / "luts", tmp_path / "work")
    results = fid.run_zoo(["squeezenet1_1"], [32], zoo_args(), *paths)

    assert list(results) == ["squeezenet1_1@32"]
    row = results["squeezenet1_1@32"]
    assert row["failed"] is None, row["failed"]
    assert row["input"] == [1, 3, 32, 32] and row["backend"] == "fake" and row["threads"] == 1
    assert set(row["steps_s"]) == {"build", "profile", "fidelity"}
    assert row["units"] > 0 and row["lut_keys"] > 0 and len(row["points"]) == 4
    for score in ("stored", "anchored", "repeat"):
        assert set(row[score]) == {"median_abs_pct", "within_5_pct", "within_10_pct", "spearman"}
        assert 0.0 <= row[score]["within_5_pct"] <= row[score]["within_10_pct"] <= 1.0
    assert row["repeat"]["median_abs_pct"] == 0.0  # the fake backend measures the same twice
    assert (tmp_path / "luts" / "squeezenet1_1-32-fake-1t-l2.lut").is_file()
    assert json.loads(results_path.read_text()) == results

    def no_child(*_a, **_k):
        raise AssertionError("a row already in the result file ran again")

    capsys.readouterr()
    fid.zoo_row, zoo_row = no_child, fid.zoo_row
    try:
        assert fid.run_zoo(["squeezenet1_1"], [32], zoo_args(), *paths) == results
    finally:
        fid.zoo_row = zoo_row
    assert "squeezenet1_1@32: already in results.json, skipped" in capsys.readouterr().out


def test_a_child_past_its_time_limit_is_a_failed_row(fid, tmp_path):
    paths = (tmp_path / "results.json", tmp_path / "luts", tmp_path / "work")
    row = fid.run_zoo(["resnet18"], [64], zoo_args(timeout_s=1.0), *paths)["resnet18@64"]
    assert row["model"] == "resnet18" and row["size"] == 64 and row["failed"]["step"] in ("start", "build", "profile")
    assert "killed after the 1 s limit" in row["failed"]["error"]


def test_table_has_a_line_per_row_failed_or_not(fid):
    def stats(median: float, w5: float, w10: float) -> dict[str, float]:
        return {"median_abs_pct": median, "within_5_pct": w5, "within_10_pct": w10, "spearman": 0.99}

    ok = {"input": [1, 3, 96, 96], "units": 21, "profile_seconds": 120.0, "fidelity_seconds": 30.0,
          "stored": stats(2.1, 0.9, 1.0), "refit": stats(1.5, 0.95, 1.0), "repeat": stats(0.4, 1.0, 1.0),
          "spread_pct": 1.2, "failed": None}
    noisy = {**ok, "stored": stats(6.0, 0.4, 0.7), "repeat": stats(5.0, 0.5, 0.8)}
    missed = {**ok, "stored": stats(6.0, 0.4, 0.7)}
    failed = {"input": [1, 3, 96, 96], "failed": {"step": "profile", "error": "OrtError: groups | channels"}}
    lines = fid.table({"resnet18@96": ok, "vgg11@96": noisy, "alexnet@96": missed,
                       "regnet_x_400mf@96": failed}).splitlines()
    assert len(lines) == 6
    assert lines[2].startswith("| resnet18@96 | 96×96 | 21 | 120 / 30 | 2.10% | 90% | 100% | 0.990 |")
    assert lines[2].endswith("| met |  |")
    assert "| missed; repeat misses too |" in lines[3] and "| missed |" in lines[4]
    assert lines[5].endswith("| profile: OrtError: groups \\| channels |")


def test_the_latest_table_takes_each_row_from_the_last_run_that_scored_it(fid, tmp_path):
    import json

    def row(median: float, commit: str) -> dict:
        stats = {"median_abs_pct": median, "within_5_pct": 0.5, "within_10_pct": 0.9, "spearman": 0.99}
        return {"input": [1, 3, 96, 96], "stored": stats, "anchored": stats, "repeat": stats, "spread_pct": 9.0,
                "versions": {"latprune": commit}, "failed": None}

    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"resnet18@96": row(4.0, "aaa"), "vgg11@96": row(5.0, "aaa")}))
    second.write_text(json.dumps({"resnet18@96": row(2.0, "bbb"), "vgg11@96": {"input": [1, 3, 96, 96],
                                  "failed": {"step": "profile", "error": "killed"}}}))
    rows = fid.latest_rows([first, second, tmp_path / "missing.json"])
    assert rows["resnet18@96"]["versions"]["latprune"] == "bbb" and rows["vgg11@96"]["versions"]["latprune"] == "aaa"
    lines = fid.latest_table(rows).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| resnet18@96 | 96×96 | `bbb` | 2.00% / 90% / 0.990 | 2.00% / 90% |")
    assert lines[3].endswith("| 9.0% | missed; repeat misses too |")


def test_a_zoo_row_at_a_batch_keeps_its_own_lut(fid, tmp_path):
    paths = (tmp_path / "results.json", tmp_path / "luts", tmp_path / "work")
    row = fid.run_zoo(["squeezenet1_1"], [32], zoo_args(batch=2, samples=3), *paths)["squeezenet1_1@32"]
    assert row["failed"] is None, row["failed"]
    assert row["input"] == [2, 3, 32, 32]
    assert (tmp_path / "luts" / "squeezenet1_1-32-b2-fake-1t-l2.lut").is_file()
    assert fid.zoo_results_path(zoo_args(batch=2, tag=None)).name == "lut_fidelity_zoo_fake_1t_b2.json"


def test_calibration_terms_fit_each_form_leaving_one_configuration_out():
    """calibration_terms.py on a row whose measurements are exactly linear in the unit sum: the
    linear form predicts every configuration left out of its fit; the squeeze-and-excitation
    term joins on MobileNetV3, and the weights follow the widths."""
    import numpy as np

    from latprune.graph.channels import ChannelGraph

    terms = load_benchmark("calibration_terms")
    spec, _, _ = terms.fitted_model("mobilenet_v3_small", 32)
    graph = ChannelGraph.build(spec.model, spec.input_shape)
    rng = np.random.default_rng(0)
    points = []
    for raw in (0.5, 0.8, 1.0, 1.3, 1.7, 2.0):
        widths = [int(rng.integers(1, g.size + 1)) for g in graph.groups]
        points.append({"widths": widths, "raw_ms": raw, "measured_ms": 1.1 * raw + 0.02})
    row = {"model": "mobilenet_v3_small", "size": 32, "input": [1, 3, 32, 32], "points": points,
           "repeat": {"median_abs_pct": 0.0, "within_5_pct": 1.0, "within_10_pct": 1.0, "spearman": 1.0},
           "spread_pct": 0.0}
    from latprune.runtime.fingerprint import last_level_cache_bytes

    scored = terms.score_row(row, last_level_cache_bytes())
    assert set(scored["forms"]) == {"linear", "weights", "weights_over_cache", "excitation"}  # no LUT on disk
    assert scored["forms"]["linear"]["median_abs_pct"] < 1e-6 and scored["forms"]["linear"]["within_5_pct"] == 1.0
    assert 0 < scored["weights_mib"][0] < scored["weights_mib"][1]
