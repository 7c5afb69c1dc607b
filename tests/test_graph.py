"""Groups, units and surgery: slim ≡ masked, residual highways pruned together."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch import nn

from latprune.graph.channels import ChannelGraph, Grid
from latprune.graph.units import LayerKey
from latprune.pruner.gates import Gates
from tests.conftest import TINY_INPUT, randomise_bn_, tiny_resnet


def _random_keep(graph: ChannelGraph, seed: int) -> dict[int, list[int]]:
    rng = random.Random(seed)
    return {g.id: sorted(rng.sample(range(g.size), rng.randint(1, g.size))) for g in graph.groups}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slim_equals_masked(tiny_model: nn.Module, seed: int) -> None:
    graph = ChannelGraph.build(tiny_model, TINY_INPUT)
    keep = _random_keep(graph, seed)
    slim, masked = graph.slim(keep), graph.mask(keep)
    x = torch.randn(4, *TINY_INPUT[1:])
    with torch.no_grad():
        assert torch.allclose(slim(x), masked(x), atol=1e-5)
    # and the slim model really is smaller
    n_slim = sum(p.numel() for p in slim.parameters())
    n_base = sum(p.numel() for p in tiny_model.parameters())
    assert n_slim <= n_base


def test_residual_highway_is_one_group() -> None:
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    stem_group = next(g for g in graph.groups if g.root == "stem.0")
    # the stem BN and every block's last BN in stage 1 write into the same highway
    assert set(stem_group.producers) >= {"stem.1", "blocks.0.bn2", "blocks.1.bn2"}
    # each block's inner width is its own group
    inner = [g for g in graph.groups if g.root.endswith("conv1")]
    assert len(inner) == 6 and all(len(g.producers) == 1 for g in inner)


def test_residual_channels_removed_together() -> None:
    model = randomise_bn_(tiny_resnet())
    graph = ChannelGraph.build(model, TINY_INPUT)
    stem_group = next(g for g in graph.groups if g.root == "stem.0")
    keep = {stem_group.id: [0, 2, 5, 7]}
    slim = graph.slim(keep)
    # every layer on the highway lost the same channels: producers keep rows [0,2,5,7], consumers columns
    for name in ("stem.0", "blocks.0.conv2", "blocks.1.conv2"):
        assert torch.equal(slim.get_submodule(name).weight, model.get_submodule(name).weight[keep[stem_group.id]])
    for name in ("blocks.0.conv1", "blocks.1.conv1", "blocks.2.conv1", "blocks.2.shortcut.0"):
        assert torch.equal(slim.get_submodule(name).weight, model.get_submodule(name).weight[:, keep[stem_group.id]])


def test_units_fuse_bn_add_and_activation() -> None:
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    units = {u.name: u for u in graph.units}
    assert units["stem.0"].base.bn and units["stem.0"].base.act == "relu" and units["stem.0"].in_group is None
    assert units["blocks.0.conv2"].base.add and units["blocks.0.conv2"].base.act == "relu"
    assert not units["blocks.2.shortcut.0"].base.add  # the add goes with the main branch
    assert units["fc"].out_group is None  # classes are fixed
    assert units["blocks.0.conv1"].in_group == units["stem.0"].out_group


@pytest.mark.parametrize("key", [
    LayerKey("conv", 8, 16, (3, 3), (2, 2), (1, 1), (1, 1), 1, (28, 28), 1, False, True, True, "relu"),
    LayerKey("conv", 24, 24, (3, 3), (1, 1), (1, 1), (1, 1), 24, (7, 7), 4, False, True, False, "relu6"),
    LayerKey("linear", 128, 10, in_hw=(), bias=True),
    LayerKey("linear", 64, 32, in_hw=(197,), act="gelu"),
])
def test_layer_key_round_trips(key: LayerKey) -> None:
    assert LayerKey.parse(key.text) == key


def test_depthwise_unit_follows_its_group() -> None:
    from tests.conftest import tiny_mobilenet

    graph = ChannelGraph.build(tiny_mobilenet(), TINY_INPUT)
    dw = next(u for u in graph.units if u.depthwise)
    key = dw.key({dw.out_group: 5})
    assert key.cin == key.cout == key.groups == 5


@pytest.mark.parametrize("size, grid, expected", [
    (32, Grid(8), [4, 8, 12, 16, 20, 24, 28, 32]),
    (3, Grid(8), [1, 2, 3]),
    (10, Grid(1), [10]),
    (32, Grid(8, align=8), [8, 16, 24, 32]),
    (144, Grid(8, align=8), [16, 32, 56, 72, 88, 112, 128, 144]),
    (100, Grid(4, align=16), [32, 48, 80, 96, 100]),
    (12, Grid(4, align=8), [8, 12]),          # aligned below the full size
    (8, Grid(4, align=8), [2, 4, 6, 8]),      # no wider than the block: fine steps
])
def test_width_grid(size: int, grid: Grid, expected: list[int]) -> None:
    widths = grid.widths(size)
    assert widths == expected
    assert widths[-1] == size and all(0 < w <= size for w in widths)


@pytest.mark.parametrize("width, size, align, expected", [
    (20.0, 20, 8, 20),    # the full size, aligned or not
    (19.9, 20, 8, 16),    # below it: rounded down to a multiple of the block
    (13.0, 16, 8, 8),     # a 16-channel group is aligned too (Grid.widths(16) is [8, 16])
    (2.0, 144, 8, 8),     # at least one block
    (5.7, 6, 8, 5),       # no wider than one block: any width
    (5.7, 40, 1, 5),
])
def test_baselines_snap_to_the_grid_alignment(width: float, size: int, align: int, expected: int) -> None:
    from latprune.pruner.methods import _snap

    assert _snap(width, size, align) == expected


def test_grouped_convolutions_prune_in_patterns_their_grouping_takes_and_profile(tmp_path: Path) -> None:
    """A grouped (not depthwise) convolution, as in RegNet and ResNeXt: the group feeding it keeps
    the same offsets in each of its blocks, the group it writes as many channels of each block,
    widths in multiples of its groups; every key is a valid convolution on ONNX Runtime."""
    import numpy as np

    import latprune

    torch.manual_seed(0)
    model = randomise_bn_(nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 24, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
        nn.Conv2d(24, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval())
    graph = ChannelGraph.build(model, TINY_INPUT)
    feeds, writes, after = graph.groups
    assert graph.kept_full == {}
    assert (feeds.root, feeds.blocks, feeds.same_offsets) == ("0", 4, True)
    assert (writes.root, writes.blocks, writes.same_offsets) == ("3", 4, False) and after.blocks == 1
    scores = np.arange(24, dtype=float)[::-1].copy()
    assert feeds.top(scores[:16], 8) == [0, 1, 4, 5, 8, 9, 12, 13]  # the best offsets over all blocks, in each
    assert writes.top(scores, 8) == [0, 1, 6, 7, 12, 13, 18, 19]    # each block's best two
    assert all(w % 4 == 0 for g in (feeds, writes) for w in graph.options(Grid(4, 1))[g.id])
    keep = {feeds.id: feeds.top(scores[:16], 8), writes.id: writes.top(scores[::-1].copy(), 12),
            after.id: list(range(0, 16, 2))}
    x = torch.randn(2, *TINY_INPUT[1:])
    slim = graph.slim(keep)
    with torch.no_grad():
        assert torch.allclose(slim(x), graph.mask(keep)(x), atol=1e-5)
    assert (slim[3].in_channels, slim[3].out_channels, slim[3].groups) == (8, 12, 4)
    for unit in graph.units:
        for width in graph.options(Grid(4, 1)).get(unit.in_group, [None]):
            key = unit.key({unit.in_group: width} if width else {})
            assert key.cin % key.groups == 0 and key.cout % key.groups == 0, (unit.name, key)
    lut = latprune.profile(model, TINY_INPUT, backend="ort-cpu", threads=1, path=tmp_path / "g.lut", levels=2,
                           passes=1, calibration_samples=4, progress=False)
    assert lut.report.kept_full == {}


def test_a_resnext_prunes_its_grouped_convolutions_and_exports_with_parity(tmp_path: Path) -> None:
    from torchvision.models.resnet import Bottleneck, ResNet

    import latprune

    def build() -> nn.Module:
        torch.manual_seed(0)
        return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10, groups=4, width_per_group=8).eval()

    shape = (1, 3, 64, 64)
    lut = latprune.profile(build(), shape, backend="fake", threads=1, path=tmp_path / "f.lut", levels=4,
                           calibration_samples=2, progress=False)
    result = latprune.prune(build(), lut, "0.6x", example_input=shape, method=latprune.HalpConfig(importance="l1"),
                            progress=False)
    grouped = [m for m in result.model.modules() if isinstance(m, nn.Conv2d) and m.groups == 4]
    assert result.metrics["budget_met"] and any(m.in_channels < 32 * 2 ** i for i, m in enumerate(grouped))
    bundle = latprune.export(result, "onnx", tmp_path / "bundle", exporter="torchscript")
    x = torch.randn(*shape)
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(bundle.run(x.numpy())[0]), result.model(x), atol=1e-4)


def test_shufflenet_prunes_inside_its_units_and_keeps_the_shuffled_channels() -> None:
    """ShuffleNetV2's channel shuffle defeats Torch-Pruning's tracer (Torch-Pruning #45); latprune
    rewrites its units so that the shuffle is one step, keeps the channels through it whole and
    prunes each unit's inner width."""
    from torchvision.models import shufflenet_v2_x0_5

    torch.manual_seed(0)
    graph = ChannelGraph.build(randomise_bn_(shufflenet_v2_x0_5(weights=None).eval()), (1, 3, 64, 64))
    assert graph.kept_full["stage2.0.branch2.5"] == "passes through the channel shuffle stage2.0.shuffle"
    assert len(graph.groups) == 18  # the stem and each unit's inner width
    keep = {g.id: list(range(0, g.size, 2)) for g in graph.groups}
    slim, masked = graph.slim(keep), graph.mask(keep)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(slim(x), masked(x), atol=1e-5)


def test_a_shufflenet_units_branch_goes_whole_and_its_half_of_the_channels_passes() -> None:
    """Each stride-1 ShuffleNetV2 unit's ``branch2`` is a removable block: removed, its half of
    the channels passes to the concatenation and the shuffle unchanged (the unit still
    shuffles), its three convolutions leave the latency model, and the concatenation before
    it, named after its first layer, stays."""
    from torchvision.models import shufflenet_v2_x0_5

    torch.manual_seed(0)
    graph = ChannelGraph.build(randomise_bn_(shufflenet_v2_x0_5(weights=None).eval()), (1, 3, 64, 64))
    assert [b.name for b in graph.blocks][:3] == ["stage2.1.branch2", "stage2.2.branch2", "stage2.3.branch2"]
    assert len(graph.blocks) == 13 and all(b.passes and not b.branch_ends for b in graph.blocks)
    first = graph.blocks[0]
    assert first.units == ("stage2.1.branch2.0", "stage2.1.branch2.3", "stage2.1.branch2.5")
    assert "stage2.1.branch2.0:cat" in {u.name for u in graph.units}
    keep = {g.id: list(range(0, g.size, 2)) for g in graph.groups}
    keep.update({b.group: [] for b in graph.blocks[::3]})
    slim, masked = graph.slim(keep), graph.mask(keep)
    unit = slim.get_submodule("stage2.1")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(slim(x), masked(x), atol=1e-5)
        h = torch.randn(2, unit.shuffle.channels or 48, 8, 8)
        assert torch.equal(unit(h), unit.shuffle(h))  # its branch gone, the unit only shuffles



class _ReadsASlice(nn.Module):
    """A conv that reads half its input's channels: a slice (``x[:, :8]``) or a chunk (CSP, GhostNet)."""

    def __init__(self, chunk: bool) -> None:
        super().__init__()
        self.chunk = chunk
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = x.chunk(2, dim=1)[0] if self.chunk else x[:, :8]
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("chunk", [False, True])
def test_a_layer_that_reads_a_slice_keeps_its_input_whole_and_prunes_its_output(chunk: bool) -> None:
    """Which channels a slice or chunk reads is not traced: the groups feeding the layer keep
    their width and say why; the layer's own output still prunes."""
    model = randomise_bn_(_ReadsASlice(chunk).eval())
    graph = ChannelGraph.build(model, (1, 3, 16, 16))
    assert graph.kept_full["c2"] == ("its input stays whole: it reads 8 of the 16 channels feeding it "
                                     "(a slice or chunk that latprune does not follow)")
    assert graph.kept_full["c1"] == "shares channels with c2"
    assert [g.root for g in graph.groups] == ["c2"]
    keep = {graph.groups[0].id: [0, 3, 5, 9, 12]}
    slim, masked = graph.slim(keep), graph.mask(keep)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(slim(x), masked(x), atol=1e-5)
    assert slim.c2.out_channels == 5 and slim.c1.out_channels == 16

def test_a_model_the_tracer_cannot_follow_is_refused_as_such_and_a_wrong_input_as_such(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A structure that defeats Torch-Pruning's tracer: the error says latprune cannot prune the
    structure yet, not that the input is wrong; a wrong input says that."""
    import torch_pruning as tp

    from latprune.errors import SpecError

    def fail(*args: object, **kwargs: object) -> None:
        raise IndexError("list index out of range")

    with monkeypatch.context() as patch:
        patch.setattr(tp.DependencyGraph, "build_dependency", fail)
        with pytest.raises(SpecError, match="cannot prune this model's structure yet: Torch-Pruning's dependency "
                                            "tracer failed on it \\(IndexError in test_graph.py"):
            ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    with pytest.raises(SpecError, match=r"does not run on an input of shape \(1, 3, 28, 28\).*check that the "
                                        "example input"):
        ChannelGraph.build(tiny_resnet(), (1, 3, 28, 28))


def _hard_gates(graph: ChannelGraph, keep: dict[int, list[int]]) -> Gates:
    """Gates in hard mode open on ``keep`` (and on every block whose group keeps a channel), attached."""
    gates = Gates(graph, init=5.0)
    with torch.no_grad():
        for g in graph.groups:
            gates.logits[g.id].fill_(-5.0)
            gates.logits[g.id][keep[g.id]] = 5.0
        for i, b in enumerate(gates.blocks):
            gates.block_logits[i] = 5.0 if keep[b.group] else -5.0
    gates.mode = "hard"
    gates.attach()
    gates.refresh()
    return gates


def test_convnext_layer_norms_layer_scale_and_blocks_slim_as_gated() -> None:
    """ConvNeXt: LayerNorm2d over (N, C, H, W), LayerNorms after a permute, a per-channel layer
    scale parameter, and blocks whose branch is scaled and permuted before the add."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    torch.manual_seed(0)
    model = ConvNeXt([CNBlockConfig(16, 32, 2), CNBlockConfig(32, None, 1)], num_classes=10).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_scale"):
                p.uniform_(0.5, 1.5)
    graph = ChannelGraph.build(model, (1, 3, 32, 32))
    assert [b.name for b in graph.blocks] == ["features.1.0", "features.1.1", "features.3.0"]
    stem = next(g for g in graph.groups if g.root == "features.0.0")
    assert "features.0.1" in stem.norms and "features.1.0.layer_scale" in stem.producers
    keep = {g.id: list(range(1, g.size, 2)) for g in graph.groups}
    keep[graph.blocks[0].group] = []
    slim, masked = graph.slim(keep), graph.mask(keep)
    gates = _hard_gates(graph, keep)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(slim(x), masked(x), atol=1e-5)
        assert torch.allclose(slim(x), graph.model(x), atol=1e-5)
    gates.detach()


def test_a_structure_the_tracer_misreads_silently_is_refused_before_profiling(tmp_path: Path) -> None:
    """A channel shuffle written with view and transpose: Torch-Pruning traces it without an error
    but as if the channels kept their order, so its slimmed model would compute something else."""
    import latprune
    from latprune.errors import SpecError

    class HandShuffled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(16, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.cat([self.a(x), self.b(x)], 1)
            b, c, h, w = y.shape
            y = y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
            return self.c(y).mean((2, 3))

    torch.manual_seed(0)
    with pytest.raises(SpecError, match="slimmed, it computes something else than with the same channels zeroed"):
        latprune.profile(HandShuffled(), (1, 8, 6, 6), backend="fake", path=tmp_path / "s.lut", progress=False)
    assert not (tmp_path / "s.lut").exists()


class _FixedWidth(nn.Module):
    """A forward that reshapes by a width it stored when built: its last convolution's
    channels cannot be slimmed; its stem's can."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv, self.head, self.width = nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 4), 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(torch.relu(self.bn(self.stem(x))))
        return self.head(x.reshape(x.shape[0], self.width, -1).mean(-1))


def test_a_group_the_models_code_contradicts_keeps_its_width_and_the_rest_prunes(tmp_path: Path) -> None:
    """Slimmed as its groups say, the model no longer runs: the group that breaks it is found,
    kept at full width and reported, and the other groups prune (profile warns, in one line)."""
    import latprune
    from latprune.errors import LatpruneWarning
    from latprune.graph.check import CONTRADICTED, checked_graph

    torch.manual_seed(0)
    graph = checked_graph(randomise_bn_(_FixedWidth()).eval(), (1, 3, 8, 8))
    assert [g.root for g in graph.groups] == ["stem"]
    assert graph.kept_full["conv"].startswith(f"{CONTRADICTED}: slimming it as its channel groups say failed "
                                              "(RuntimeError: mat1")
    keep = {graph.groups[0].id: [1, 4, 9]}
    slim, masked, x = graph.slim(keep), graph.mask(keep), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(slim(x), masked(x), atol=1e-5)
    with pytest.warns(LatpruneWarning, match=r"1 layers keep their full width, never pruned \(1 layers whose "
                                             r"group breaks the model when slimmed\)"):
        lut = latprune.profile(_FixedWidth().eval(), (1, 3, 8, 8), backend="fake", path=tmp_path / "f.lut",
                               progress=False)
    assert set(lut.report.kept_full) == {"conv"}  # the head reads its channels and prunes its own


def test_a_model_none_of_whose_groups_can_be_slimmed_is_refused_in_one_line() -> None:
    from latprune.errors import SpecError
    from latprune.graph.check import checked_graph

    class AllFixed(_FixedWidth):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.bn(self.stem(x)))
            x = self.conv(x.reshape(x.shape[0], self.width, *x.shape[2:]))
            return self.head(x.reshape(x.shape[0], self.width, -1).mean(-1))

    with pytest.raises(SpecError, match=r"cannot prune this model's structure yet: slimming it as its channel groups "
                                        r"say failed \(RuntimeError: shape"):
        checked_graph(AllFixed().eval(), (1, 3, 8, 8))


def test_a_model_that_caches_tensors_computed_from_its_parameters_copies_after_a_trace() -> None:
    """timm's LeViT keeps its attention biases, indexed from a parameter, in a dict when it runs in
    eval mode; traced with autograd they hold history, which ``copy.deepcopy`` refuses."""
    from latprune.graph.check import checked_graph

    class Cached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn, self.head = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 4)
            self.bias = nn.Parameter(torch.randn(8))
            self.cache: dict[str, torch.Tensor] = {}

        def train(self, mode: bool = True) -> nn.Module:  # as timm's LeViT: a change of mode empties the cache
            self.cache = {}
            return super().train(mode)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.training and "b" not in self.cache:
                self.cache["b"] = self.bias * 2
            b = self.bias * 2 if self.training else self.cache["b"]
            return self.head(self.bn(self.conv(x)).mean((2, 3))) + b[:4]

    graph = checked_graph(Cached().eval(), (1, 3, 8, 8))
    assert len(graph.groups) == 1 and not graph.kept_full
    keep = {graph.groups[0].id: [0, 3, 5]}
    slim, masked, x = graph.slim(keep), graph.mask(keep), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(slim(x), masked(x), atol=1e-5)


def test_a_class_redefined_with_another_forward_is_checked_again() -> None:
    """The check is remembered per class object: a notebook's redefined class of the same name
    and layers, whose forward now reads a stored width, is checked on its own."""
    from latprune.graph.check import checked_graph

    def define(fixed: bool) -> type[nn.Module]:
        class Net(_FixedWidth):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                if fixed:
                    return super().forward(x)
                x = self.conv(torch.relu(self.bn(self.stem(x))))
                return self.head(x.mean((2, 3)))
        return Net

    assert [g.root for g in checked_graph(define(False)().eval(), (1, 3, 8, 8)).groups] == ["stem", "conv"]
    assert [g.root for g in checked_graph(define(True)().eval(), (1, 3, 8, 8)).groups] == ["stem"]


def test_timm_poolformer_prunes_its_mlps_with_its_layer_scales_kept_whole() -> None:
    """PoolFormer's layer scales view their weights to a shape stored when built, so each stage's
    residual stream keeps its width; every MLP's hidden width prunes, and slims as it masks."""
    pytest.importorskip("timm")
    from latprune.graph.check import CONTRADICTED, checked_graph
    from latprune.models import registered_model

    spec = registered_model("timm:poolformer_s12", (1, 3, 32, 32))
    assert spec is not None
    graph = checked_graph(spec.model, spec.input_shape)
    assert len(graph.groups) == 12 and all(g.root.endswith("mlp.fc1") for g in graph.groups)
    assert sum(why.startswith(CONTRADICTED) for why in graph.kept_full.values()) > 0
    keep = {g.id: list(range(1, g.size, 3)) for g in graph.groups}
    slim, masked, x = graph.slim(keep), graph.mask(keep), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(slim(x), masked(x), atol=1e-4)


def test_slices_concatenated_back_with_a_partial_residual_are_refused_at_once() -> None:
    """ReXNet adds each block's input to the first channels of its output and concatenates the rest
    back (``cat([x[:, :k] + shortcut, x[:, k:]])``). Torch-Pruning's grouping runs for many minutes
    on a stack of them; latprune refuses it in one line instead. A space-to-depth (slices of the
    height and width concatenated along the channels) is not such a structure."""
    import time

    from latprune.errors import SpecError

    class PartialResidual(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.cin, self.conv, self.bn = cin, nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.bn(self.conv(x))
            return torch.cat([y[:, :self.cin] + x, y[:, self.cin:]], dim=1)

    class SpaceToDepth(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], dim=1)

    rexnet_like = nn.Sequential(nn.Conv2d(3, 8, 3), *(PartialResidual(8 + 4 * i, 12 + 4 * i) for i in range(12)),
                                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(56, 4))
    t0 = time.time()
    with pytest.raises(SpecError, match=r"slices of 1\.bn are concatenated back together .* as in ReXNet"):
        ChannelGraph.build(rexnet_like, (1, 3, 8, 8))
    assert time.time() - t0 < 30
    focus = nn.Sequential(SpaceToDepth(), nn.Conv2d(12, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    assert len(ChannelGraph.build(focus, (1, 3, 16, 16)).groups) == 2


def test_timm_mobilenetv3_fuses_each_residual_add_into_its_last_convolution() -> None:
    """timm's BatchNormAct2d runs the batch norm itself, so Torch-Pruning sees an elementwise op,
    not a convolution, behind some norms feeding a residual add."""
    pytest.importorskip("timm")
    from latprune.models import registered_model

    spec = registered_model("timm:mobilenetv3_large_100", (1, 3, 32, 32))
    graph = ChannelGraph.build(spec.model, spec.input_shape)
    graph.verify()
    adds = [u.name for u in graph.units if u.base.add]
    assert adds and all(name.endswith(("conv_pw", "conv_pwl")) for name in adds)  # each block's last conv


def test_densenet_concatenations_slim_as_masked_and_as_gated() -> None:
    """DenseNet: each layer reads the concatenation of every earlier layer's output, through a
    BatchNorm over that concatenation; the BN holds each feeding group's channels at an offset."""
    from torchvision.models import DenseNet

    torch.manual_seed(0)
    model = randomise_bn_(DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2,
                                   num_classes=10).eval())
    graph = ChannelGraph.build(model, (1, 3, 32, 32))
    second = next(g for g in graph.groups if g.root == "features.denseblock1.denselayer1.conv2")
    assert second.offset("features.denseblock1.denselayer2.norm1") == 16 and second.offset(second.root) == 0
    reader = next(u for u in graph.units if u.name == "features.transition1.conv")
    assert (reader.base.cin, len(reader.in_others)) == (32, 2)
    keep = {g.id: list(range(1, g.size, 2)) for g in graph.groups}
    slim, masked = graph.slim(keep), graph.mask(keep)
    gates = _hard_gates(graph, keep)
    x = torch.randn(2, 3, 32, 32)
    try:
        with torch.no_grad():
            assert torch.allclose(slim(x), masked(x), atol=1e-5)
            assert torch.allclose(slim(x), graph.model(x), atol=1e-5)
    finally:
        gates.detach()
    widths = {g: len(k) for g, k in keep.items()}
    slim_reader = next(u for u in ChannelGraph.build(slim, (1, 3, 32, 32)).units if u.name == reader.name)
    assert reader.key(widths) == slim_reader.base  # the key at the widths is the slimmed layer's own


def test_concatenations_are_units_keyed_by_the_widths_they_join() -> None:
    """Each concatenation copies every channel it joins: a unit whose input is the groups it
    joins, with DenseNet's BatchNorm and ReLU after it; at any widths its key is the slimmed
    model's own. SqueezeNet's Fire modules join two branches with nothing after them."""
    from torchvision.models import DenseNet, squeezenet1_1

    model = DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=10).eval()
    graph = ChannelGraph.build(model, (1, 3, 32, 32))
    cats = {u.name: u for u in graph.units if u.base.op == "concat"}
    assert len(cats) == 6  # each layer's input (4) and each block's output (2)
    second = cats["features.denseblock1.denselayer2.norm1:cat"]
    assert (second.base.cin, second.base.groups, second.base.bn, second.base.act) == (24, 2, True, "relu")
    assert second.base.in_hw == (8, 8) and len(second.in_others) == 1 and second.base.weights == 0
    keep = {g.id: list(range(0, g.size, 2)) for g in graph.groups}
    widths = {g: len(k) for g, k in keep.items()}
    slimmed = {u.name: u for u in ChannelGraph.build(graph.slim(keep), (1, 3, 32, 32)).units}
    assert {name: u.key(widths) for name, u in cats.items()} == {name: slimmed[name].base for name in cats}
    assert second.key(widths).cin == second.key(widths).cout == 12

    fire = ChannelGraph.build(squeezenet1_1(num_classes=10).eval(), (1, 3, 64, 64))
    joins = [u for u in fire.units if u.base.op == "concat"]
    assert len(joins) == 8 and all(u.base.groups == 2 and not u.base.bn for u in joins)
    assert all(u.in_group is not None and len(u.in_others) == 1 for u in joins)


def test_an_inception_output_read_behind_a_pooling_is_a_unit_at_its_own_size() -> None:
    """GoogLeNet joins four branches; where a max pooling is all that reads the join, the unit
    takes its size from the branches (before the pooling) and its groups from the layers after."""
    from torchvision.models import googlenet

    model = googlenet(num_classes=10, aux_logits=False, init_weights=False).eval()
    graph = ChannelGraph.build(model, (1, 3, 64, 64))
    cats = {u.name: u for u in graph.units if u.base.op == "concat"}
    assert len(cats) == 9 and all(u.base.groups == 4 for u in cats.values())
    pooled = cats["inception4a.branch3.0.conv:cat"]  # inception3b's output, read through maxpool3
    assert (pooled.base.cin, pooled.base.in_hw) == (480, (8, 8)) and len(pooled.in_others) == 3
    keep = {g.id: list(range(0, g.size, 2)) for g in graph.groups}
    widths = {g: len(k) for g, k in keep.items()}
    slimmed = {u.name: u for u in ChannelGraph.build(graph.slim(keep), (1, 3, 64, 64)).units}
    assert all(u.key(widths) == slimmed[name].base for name, u in cats.items())


def test_an_excitations_scaling_is_a_unit_as_wide_as_the_map_it_scales() -> None:
    """MobileNetV3's squeeze-and-excitations: each multiplies a feature map by a gate its
    convolutions compute at 1×1; the product (and the pooling) is a unit keyed by the
    expanded group, its key at any widths the slimmed model's own, and it goes with its block."""
    from torchvision.models import mobilenet_v3_small

    graph = ChannelGraph.build(mobilenet_v3_small(num_classes=10).eval(), (1, 3, 64, 64))
    scales = {u.name: u for u in graph.units if u.base.op == "scale"}
    assert len(scales) == 9  # one per block with an excitation
    se = scales["features.4.block.2:scale"]
    fc2 = next(u for u in graph.units if u.name == "features.4.block.2.fc2")
    assert (se.base.cin, se.base.in_hw, se.base.weights, se.base.macs) == (96, (4, 4), 0, 0)
    assert se.in_group == fc2.out_group and se.out_group is None and fc2.base.act == "hardsigmoid"
    keep = {g.id: list(range(0, g.size, 2)) for g in graph.groups}
    widths = {g: len(k) for g, k in keep.items()}
    slimmed = {u.name: u for u in ChannelGraph.build(graph.slim(keep), (1, 3, 64, 64)).units}
    assert {name: u.key(widths) for name, u in scales.items()} == {name: slimmed[name].base for name in scales}
    block = next(b for b in graph.blocks if b.name == "features.5")
    assert "features.5.block.2:scale" in block.units


class _SEBasicBlock(nn.Module):
    """A residual block whose excitation scales the branch before the add (SE-ResNet), its gate
    timm's hard sigmoid, ``relu6(x + 3) / 6``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.fc1, self.fc2 = nn.Conv2d(width, 8, 1), nn.Conv2d(8, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        gate = nn.functional.relu6(self.fc2(torch.relu(self.fc1(y.mean((2, 3), keepdim=True)))) + 3.0) / 6.0
        return torch.relu(x + y * gate)


def test_an_excitation_before_a_residual_add_is_keyed_by_the_highway_it_scales() -> None:
    """SE-ResNet scales the branch and adds it to the shortcut, so no layer reads the product
    directly: the unit takes its width from the layer that writes the map, the stage's highway."""
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          _SEBasicBlock(16), _SEBasicBlock(16), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 10)).eval()
    graph = ChannelGraph.build(model, (1, 3, 12, 12))
    scales = {u.name: u for u in graph.units if u.base.op == "scale"}
    assert set(scales) == {"3:scale", "4:scale"}
    highway = next(u for u in graph.units if u.name == "0").out_group
    assert all(u.in_group == highway and u.base.in_hw == (12, 12) for u in scales.values())
    keep = {g.id: list(range(0, g.size, 2)) for g in graph.groups}
    widths = {g: len(k) for g, k in keep.items()}
    slimmed = {u.name: u for u in ChannelGraph.build(graph.slim(keep), (1, 3, 12, 12)).units}
    assert {name: u.key(widths) for name, u in scales.items()} == {name: slimmed[name].base for name in scales}


def test_a_linear_after_a_flatten_is_keyed_with_every_position_of_its_channels() -> None:
    """A VGG/AlexNet classifier reads each channel of the last feature map once per position."""
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten(),
                          nn.Linear(16 * 9, 10))
    graph = ChannelGraph.build(model, (1, 3, 12, 12))
    linear = next(u for u in graph.units if u.name == "4")
    assert linear.in_copies == 9 and linear.key({linear.in_group: 8}).cin == 72
    slim = graph.slim({linear.in_group: list(range(8))})
    assert slim[4].in_features == 72


