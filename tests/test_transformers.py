"""Vision transformers: heads, MLP widths, the embedding and whole layers as groups, timed and pruned."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

import latprune
from latprune.graph.channels import ChannelGraph
from latprune.graph.transformer import Attention, SelfAttention
from tests.conftest import TINY_INPUT, tiny_vit


def _torchvision_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=48,
                             num_classes=10).eval()


def test_torchvision_vit_has_heads_mlp_embedding_and_layers_as_groups() -> None:
    model = _torchvision_vit()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    graph = ChannelGraph.build(model, (1, 3, 32, 32))
    assert not any(isinstance(m, nn.MultiheadAttention) for m in graph.model.modules())
    with torch.no_grad():  # rewritten into latprune's attention: the same function
        assert torch.allclose(graph.model(x), expected, atol=1e-5)
    heads = [g for g in graph.groups if g.heads]
    assert [(g.root, g.size) for g in heads] == [(f"encoder.layers.encoder_layer_{i}.self_attention", 4)
                                               for i in range(2)]
    embedding = next(g for g in graph.groups if g.root == "conv_proj")
    assert {"class_token", "encoder.pos_embedding", "conv_proj"} <= set(embedding.producers)
    assert len(embedding.norms) == 5  # two per layer and the encoder's last
    assert sorted(g.size for g in graph.groups if not g.heads and g is not embedding) == [48, 48]
    assert [b.name for b in graph.blocks] == [f"encoder.layers.encoder_layer_{i}" for i in range(2)]
    assert all(len(b.branch_ends) == 2 for b in graph.blocks)
    attention = [u for u in graph.units if u.base.op == "attention"]
    assert [(u.base.cin, u.base.cout, u.base.head_dim, u.base.in_hw) for u in attention] == [(32, 4, 8, (17,))] * 2


def test_slimmed_vit_runs_with_its_attributes_updated_and_equals_the_masked_one() -> None:
    graph = ChannelGraph.build(_torchvision_vit(), (1, 3, 32, 32))
    keep = {g.id: list(range(0, g.size, 2)) for g in graph.groups}
    keep[graph.blocks[1].group] = []  # the second layer removed
    slim, masked = graph.slim(keep), graph.mask(keep)
    assert slim.hidden_dim == slim.conv_proj.out_channels == 16
    first = slim.encoder.layers.encoder_layer_0
    assert first.self_attention.num_heads == first.num_heads == 2
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(slim(x), masked(x), atol=1e-5)


def test_attention_keeps_and_zeroes_whole_heads() -> None:
    torch.manual_seed(0)
    att = SelfAttention.from_mha(nn.MultiheadAttention(12, 3, batch_first=True)).eval()
    zeroed = SelfAttention.from_mha(nn.MultiheadAttention(12, 3, batch_first=True)).eval()
    zeroed.load_state_dict(att.state_dict())
    zeroed.zero_heads([1])
    att.keep_heads([0, 2])
    x = torch.randn(2, 5, 12)
    with torch.no_grad():
        assert torch.allclose(att(x, x, x)[0], zeroed(x, x, x)[0], atol=1e-6)
    assert (att.num_heads, att.qkv.out_features, att.proj.in_features) == (2, 24, 8)
    assert att.head_magnitude().shape == (2,)
    with pytest.raises(NotImplementedError, match="self-attention"):
        att(x, torch.randn(2, 5, 12), x)


def test_a_vit_is_timed_per_attention_on_ort_cpu(tmp_path: Path) -> None:
    """A real backend measures the attention units (qkv, attention, projection) over head counts."""
    lut = latprune.profile(tiny_vit(), TINY_INPUT, backend="ort-cpu", threads=1, path=tmp_path / "vit.lut",
                           levels=2, passes=1, calibration_samples=4, progress=False)
    from latprune.latency_lut.store import Lut

    with Lut.open(lut.path) as store:
        attention = {(k.cin, k.cout): v.median_ms for k, v in store.items() if k.op == "attention"}
    assert {heads for _, heads in attention} == {1, 2} and all(ms > 0 for ms in attention.values())
    assert lut.report.calibration["residual_pct"] < 50


def test_a_vit_prunes_to_budget_and_exports_with_parity(tmp_path: Path) -> None:
    model = tiny_vit()
    lut = latprune.profile(model, TINY_INPUT, backend="fake", threads=1, path=tmp_path / "fake.lut", levels=4,
                           progress=False)
    result = latprune.prune(model, lut, "0.5x", example_input=TINY_INPUT,
                            method=latprune.HalpConfig(importance="l1"), progress=False)
    m = result.metrics
    assert m["budget_met"] and m["measured_ms"] <= m["budget_ms"]
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in model.parameters())
    heads = {g.root: len(g.keep) for g in result.plan.groups if g.root.endswith(".attention")}
    remaining = [mod.num_heads for mod in result.model.modules() if isinstance(mod, Attention)]
    assert sorted(remaining) == sorted(n for root, n in heads.items()
                                       if not any(root.startswith(b + ".") for b in result.plan.removed_blocks))
    run = result.save(tmp_path / "run")
    bundle = latprune.export(result, "onnx", tmp_path / "bundle", exporter="torchscript")
    x = torch.randn(*TINY_INPUT)
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(bundle.run(x.numpy())[0]), result.model(x), atol=1e-4)
    same = latprune.load(run, tiny_vit())
    with torch.no_grad():
        assert torch.equal(same.model(x), result.model(x))


def test_timm_vit_builds_at_the_input_size_and_prunes_its_heads() -> None:
    pytest.importorskip("timm")
    from latprune.models import registered_model

    spec = registered_model("timm:vit_tiny_patch16_224", (1, 3, 32, 32))
    assert spec is not None and spec.input_shape == (1, 3, 32, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = spec.model(x)
    graph = ChannelGraph.build(spec.model, spec.input_shape)
    with torch.no_grad():
        assert torch.allclose(graph.model(x), expected, atol=1e-5)
    assert [g.size for g in graph.groups if g.heads] == [3] * 12 and len(graph.blocks) == 12
    keep = {g.id: list(range(0, g.size, 2)) for g in graph.groups}
    keep[graph.blocks[-1].group] = []
    slim, masked = graph.slim(keep), graph.mask(keep)
    with torch.no_grad():
        assert torch.allclose(slim(x), masked(x), atol=1e-5)


def _torchvision_swin() -> nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    model = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
                            num_classes=10).eval()
    with torch.no_grad():  # position biases that matter
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_()
    return model


SWIN_HEADS = [("features.1.0", 2), ("features.1.1", 2), ("features.3.0", 4), ("features.3.1", 4)]


def _graph_computing_what_it_did(model: nn.Module) -> ChannelGraph:
    """The graph of ``model`` (a 32×32 Swin), its rewritten model checked to compute what ``model`` did."""
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    graph = ChannelGraph.build(model, (1, 3, 32, 32))
    with torch.no_grad():
        assert torch.allclose(graph.model(x), expected, atol=1e-5)
    return graph


def test_swin_window_attention_and_patch_merging_are_rewritten_with_their_function() -> None:
    graph = _graph_computing_what_it_did(_torchvision_swin())
    assert [(g.root.rsplit(".", 1)[0], g.size) for g in graph.groups if g.heads] == SWIN_HEADS
    stage2 = next(g for g in graph.groups if g.root == "features.2")  # the merge's reduction writes stage 2
    assert stage2.size == 32 and "features.2.reduction" in stage2.producers
    stage1 = next(g for g in graph.groups if g.root == "features.0.0")
    assert "features.2.norm" in stage1.norms  # over four copies of stage 1's channels
    assert len(graph.blocks) == 4 and all(len(b.branch_ends) == 2 for b in graph.blocks)
    merge = next(u for u in graph.units if u.name == "features.2.reduction")
    assert (merge.in_copies, merge.key({stage1.id: 8}).cin) == (4, 32)


def _slim_equal_to_masked(graph: ChannelGraph, block: int | None = 1) -> nn.Module:
    """A 32×32 model's graph slimmed to every other channel and head, its block ``block`` removed
    (None: no block), checked to compute what the masked model computes, and what its hard gates compute."""
    from latprune.pruner.gates import Gates

    keep = {g.id: list(range(1, g.size, 2)) for g in graph.groups}
    if block is not None:
        keep[graph.blocks[block].group] = []
    slim, masked = graph.slim(keep), graph.mask(keep)
    gates = Gates(graph, init=5.0)
    with torch.no_grad():
        for g, kept in keep.items():
            gates.logits[g][[i for i in range(graph.groups[g].size) if i not in kept]] = -5.0
        if block is not None:
            gates.block_logits[block] = -5.0
    gates.mode = "hard"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = slim(x)
        assert torch.allclose(expected, masked(x), atol=1e-5)
        gates.attach()
        try:
            gates.refresh()
            assert torch.allclose(expected, graph.model(x), atol=1e-5)
        finally:
            gates.detach()
    return slim


def test_slimmed_swin_equals_the_masked_one() -> None:
    slim = _slim_equal_to_masked(ChannelGraph.build(_torchvision_swin(), (1, 3, 32, 32)))
    assert [m.relative_position_bias_table.shape[1] for m in slim.modules() if hasattr(m, "relative_position_index")
            ] == [1, 2, 2]


def test_an_attention_latprune_cannot_rewrite_keeps_its_width_and_is_reported() -> None:
    """Cross-attention with keys and values of their own width: left as it is, every group it
    shares channels with kept whole, and said so."""

    class CrossAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query, self.memory = nn.Linear(8, 16), nn.Linear(8, 8)
            self.att = nn.MultiheadAttention(16, 2, batch_first=True, kdim=8, vdim=8)
            self.out = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            memory = self.memory(x)
            return self.out(self.att(self.query(x), memory, memory, need_weights=False)[0]).mean(1)

    graph = ChannelGraph.build(CrossAttention().eval(), (1, 5, 8))
    assert isinstance(graph.model.att, nn.MultiheadAttention) and graph.groups == []
    assert graph.kept_full["att"].startswith("an attention latprune does not rewrite yet")
    assert graph.kept_full["query"] == graph.kept_full["memory"] == "shares channels with att"


def _torchvision_swin_v2() -> nn.Module:
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

    torch.manual_seed(0)
    model = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
                            num_classes=10, block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2)
    with torch.no_grad():  # post-norm branches that are not zero by accident
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model.eval()


def _torchvision_maxvit() -> nn.Module:
    from torchvision.models.maxvit import MaxVit

    torch.manual_seed(0)  # one stage of two layers: the second keeps its input's width, its MBConv is a block
    return MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16], block_layers=[2],
                  head_dim=8, stochastic_depth_prob=0.0, num_classes=10).eval()


def test_swin_v2_cosine_attention_and_patch_merging_are_rewritten_with_their_function() -> None:
    """Swin V2: cosine attention with per-head logit scales, a position-bias MLP with one output
    per head, keys without a bias, and a patch merging that normalises after its reduction."""
    from latprune.graph.transformer import PatchMerge, WindowAttentionV2

    model = _torchvision_swin_v2()
    with torch.no_grad():  # per-head scales and key biases that matter (the keys' is ignored)
        for m in model.modules():
            if type(m).__name__ == "ShiftedWindowAttentionV2":
                m.logit_scale.uniform_(1.0, 3.0)
                m.qkv.bias.normal_()
    graph = _graph_computing_what_it_did(model)
    assert sum(isinstance(m, WindowAttentionV2) for m in graph.model.modules()) == 4
    assert [m.norm_after for m in graph.model.modules() if isinstance(m, PatchMerge)] == [True]
    assert [(g.root.rsplit(".", 1)[0], g.size) for g in graph.groups if g.heads] == SWIN_HEADS
    stage2 = next(g for g in graph.groups if g.root == "features.2")  # the merge's reduction and norm write it
    assert "features.2.reduction" in stage2.producers and "features.2.norm" in stage2.norms
    assert graph.kept_full == {}


def test_slimmed_swin_v2_equals_the_masked_one_and_keeps_each_heads_parameters() -> None:
    graph = ChannelGraph.build(_torchvision_swin_v2(), (1, 3, 32, 32))
    with torch.no_grad():
        for m in graph.model.modules():
            if hasattr(m, "logit_scale"):
                m.logit_scale.uniform_(1.0, 3.0)
    slim = _slim_equal_to_masked(graph)
    kept = [m for m in slim.modules() if hasattr(m, "logit_scale")]
    assert [(m.num_heads, m.logit_scale.shape[0], m.cpb_mlp[2].out_features) for m in kept] == [
        (1, 1, 1), (2, 2, 2), (2, 2, 2)]


def _pruned_and_exported(build: Callable[[], nn.Module], tmp_path: Path, budget: str = "0.5x") -> tuple[Any, Any]:
    """``build()``'s 32×32 model profiled on the fake backend and pruned to ``budget`` within it; its
    ONNX bundle computes what the pruned model computes. The LUT and the result."""
    shape = (1, 3, 32, 32)
    lut = latprune.profile(build(), shape, backend="fake", threads=1, path=tmp_path / "fake.lut", levels=2,
                           calibration_samples=2, progress=False)
    result = latprune.prune(build(), lut, budget, example_input=shape, method=latprune.HalpConfig(importance="l1"),
                            progress=False)
    assert result.metrics["budget_met"]
    bundle = latprune.export(result, "onnx", tmp_path / "bundle", exporter="torchscript")
    x = torch.randn(*shape)
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(bundle.run(x.numpy())[0]), result.model(x), atol=1e-4)
    return lut, result


def test_swin_v2_prunes_to_budget_and_exports_with_parity_its_heads_cut_too(tmp_path: Path) -> None:
    from latprune.runtime.onnx import checked_onnx

    shape = (1, 3, 32, 32)
    graph = ChannelGraph.build(_torchvision_swin_v2(), shape)
    heads = {g.id: [0] for g in graph.groups if g.heads}  # one head left in every layer
    report, _ = checked_onnx(graph.slim(heads), shape)  # raises unless ONNX Runtime agrees within 1e-4
    assert report.max_abs_diff <= 1e-4
    lut, _ = _pruned_and_exported(_torchvision_swin_v2, tmp_path)
    assert lut.report.kept_full == {}


MAXVIT_HEADS = [(f"blocks.0.layers.{i}.layers.{kind}_attention.attn_layer.1", 2) for i in (0, 1)
                for kind in ("window", "grid")]


def _maxvit_with_position_bias() -> nn.Module:
    """The tiny MaxViT, its relative position biases large enough to matter."""
    model = _torchvision_maxvit()
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ == "RelativePositionalMultiHeadAttention":
                m.relative_position_bias_table.normal_()
    return model


def test_maxvit_attention_is_rewritten_with_its_function_and_prunes_by_heads() -> None:
    """MaxViT's attention over block and grid partitions, scaled by the embedding's width,
    with a relative position bias per head."""
    from latprune.graph.transformer import GridAttention

    graph = _graph_computing_what_it_did(_maxvit_with_position_bias())
    assert sum(isinstance(m, GridAttention) for m in graph.model.modules()) == 4
    assert [(g.root, g.size) for g in graph.groups if g.heads] == MAXVIT_HEADS
    assert graph.kept_full == {}
    stream = [g for g in graph.groups if any(p.endswith(".attn_layer.1.proj") for p in g.producers)]
    assert [len(g.producers) for g in stream] == [len(g.producers) for g in stream[:1]] and stream[0].size == 16


def test_slimmed_maxvit_equals_the_masked_one_and_keeps_each_heads_bias() -> None:
    graph = ChannelGraph.build(_maxvit_with_position_bias(), (1, 3, 32, 32))
    graph.verify()
    slim = _slim_equal_to_masked(graph)
    assert [(m.num_heads, m.relative_position_bias_table.shape[1], m.scale) for m in slim.modules()
            if hasattr(m, "relative_position_index")] == [(1, 1, 16 ** -0.5)] * 3  # one attention went with its block


def test_maxvit_prunes_to_budget_and_exports_with_parity(tmp_path: Path) -> None:
    lut, result = _pruned_and_exported(_torchvision_maxvit, tmp_path)
    assert lut.report.kept_full == {}
    assert any(g.width < g.size for g in result.plan.groups)


def _timm_swin() -> nn.Module:
    timm = pytest.importorskip("timm")

    torch.manual_seed(0)
    model = timm.models.swin_transformer.SwinTransformer(img_size=32, patch_size=4, embed_dim=16, depths=(2, 2),
                                                         num_heads=(2, 4), window_size=4, num_classes=10).eval()
    with torch.no_grad():  # position biases large enough to matter
        for m in model.modules():
            if hasattr(m, "relative_position_bias_table"):
                m.relative_position_bias_table.normal_()
    return model


def test_timm_swin_is_rewritten_with_its_function_prunes_by_heads_and_exports() -> None:
    """timm's Swin: its window attention takes windows already cut and the shift's mask as an
    argument; its patch merging concatenates the same four copies as torchvision's."""
    from latprune.graph.transformer import PartitionedWindowAttention, PatchMerge
    from latprune.runtime.onnx import checked_onnx

    graph = _graph_computing_what_it_did(_timm_swin())
    assert sum(isinstance(m, PartitionedWindowAttention) for m in graph.model.modules()) == 4
    assert sum(isinstance(m, PatchMerge) for m in graph.model.modules()) == 1
    assert [g.size for g in graph.groups if g.heads] == [2, 2, 4, 4] and graph.kept_full == {}
    slim = _slim_equal_to_masked(graph, block=None)
    assert [m.num_heads for m in slim.modules() if isinstance(m, PartitionedWindowAttention)] == [1, 1, 2, 2]
    report, _ = checked_onnx(slim, (1, 3, 32, 32))  # raises unless ONNX Runtime agrees within 1e-4
    assert report.max_abs_diff <= 1e-4


