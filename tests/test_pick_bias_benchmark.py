"""benchmarks/pick_bias.py: the knapsack's picks and their random twins, measured beside the full model."""

from __future__ import annotations

from tests.conftest import load_benchmark


def test_picks_meet_their_targets_and_each_has_a_random_twin(tmp_path):
    bias = load_benchmark("pick_bias")
    fractions = [0.8, 0.9]
    res = bias.run_model("squeezenet1_1", 32, [0.05, *fractions], levels=2, samples=4, backend_name="fake",
                         lut_dir=tmp_path)  # 0.05x is out of reach: no pick
    picks = [r for r in res["rows"] if r["kind"] == "pick"]
    twins = [r for r in res["rows"] if r["kind"] == "random"]
    assert len(picks) == len(twins) == len(fractions)
    assert all(p["of_base"] <= f + 1e-9 for p, f in zip(picks, fractions))  # the knapsack holds its target
    assert all(r["measured_ms"] > 0 and r["ratio"] > 0 for r in res["rows"])
    assert set(res["summary"]) == {"pick_median_ratio", "random_median_ratio"}
    assert (tmp_path / "squeezenet1_1-32-fake-1t-l2.lut").is_file()
    assert "| squeezenet1_1 | 32×32 |" in bias.table({"squeezenet1_1": res})
