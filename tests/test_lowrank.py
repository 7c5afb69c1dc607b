"""Low-rank factorisation: the pair computes what its factors reconstruct, the LUT keys it as the
units it becomes, and a prune with ``lowrank`` factorises where the LUT prices the pair lower."""

from __future__ import annotations

import copy
from pathlib import Path

import onnx as onnx_lib
import pytest
import torch
from torch import nn

import latprune
from latprune.cli import main
from latprune.errors import BudgetError, LutError, SpecError
from latprune.graph.channels import ChannelGraph
from latprune.graph.lowrank import (
    Factorised,
    factorise,
    factorise_,
    max_rank,
    pair_keys,
    pays,
    project_,
    rank_grid,
    ranks_of,
    singular_values,
)
from latprune.latency_lut.plots import rank_curves
from latprune.latency_lut.store import Lut
from latprune.models import ResNetCifar
from latprune.pruner.trp import TrpRegulariser, energy_rank
from latprune.runtime.onnx import checked_onnx
from tests.conftest import TINY_INPUT, tiny_loader, tiny_resnet


@pytest.mark.parametrize("layer, scheme", [
    (nn.Conv2d(6, 10, 3, stride=2, padding=1, bias=True), "channel"), (nn.Linear(12, 9), "channel"),
    (nn.Conv2d(6, 10, 3, stride=2, padding=1, bias=True), "spatial"),
    (nn.Conv2d(6, 10, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2)), "spatial"),
])
def test_the_pair_computes_its_reconstruction_and_is_exact_at_full_rank(layer: nn.Module, scheme: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 6, 9, 11) if isinstance(layer, nn.Conv2d) else torch.randn(2, 5, 12)
    s = singular_values(layer, scheme)
    for rank in (1, 3, max_rank(layer, scheme)):
        pair = factorise(layer, rank, scheme=scheme)
        assert pair.scheme == scheme
        rebuilt = copy.deepcopy(layer)
        with torch.no_grad():
            rebuilt.weight.copy_(pair.weight_product())
            torch.testing.assert_close(pair(x), rebuilt(x), rtol=1e-5, atol=1e-5)
        # the truncated SVD: the Frobenius error is the energy of the singular values dropped
        error = (pair.weight_product() - layer.weight).detach().norm()
        assert float(error) == pytest.approx(float(s[rank:].norm()), rel=1e-4, abs=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(factorise(layer, max_rank(layer, scheme), scheme=scheme)(x), layer(x),
                                   rtol=1e-4, atol=1e-5)


def test_projection_keeps_the_shape_and_lowers_the_rank() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3)
    project_(conv, 4)
    assert conv.weight.shape == (16, 8, 3, 3)
    assert int((singular_values(conv) > 1e-4 * singular_values(conv)[0]).sum()) == 4


@pytest.mark.parametrize("layer, rank, match", [
    (nn.Conv2d(4, 8, 3), 0, "outside 1..8"),
    (nn.Conv2d(4, 8, 1), 5, "outside 1..4"),
    (nn.Linear(6, 3), 4, "outside 1..3"),
    (nn.Conv2d(4, 8, 3, groups=2), 2, "only Linear layers and Conv2d layers with one group"),
    (nn.BatchNorm2d(4), 1, "only Linear layers and Conv2d layers with one group"),
])
def test_bad_ranks_are_refused(layer: nn.Module, rank: int, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        factorise(layer, rank, "layer")


@pytest.mark.parametrize("layer, rank, match", [
    (nn.Conv2d(4, 8, 3), 13, r"outside 1..12 \(min of its outputs × kernel width and inputs × kernel height"),
    (nn.Conv2d(4, 8, 1), 1, "no k×k kernel to split"),
    (nn.Linear(6, 3), 1, "no k×k kernel to split"),
])
def test_bad_spatial_ranks_are_refused(layer: nn.Module, rank: int, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        factorise(layer, rank, "layer", scheme="spatial")


def test_the_configs_offer_the_schemes_lowrank_has() -> None:
    from latprune.graph.lowrank import SCHEMES
    from latprune.pruner.configs import LOWRANK_SCHEMES

    assert LOWRANK_SCHEMES == SCHEMES


def test_a_missing_layer_is_refused() -> None:
    with pytest.raises(SpecError, match="no layer 'nope'"):
        factorise_(nn.Sequential(nn.Linear(2, 2)), {"nope": 1})


def _unit_keys(model: nn.Module, shape: tuple[int, ...]) -> list[str]:
    return [u.base.text for u in ChannelGraph.build(model, shape).units]


def test_the_lut_keys_the_pair_as_the_units_the_factorised_model_has() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 40), nn.ReLU(), nn.Linear(40, 10)).eval()
    shape = (1, 3, 16, 16)
    conv_key, fc_key, _ = (u.base for u in ChannelGraph.build(copy.deepcopy(model), shape).units)
    assert rank_grid(conv_key) and rank_grid(fc_key)
    factorised = factorise_(copy.deepcopy(model), {"0": 4, "5": 6})
    assert ranks_of(factorised) == {"0": 4, "5": 6}
    expected = [k.text for k in (*pair_keys(conv_key, 4), *pair_keys(fc_key, 6))]
    assert _unit_keys(factorised, shape)[:4] == expected


