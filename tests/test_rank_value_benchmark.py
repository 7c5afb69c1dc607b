"""benchmarks/rank_value.py: every (layer, rank below full) is measured against each value's
prediction, the staged forward is the model's, the weights come back, and the table renders."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import TINY_INPUT, load_benchmark, tiny_loader, tiny_resnet


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("rank_value")


@pytest.fixture(scope="module")
def run(bench):
    batches = list(tiny_loader(64))
    model = tiny_resnet()
    before = copy.deepcopy(model.state_dict())
    result = bench.rank_value(model, TINY_INPUT, batches[:2], batches[2:])
    return result, model, before, batches


def test_every_rank_below_full_is_a_point_with_every_prediction(bench, run):
    from latprune.graph.channels import ChannelGraph
    from latprune.graph.lowrank import rank_options

    result, _, _, _ = run
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    options = rank_options(graph.units, graph.model, align=1)
    assert result["layers"] == len(options) > 0
    assert len(result["points"]) == sum(len(o) - 1 for o in options.values())
    for p in result["points"]:
        assert p["rank"] < p["max_rank"]
        assert set(p["predicted"]) == set(bench.VALUES)
        assert all(v >= 0 for v in p["predicted"].values())  # a rank drops importance, never adds it
    # the classifier writes no channel group: its outputs are the model's, worth every channel
    assert all(p["predicted"]["energy"] > 0 for p in result["points"] if p["out_group"] is None)
    for value in bench.VALUES:
        a = result["agreement"][value]
        assert -1 <= a["spearman_all"] <= 1 and 0 <= a["cross_layer_concordance"] <= 1


def test_the_staged_forward_is_the_models_and_the_weights_come_back(run):
    result, model, before, batches = run
    assert result["staged"]  # a CIFAR ResNet runs from each block's cached input
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        loss = sum(float(F.cross_entropy(model(x), y, reduction="sum")) for x, y in batches[:2]) / 32
    assert result["base_loss"] == pytest.approx(loss, rel=1e-5)


def test_one_layer_measured_is_its_truncated_model_measured(bench, run):
    from latprune.graph.lowrank import project_

    result, model, _, batches = run
    point = next(p for p in result["points"] if p["layer"] == "blocks.1.conv1")
    truncated = copy.deepcopy(model)
    project_(truncated.get_submodule(point["layer"]), point["rank"])
    with torch.no_grad():
        loss = sum(float(F.cross_entropy(truncated(x), y, reduction="sum")) for x, y in batches[:2]) / 32
    assert point["measured"] == pytest.approx(loss - result["base_loss"], abs=1e-5)


def test_concordance_counts_ties_in_the_prediction_half(bench):
    import numpy as np

    pairs = np.array([[0, 1], [0, 2], [1, 2]])
    assert bench._concordance(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0]), pairs) == 1.0
    assert bench._concordance(np.array([3.0, 2.0, 1.0]), np.array([1.0, 2.0, 3.0]), pairs) == 0.0
    assert bench._concordance(np.array([1.0, 1.0, 1.0]), np.array([1.0, 2.0, 3.0]), pairs) == 0.5


def test_table_has_a_line_per_model_and_value(bench, run):
    result, _, _, _ = run
    results = {"command": "python benchmarks/rank_value.py", "device": {"cpu": "test CPU"}, "date": "2000-01-01",
               "eval_batches": 2, "taylor_batches": 2, "batch_size": 16, "models": {"tiny": result}}
    lines = bench.table(results).splitlines()
    rows = [ln for ln in lines if ln.startswith("| tiny |")]
    assert [r.split(" | ")[1] for r in rows] == list(bench.VALUES)
