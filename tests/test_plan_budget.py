"""Plans replay on fresh base models; budgets parse or say why not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latprune.budget import parse_budget
from latprune.errors import RunDirError, SpecError
from latprune.graph.channels import ChannelGraph
from latprune.pruner.plan import GroupPlan, PruningPlan
from tests.conftest import TINY_INPUT, randomise_bn_, tiny_resnet


def test_plan_replays_on_a_fresh_base_model(tmp_path: Path) -> None:
    base = randomise_bn_(tiny_resnet())
    graph = ChannelGraph.build(base, TINY_INPUT)
    keep = {g.id: list(range(0, g.size, 2)) for g in graph.groups}
    slim = graph.slim(keep)
    plan = PruningPlan(model="tiny", input_shape=TINY_INPUT,
                       groups=tuple(GroupPlan(graph.groups[g].root, graph.groups[g].size, tuple(k))
                                    for g, k in keep.items()),
                       grid_extra={graph.groups[0].root: [3, 5]})  # widths a refined LUT added
    plan.save(tmp_path / "plan.json")
    loaded = PruningPlan.load(tmp_path / "plan.json")
    assert loaded == plan and loaded.grid_extra == {graph.groups[0].root: [3, 5]}
    fresh = tiny_resnet()  # other weights, same architecture
    replayed = loaded.apply_(fresh)
    replayed.load_state_dict(slim.state_dict())
    x = torch.randn(3, *TINY_INPUT[1:])
    with torch.no_grad():
        assert torch.equal(replayed(x), slim(x))


def test_plan_for_another_model_is_refused() -> None:
    plan = PruningPlan(model="tiny", input_shape=TINY_INPUT, groups=(GroupPlan("nope.0", 8, (0, 1)),))
    with pytest.raises(SpecError, match="no module 'nope.0'"):
        plan.apply_(tiny_resnet())
    plan = PruningPlan(model="tiny", input_shape=TINY_INPUT, groups=(GroupPlan("stem.0", 99, (0, 1)),))
    with pytest.raises(SpecError, match="expects 99"):
        plan.apply_(tiny_resnet())


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"),
    ('{"version": 7}', "plan version 7"),
    ('{"version": 1, "model": "x", "input_shape": [1], "groups": [], "colour": 1}', "unknown keys"),
    ('{"version": 1, "model": "x", "input_shape": [1], "groups": [{"root": "a"}]}', "malformed"),
])
def test_bad_plans_say_what_is_wrong(text: str, match: str) -> None:
    with pytest.raises(RunDirError, match=match):
        PruningPlan.from_json(text)


@pytest.mark.parametrize("text, base, expected", [("0.5x", 4.0, 2.0), ("8ms", 4.0, 8.0), ("1x", 3.0, 3.0),
                                                  ("0.25 X", 8.0, 2.0), (" 2.5ms", 1.0, 2.5)])
def test_budgets_resolve(text: str, base: float, expected: float) -> None:
    assert parse_budget(text).resolve(base) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["half", "0.5", "-1ms", "0x", "1.5x", "8 s", ""])
def test_malformed_budgets_are_refused(text: str) -> None:
    with pytest.raises(SpecError, match="budget"):
        parse_budget(text)