def test_the_lut_keys_the_spatial_pair_as_the_units_the_factorised_model_has() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()).eval()
    shape = (1, 3, 16, 20)
    _, key = (u.base for u in ChannelGraph.build(copy.deepcopy(model), shape).units)
    assert rank_grid(key, scheme="spatial") and max(rank_grid(key, scheme="spatial")) > max(rank_grid(key))
    factorised = factorise_(copy.deepcopy(model), {"3": 24}, scheme="spatial")
    assert ranks_of(factorised) == {"3": 24}
    assert _unit_keys(factorised, shape)[1:] == [k.text for k in pair_keys(key, 24, "spatial")]


def test_a_factorised_model_exports_with_parity() -> None:
    model = factorise_(tiny_resnet(), {"stem.0": 3, "blocks.2.conv1": 5, "fc": 4})
    report, onnx = checked_onnx(model, TINY_INPUT)  # raises beyond the parity tolerance
    convs = [n for n in onnx_lib.load_from_string(onnx).graph.node if n.op_type == "Conv"]
    assert report.max_abs_diff <= 1e-4 and len(convs) == 15 + 2  # the tiny ResNet's 15, and two second halves
    spatial = factorise_(tiny_resnet(), {"stem.0": 3, "blocks.2.conv1": 5}, scheme="spatial")
    report, _ = checked_onnx(spatial, TINY_INPUT)
    assert report.max_abs_diff <= 1e-4


def resnet() -> nn.Module:
    """A ResNet whose convolutions outweigh their launches on the fake backend, so that a rank can pay."""
    torch.manual_seed(0)
    return ResNetCifar(widths=(32, 32, 32), blocks_per_stage=1, in_channels=1, num_classes=10).eval()


@pytest.fixture(scope="module")
def lowrank_lut(tmp_path_factory: pytest.TempPathFactory) -> latprune.LUT:
    path = tmp_path_factory.mktemp("lut") / "fake.lut"
    return latprune.profile(resnet(), torch.randn(*TINY_INPUT), backend="fake", threads=1, path=path, levels=4,
                            lowrank=True, progress=False)


def low_rank_resnet() -> nn.Module:
    """:func:`resnet` with every 3×3 convolution of its blocks at rank 2, as rank training leaves them."""
    model = resnet()
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and name.startswith("blocks"):
            project_(m, 2)
    return model


def test_a_lowrank_prune_factorises_where_the_lut_says_and_replays(lowrank_lut: latprune.LUT,
                                                                    tmp_path: Path) -> None:
    result = latprune.prune(low_rank_resnet(), lowrank_lut, "0.7x", example_input=torch.randn(*TINY_INPUT),
                            method=latprune.HalpConfig(importance="l1", lowrank=True), progress=False)
    ranks = ranks_of(result.model)
    # rank 2 loses nothing, and the fake backend prices by MACs: the pairs pay
    assert ranks and result.plan.ranks == ranks and all(r >= 2 for r in ranks.values())
    assert result.metrics["budget_met"]
    same = latprune.load(result.save(tmp_path / "run"), low_rank_resnet())
    assert ranks_of(same.model) == ranks
    x = torch.randn(2, *TINY_INPUT[1:])
    with torch.no_grad():
        assert torch.equal(same.model(x), result.model(x))


def test_every_knapsack_method_records_the_ranks_it_factorised(lowrank_lut: latprune.LUT) -> None:
    result = latprune.prune(low_rank_resnet(), lowrank_lut, "0.7x", example_input=torch.randn(*TINY_INPUT),
                            method=latprune.TaylorConfig(importance="l1", lowrank=True), progress=False)
    assert result.plan.ranks and result.plan.ranks == ranks_of(result.model)


def test_a_lowrank_prune_with_taylor_scores_runs(lowrank_lut: latprune.LUT) -> None:
    result = latprune.prune(resnet(), lowrank_lut, "0.6x", example_input=torch.randn(*TINY_INPUT),
                            method=latprune.HalpConfig(importance="taylor", lowrank=True, steps=1),
                            train_loader=tiny_loader(), progress=False)
    assert result.metrics["budget_met"] and any(isinstance(m, Factorised) for m in result.model.modules()) \
        == bool(result.plan.ranks)


def test_lowrank_needs_a_lut_profiled_with_it(tiny_lut: latprune.LUT) -> None:
    with pytest.raises(LutError, match="profile it with lowrank"):
        latprune.prune(tiny_resnet(), tiny_lut, "0.5x", example_input=torch.randn(*TINY_INPUT),
                       method=latprune.HalpConfig(importance="l1", lowrank=True), progress=False)


