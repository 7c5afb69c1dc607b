"""benchmarks/lowrank_units.py: a shape's row holds the original, each rank's pair as keys and as one
model, and what they imply; a shape already in the file is skipped unless --force; the table renders."""

from __future__ import annotations

import json
import math

import pytest

from latprune.graph.lowrank import pair_keys
from tests.conftest import load_benchmark

SHAPE = "conv3x3_16_28"


@pytest.fixture()
def bench(tmp_path, monkeypatch):
    module = load_benchmark("lowrank_units")
    monkeypatch.setattr(module, "RESULTS_DIR", tmp_path)
    return module


def read(bench) -> dict:
    return json.loads(bench.results_path("fake", 1, None).read_text())


@pytest.mark.parametrize("name", ["conv3x3_16_28", "conv3x3_16to32_s2_28", "conv1x1_96to576_14",
                                  "linear_3072to768_197t"])
def test_rank_grid_is_ascending_within_the_max_rank_and_ends_at_break_even(bench, name):
    key = bench.SHAPES[name].key
    grid = bench.rank_grid(key)
    ranks = [r for r, _ in grid]
    top = bench.max_rank(key)
    assert ranks == sorted(set(ranks)) and 1 <= ranks[0] and ranks[-1] < top
    assert grid[-1][1].endswith("break-even") and grid[0][1].startswith("1/16")
    for rank in ranks:  # every rank is a pair the LUT can key
        first, second = pair_keys(key, rank)
        assert first.macs + second.macs < key.macs


def test_every_shape_has_its_networks_bn_and_activation(bench):
    for name, shape in bench.SHAPES.items():
        key = shape.key
        assert key.bn == (key.op == "conv") and key.bias == (key.op == "linear"), name
        assert key.act in ("relu", "relu6", "gelu", ""), name


def test_row_fields_on_the_fake_backend(bench):
    bench.main(["--backend", "fake", "--shapes", SHAPE])
    results = read(bench)
    assert results["backend"] == "fake" and results["fingerprint"]["device"] == "fake"
    row = results["shapes"][SHAPE]
    key = bench.SHAPES[SHAPE].key
    assert row["key"] == key.text and row["max_rank"] == 16 and row["break_even_rank"] == pytest.approx(14.4)
    assert [r["rank"] for r in row["ranks"]] == [1, 2, 4, 6, 8, 12, 14]
    original = row["original"]["median_ms"]
    for r in row["ranks"]:
        first, second = pair_keys(key, r["rank"])
        assert (r["first_key"], r["second_key"]) == (first.text, second.text)
        assert r["sum_ms"] == pytest.approx(r["first"]["median_ms"] + r["second"]["median_ms"], abs=1e-5)
        assert r["speedup"] == pytest.approx(original / r["sum_ms"], rel=1e-3)
        assert r["measured_ratio"] == pytest.approx(r["sum_ms"] / original, rel=1e-3)
        assert r["macs_ratio"] == pytest.approx((first.macs + second.macs) / key.macs, abs=1e-4)
        assert r["model_speedup"] == pytest.approx(row["original_model"]["median_ms"] / r["model"]["median_ms"],
                                                   rel=1e-3)
        assert r["model_kernel_ms"] is None  # the fake backend has no profiler
    faster = [r["rank"] for r in row["ranks"] if r["speedup"] > 1]
    assert row["largest_faster_rank"] == max(faster)  # the fake backend's pair wins at rank 1
    assert not math.isnan(row["wall_s"])


def test_a_shape_in_the_file_is_skipped_unless_forced(bench, monkeypatch, capsys):
    bench.main(["--backend", "fake", "--shapes", SHAPE])
    measured = []
    real = bench.measure_shape
    monkeypatch.setattr(bench, "measure_shape",
                        lambda backend, shape, scheme: measured.append(shape) or real(backend, shape, scheme))
    bench.main(["--backend", "fake", "--shapes", SHAPE])
    assert measured == [] and "skipped" in capsys.readouterr().out
    bench.main(["--backend", "fake", "--shapes", f"{SHAPE},conv3x3_64_7", "--force"])
    assert measured == [bench.SHAPES[SHAPE], bench.SHAPES["conv3x3_64_7"]]
    assert list(read(bench)["shapes"]) == [SHAPE, "conv3x3_64_7"]


def test_a_file_from_another_device_is_refused(bench):
    bench.main(["--backend", "fake", "--shapes", SHAPE])
    path = bench.results_path("fake", 1, None)
    results = read(bench)
    results["fingerprint"]["device"] = "another"
    path.write_text(json.dumps(results))
    with pytest.raises(SystemExit, match="another device.*--tag"):
        bench.main(["--backend", "fake", "--shapes", "conv3x3_64_7"])


def test_table_has_a_line_per_shape_and_per_rank(bench, capsys):
    bench.main(["--backend", "fake", "--shapes", f"{SHAPE},conv3x3_64_7"])
    capsys.readouterr()
    bench.main(["--backend", "fake", "--table"])
    out = capsys.readouterr().out
    assert "fake" in out.splitlines()[0]
    rows = [line for line in out.splitlines() if line.startswith(f"| {SHAPE} |")]
    assert len(rows) == 1 and "| 14.4 |" in rows[0]
    rank_lines = [line for line in out.splitlines() if line.startswith("| 14 | break-even |")]
    assert len(rank_lines) == 1


def test_unknown_shape_is_a_usage_error(bench, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--backend", "fake", "--shapes", "conv9x9"])
    assert exc.value.code == 2 and "unknown shapes: conv9x9" in capsys.readouterr().err


def test_the_spatial_scheme_measures_its_own_pairs_into_its_own_file(bench, capsys):
    bench.main(["--backend", "fake", "--shapes", SHAPE, "--scheme", "spatial"])
    results = json.loads(bench.results_path("fake", 1, None, "spatial").read_text())
    row = results["shapes"][SHAPE]
    key = bench.SHAPES[SHAPE].key
    assert results["scheme"] == row["scheme"] == "spatial" and row["max_rank"] == 48
    assert row["break_even_rank"] == pytest.approx(24.0)  # k·Cin·Cout / (Cin + Cout) at equal widths
    for r in row["ranks"]:
        first, second = pair_keys(key, r["rank"], "spatial")
        assert (r["first_key"], r["second_key"]) == (first.text, second.text)
        assert first.kernel == (3, 1) and second.kernel == (1, 3)
    assert not bench.results_path("fake", 1, None).exists()
    with pytest.raises(SystemExit) as exc:
        bench.main(["--backend", "fake", "--shapes", "conv1x1_96to576_14", "--scheme", "spatial"])
    assert exc.value.code == 2 and "do not factorise in the spatial scheme" in capsys.readouterr().err