def _timm_vit_with_qk_norm() -> nn.Module:
    timm = pytest.importorskip("timm")

    torch.manual_seed(0)
    return timm.models.VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=4, num_heads=2, qk_norm=True,
                                         num_classes=10).eval()


def _timm_beit() -> nn.Module:
    timm = pytest.importorskip("timm")

    torch.manual_seed(0)
    return timm.models.beit.Beit(img_size=32, patch_size=8, embed_dim=16, depth=4, num_heads=2, num_classes=10,
                                 use_rel_pos_bias=True).eval()


# models whose attention latprune does not rewrite: the model, its attention's type, its removable
# blocks and its group count (each layer's MLP width). timm's ViT with q/k norms; BEiT, whose
# attention holds q and v biases and a relative position bias of its own.
KEPT_WHOLE = {
    "timm-qk-norm": (_timm_vit_with_qk_norm, "Attention", [f"blocks.{i}" for i in range(4)], 4),
    "timm-beit": (_timm_beit, "Attention", [f"blocks.{i}" for i in range(4)], 4),
}


@pytest.mark.parametrize("name", sorted(KEPT_WHOLE))
def test_an_attention_latprune_does_not_rewrite_is_a_whole_leaf_and_the_rest_prunes(name: str) -> None:
    """Attentions latprune does not rewrite are hidden from Torch-Pruning and keep their width,
    with the residual stream through them; MLP widths and the blocks prune, and gates agree."""
    build, attention, blocks, groups = KEPT_WHOLE[name]
    graph = ChannelGraph.build(build(), (1, 3, 32, 32))
    graph.verify()
    attentions = [n for n, m in graph.model.named_modules() if type(m).__name__ == attention]
    assert attentions and all(graph.kept_full[n].startswith("an attention latprune does not rewrite yet")
                              for n in attentions)
    assert [b.name for b in graph.blocks] == blocks and len(graph.groups) == groups
    assert not any(g.heads for g in graph.groups)
    mlps = {g.root.split(".mlp")[0] for g in graph.groups if ".mlp" in g.root}
    assert mlps == set(blocks)  # every MLP's hidden width prunes
    slim = _slim_equal_to_masked(graph, block=-1)  # a block whose ends write no group
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in graph.model.parameters())


@pytest.mark.parametrize("name", sorted(KEPT_WHOLE))
def test_a_model_with_attentions_kept_whole_prunes_and_exports_with_parity(name: str, tmp_path: Path) -> None:
    build, attention, _, _ = KEPT_WHOLE[name]
    lut, result = _pruned_and_exported(build, tmp_path, "0.6x")
    assert all(lut.report.kept_full[n].startswith("an attention") for n, m in build().named_modules()
               if type(m).__name__ == attention)
    assert result.plan.removed_blocks or any(g.width < g.size for g in result.plan.groups)