def test_rank_training_concentrates_the_spectrum_and_resumes() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3)
    regulariser = TrpRegulariser({"conv": conv}, nuclear_weight=1e-3, period=2, energy=0.5)
    before = regulariser.mean_rank_share()
    term, fields = regulariser.loss()
    assert float(term) == pytest.approx(1e-3 * float(singular_values(conv).sum()), rel=1e-5) and "‖W‖*" in fields
    for _ in range(3):
        regulariser.before_forward()  # the third call projects (every 2 steps)
    assert regulariser.projections == 1 and energy_rank(conv, 1.0) < 16 and regulariser.mean_rank_share() < 1
    assert before > 0
    again = TrpRegulariser({"conv": conv}, 1e-3, 2, 0.5)
    again.load_state_dict(regulariser.state_dict())
    assert (again.steps, again.projections) == (3, 1)


def test_trp_trains_towards_low_rank_and_factorises(lowrank_lut: latprune.LUT) -> None:
    result = latprune.prune(resnet(), lowrank_lut, "0.8x", example_input=torch.randn(*TINY_INPUT),
                            method=latprune.TrpConfig(trp_epochs=1.0, trp_period=2, trp_energy=0.5,
                                                      nuclear_weight=1e-2, importance="l1"),
                            train_loader=tiny_loader(), progress=False)
    assert result.metrics["budget_met"] and result.plan.method == "trp" and result.plan.ranks
    assert all(g.width == g.size for g in result.plan.groups)  # trp leaves the widths alone
    assert ranks_of(result.model) == result.plan.ranks


def test_trp_in_the_spatial_scheme_factorises_and_replays(lowrank_lut: latprune.LUT, tmp_path: Path) -> None:
    result = latprune.prune(resnet(), lowrank_lut, "0.8x", example_input=torch.randn(*TINY_INPUT),
                            method=latprune.TrpConfig(trp_epochs=0.5, trp_period=2, trp_energy=0.5,
                                                      nuclear_weight=1e-2, importance="l1", lowrank_scheme="spatial"),
                            train_loader=tiny_loader(), progress=False)
    pairs = [m for m in result.model.modules() if isinstance(m, Factorised)]
    assert result.metrics["budget_met"] and pairs and all(p.scheme == "spatial" for p in pairs)
    assert result.plan.rank_scheme == "spatial" and result.plan.ranks == ranks_of(result.model)
    same = latprune.load(result.save(tmp_path / "run"), resnet())
    x = torch.randn(2, *TINY_INPUT[1:])
    with torch.no_grad():
        assert torch.equal(same.model(x), result.model(x))


def test_trp_with_widths_reaches_below_what_ranks_alone_reach(lowrank_lut: latprune.LUT) -> None:
    with pytest.raises(BudgetError, match="smallest reachable latency"):
        latprune.prune(resnet(), lowrank_lut, "0.35x", example_input=TINY_INPUT, progress=False,
                       method=latprune.TrpConfig(trp_epochs=0, importance="l1"))
    result = latprune.prune(resnet(), lowrank_lut, "0.35x", example_input=TINY_INPUT, progress=False,
                            method=latprune.TrpConfig(trp_epochs=0, importance="l1", trp_widths=True))
    assert result.metrics["budget_met"] and any(g.width < g.size for g in result.plan.groups)


def test_trp_refuses_a_model_with_nothing_to_factorise(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(784, 1)).eval()
    lut = latprune.profile(model, TINY_INPUT, backend="fake", threads=1, path=tmp_path / "l.lut", levels=2,
                           lowrank=True, progress=False)
    with pytest.raises(SpecError, match="no layer that a low rank makes cheaper"):
        latprune.prune(model, lut, "0.8x", example_input=TINY_INPUT, method=latprune.TrpConfig(),
                       train_loader=tiny_loader(), progress=False)


def test_lut_show_plots_rank_beside_width(lowrank_lut: latprune.LUT, tmp_path: Path) -> None:
    with Lut.open(lowrank_lut.path) as lut:
        curves = rank_curves(lut)
    conv = next(c for c in curves if c["key"].op == "conv" and c["key"].kernel == (3, 3) and c["key"].cin == 32)
    key = conv["key"]
    assert [r for r, _ in conv["ranks"]] == [r for r in rank_grid(key, lowrank_lut.report.align) if pays(key, r)]
    assert all(ms < conv["ms"] for _, ms in conv["ranks"][:1])  # the lowest rank costs less than the unit (by MACs)
    assert max(w for w, _ in conv["widths"]) == key.cout
    shown = tmp_path / "lut.png"
    assert main(["lut", "show", str(lowrank_lut.path), "--plot", str(shown)]) in (0, None)
    assert (tmp_path / "lut-ranks.png").stat().st_size > 1000
