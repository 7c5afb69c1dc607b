"""benchmarks/zoo.py: a model whose child dies or runs past its limit is a row, and every row renders."""

from __future__ import annotations

import argparse

import pytest

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def zoo():
    return load_benchmark("zoo")


def test_one_line_keeps_the_type_and_first_line(zoo):
    assert zoo.one_line(ValueError("bad width\nsecond line")) == "ValueError: bad width"
    assert zoo.one_line(MemoryError()) == "MemoryError"
    assert len(zoo.one_line(RuntimeError("x" * 1000), limit=50)) == 50


@pytest.mark.parametrize("kind", ["latprune", "tp"])
def test_a_child_past_its_time_limit_is_a_failed_row(zoo, tmp_path, kind):
    args = argparse.Namespace(levels=2, calibration_samples=3, memory_gib=8.0, recalibrate=False)
    row = zoo.run_child(kind, "resnet18", 64, args, timeout_s=1.0, log=tmp_path / "resnet18.log")
    if kind == "latprune":
        assert row["model"] == "resnet18" and row["failed"]["latprune_error"] is False
        assert "killed after the 1 s limit" in row["failed"]["error"]
    else:
        assert row["status"] == "error" and row["stage"] in ("start", "build", "trace")
        assert "killed after the 1 s limit" in row["error"]
    assert "=== " + kind in (tmp_path / "resnet18.log").read_text()


def test_table_has_a_line_per_row_failed_or_not(zoo):
    ok = {"input": [1, 3, 64, 64], "steps_s": {"build": 0.4, "profile": 36.0, "prune": 15.5, "export": 4.2},
          "failed": None, "base_ms": 1.0, "budget_ms": 0.6, "measured_ms": 0.58, "budget_met": True,
          "groups": 25, "groups_pruned": 5, "heads_groups": 0, "heads_groups_pruned": 0, "blocks_removed": [],
          "kept_full": {}, "export": {"parity_max_abs_diff": 3e-8, "latency_ms": 0.65, "budget_met": False},
          "tp": {"status": "ok"}}
    failed = {"input": [1, 3, 64, 64], "steps_s": {"build": 0.5, "profile": 2.0},
              "failed": {"step": "profile", "error": "SpecError: cannot prune a | b"},
              "tp": {"status": "error", "stage": "trace", "error": "ZeroDivisionError: integer division"}}
    beside = {**ok, "export": {**ok["export"], "beside_base": {"base_ms": 1.1, "bundle_ms": 0.62, "ratio": 0.564,
                                                               "budget_met": True}}}
    large = {**ok, "export": {**ok["export"], "parity_max_abs_diff": 302.0, "parity_max_abs_ref": 1.44e8}}
    uncounted = {**ok, "heads_groups": None, "heads_groups_pruned": None}
    lines = zoo.table({"squeezenet1_0": ok, "shufflenet_v2_x0_5": failed, "squeezenet1_1": beside,
                       "inception_v3": large, "maxvit_t": uncounted}).splitlines()
    assert len(lines) == 7 and "| 5 of 25 | not counted |" in lines[6]
    assert "| 3.0e-08 |" in lines[2] and "| 3.0e+02 (2e-06 of max \\|out\\|) |" in lines[5]
    assert "| 0.650 | met / missed | 5 of 25 |" in lines[2] and lines[2].endswith("| ok |")
    assert "profile: SpecError: cannot prune a \\| b" in lines[3] and "trace: ZeroDivisionError" in lines[3]
    assert "| met / missed (0.56x beside the base: met) |" in lines[4]  # alone over, beside the base under


def test_a_step_records_its_own_peak_memory(zoo, tmp_path):
    """Each step's peak resident memory is its own: a step after a large one starts over from
    what the process holds."""
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("peak resident memory is read from /proc")
    row = {"steps_s": {}, "failed": None, "warnings": []}
    held = []
    assert zoo.run_step(row, tmp_path / "row.json", "large", lambda: held.append(bytearray(512 << 20)))
    held.clear()
    assert zoo.run_step(row, tmp_path / "row.json", "small", lambda: None)
    assert row["peak_gib"]["large"] - row["peak_gib"]["small"] > 0.4, row["peak_gib"]


def test_heads_groups_are_those_rooted_at_an_attention_sized_by_its_heads(zoo):
    """torchvision's ViT counts heads as ``num_heads``, MaxViT's attention as ``n_heads``."""
    from types import SimpleNamespace

    import torchvision

    base = torchvision.models.maxvit_t()
    heads = base.blocks[0].layers[0].layers.window_attention.attn_layer[1].n_heads
    group = SimpleNamespace(root="blocks.0.layers.0.layers.window_attention.attn_layer.1", size=heads)
    width = SimpleNamespace(root="blocks.0.layers.0.layers.MBconv.layers.conv_a.0", size=64)
    assert zoo.heads_groups(SimpleNamespace(groups=[group, width]), base) == [group]


def test_a_classifier_initialised_to_zeros_gets_weights_so_parity_means_something(zoo):
    """torchvision's ViT starts with a zero classifier: its output, and its ONNX parity, would be zero
    whatever the exported layers compute."""
    import torch
    from torch import nn

    vit_like = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    nn.init.zeros_(vit_like[2].weight), nn.init.zeros_(vit_like[2].bias)
    assert zoo.nonzero_classifier_(vit_like) and vit_like(torch.ones(1, 4)).abs().sum() > 0
    before = vit_like[2].weight.clone()
    assert not zoo.nonzero_classifier_(vit_like) and torch.equal(vit_like[2].weight, before)


def test_a_bundle_is_run_by_the_cli_as_a_user_runs_it(zoo, tmp_path):
    import latprune
    from tests.conftest import TINY_INPUT, tiny_resnet

    model = tiny_resnet()
    lut = latprune.profile(model, TINY_INPUT, backend="fake", path=tmp_path / "f.lut", progress=False)
    result = latprune.prune(model, lut, "0.9x", example_input=TINY_INPUT,
                            method=latprune.HalpConfig(importance="l1"), progress=False)
    ran = zoo.cli_run(latprune.export(result, "onnx", tmp_path / "bundle", threads=1).path)
    assert ran["rc"] == 0 and ran["outputs"][0]["shape"] == [1, 10] and ran["latency_ms"]["repeats"] == 10
    (tmp_path / "empty").mkdir()
    failed = zoo.cli_run(tmp_path / "empty")
    assert failed["rc"] != 0 and failed["error"]