def test_a_slimmed_copy_and_a_graph_let_go_are_freed_at_once() -> None:
    """Torch-Pruning's dependency graph is a web of cycles through the model's modules: the graph
    breaks them once built, and slimming breaks those of the graph it traces, so that a large
    model's copies go as soon as they are dropped, not at the next garbage collection."""
    import gc
    import weakref

    gc.collect()
    gc.disable()
    try:
        graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
        slim = graph.slim({g.id: range(max(1, g.size // 2)) for g in graph.groups})
        copies = [weakref.ref(graph.model), weakref.ref(slim), weakref.ref(next(slim.parameters()))]
        del graph, slim
        assert [ref() for ref in copies] == [None, None, None]
    finally:
        gc.enable()


def test_a_slimmed_copy_shares_no_tensor_with_the_model_and_leaves_it_as_it_was() -> None:
    """The surgery shares the model's tensors until it is done; what it returns owns its own, so
    training it (in place) leaves the model alone. Tied weights stay tied."""
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    tied = nn.Parameter(torch.randn(4, 4))
    graph.model.tied_a, graph.model.tied_b = nn.Module(), nn.Module()
    graph.model.tied_a.register_parameter("w", tied)
    graph.model.tied_b.register_parameter("w", tied)
    before = {k: v.clone() for k, v in graph.model.state_dict().items()}
    slim = graph.slim({g.id: range(max(1, g.size // 2)) for g in graph.groups})
    base = {t.untyped_storage().data_ptr() for t in [*graph.model.parameters(), *graph.model.buffers()]}
    assert not base & {t.untyped_storage().data_ptr() for t in [*slim.parameters(), *slim.buffers()]}
    assert slim.tied_a.w is slim.tied_b.w and slim.tied_a.w is not tied
    with torch.no_grad():
        for t in slim.parameters():
            t.add_(1.0)
    after = graph.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_copy_to_time_shares_what_the_surgery_left_whole() -> None:
    """slim_to_widths is for timing: at full width it costs no copy of the weights, and a slimmed
    group's layers hold tensors of their own."""
    graph = ChannelGraph.build(tiny_resnet(), TINY_INPUT)
    full = graph.slim_to_widths(graph.full_widths())
    assert all(a is b for a, b in zip(full.parameters(), graph.model.parameters()))
    group = max(graph.groups, key=lambda g: g.size)
    narrow = graph.slim_to_widths({**graph.full_widths(), group.id: group.size // 2})
    root = narrow.get_submodule(group.root)
    assert root.weight is not graph.model.get_submodule(group.root).weight
    assert root.weight.shape[0] == group.size // 2


def test_a_subclass_of_layernorm2d_is_masked_over_its_channels() -> None:
    """timm's MetaFormer normalises with ``LayerNorm2dNoBias``, a ``LayerNorm2d`` over the channels of
    ``(N, C, H, W)``: masked, it computes the LayerNorm of the kept channels, the others zero."""
    pytest.importorskip("timm")
    from timm.models.metaformer import LayerNorm2dNoBias

    from latprune.graph.channels import KeptLayerNorm

    norm, keep, x = LayerNorm2dNoBias(6), [0, 2, 3], torch.randn(2, 6, 4, 5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        kept = KeptLayerNorm(norm, keep)(x)
        alone = LayerNorm2dNoBias(3)
        alone.weight.copy_(norm.weight[keep])
        assert torch.allclose(kept[:, keep], alone(x[:, keep]), atol=1e-5)
        assert not kept[:, [1, 4, 5]].any()
